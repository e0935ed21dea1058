// Package crash holds vfsd's crash-recovery tests (DESIGN.md §7.2) and the
// helpers they share: vfsd is started in its default supervisor mode on a
// temporary share, driven through tools/frontend and tools/fuseclient (a
// frontend that, like QEMU 7.2, never reconnects), and its worker is killed
// with SIGKILL, at random times from the outside or at the named points of
// engine/crashpoint from the inside.
//
// Helpers (vfsd.go):
//   - Start: vfsd in supervisor mode with extra flags and environment, a
//     connected frontend and an initialised client.
//   - Env.Status: the control socket's `status` JSON (SOCKET.ctl), with the
//     worker pid and the crash count found by name; Env.WorkerPID falls back
//     to the supervisor's /proc children.
//   - Env.KillWorker, Env.WaitNewWorker: one SIGKILL and the successor.
//   - FDCount: open fds of a process (/proc/PID/fd), for the leak checks.
//
// Tests (go test ./tools/crash; no Makefile needed, about 3 minutes on 2 cores):
//   - TestWorkloadNoKills: the control: the workload below without any kill
//     must match the model (a failure here is a model or daemon bug, not a
//     recovery bug).
//   - TestRandomKills: a mixed metadata/data/lock workload on several request
//     queues at depth >= 16, every client goroutine in its own subtree so a
//     sequential model predicts every reply exactly, while the worker is
//     SIGKILLed at random times (>= 200 kills). Logs the stall per kill.
//   - TestCrashPoints: the same workload once per named crash point, with
//     VFSD_CRASHPOINT=name:rand:P, a fresh daemon per point.
//   - TestFullQueue: 1024 requests in flight (queue size and depth 1024)
//     when the worker dies, every one completed exactly once.
//   - TestCrashBudget: a worker that dies at every start exhausts
//     --max-restarts; the supervisor exits non-zero with a clear message and
//     the frontend sees the disconnect.
//
// Environment:
//
//	VFSD_CRASH_KILLS=N       random kills in TestRandomKills (default 200)
//	VFSD_CRASH_ARGS="..."    extra vfsd arguments for every daemon started here
//	VFSD_CRASH_POINTS=a,b    only these crash points in TestCrashPoints
//	VFSD_CRASH_SEED=N        workload seed (default: the clock; logged)
//	VFSD_BIN=PATH            the vfsd binary (default: go build ./cmd/vfsd)
package crash
