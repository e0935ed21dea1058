package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"vfsd/tools/guest"
)

// The crash part of the demo: while the guest's fio step runs (it writes and
// then verifies crc32c checksums), the host SIGKILLs vfsd's worker twice. The
// supervisor keeps QEMU's vhost-user connection, starts a new worker and
// replays the requests in flight; fio must finish without an error.

// killStep is the guest step during which the worker is killed (tools/guest/init
// step_demo), and killAfter the delays after its start line.
const killStep = "=== STEP demo-fio"

var killAfter = []time.Duration{1500 * time.Millisecond, 4500 * time.Millisecond}

// ctlStatus is the part of vfsd's control-socket "status" answer the demo
// shows (cmd/vfsd/control.go, Status).
type ctlStatus struct {
	WorkerPID     int     `json:"worker_pid"`
	WorkerUptimeS float64 `json:"worker_uptime_s"`
	Restarts      int64   `json:"restarts"`
	Crashes       int64   `json:"crashes"`
	StoredFDs     int     `json:"stored_fds"`
	LastStallMS   float64 `json:"last_stall_ms"`
	Queues        *int    `json:"queues"`
	Requests      *struct {
		Total    uint64   `json:"total"`
		PerQueue []uint64 `json:"per_queue"`
	} `json:"requests"`
	raw string
}

type killer struct {
	control string
	out     *prefixed

	mu      sync.Mutex
	inStep  bool
	started bool
	kills   []int // killed worker pids
	errs    []string
	after   *ctlStatus    // status once the fio step ended
	done    chan struct{} // closed when the kills are over
	afterOK chan struct{} // closed when after (or an error) is recorded
}

// line sees every guest console line.
func (k *killer) line(l string) {
	if !strings.HasPrefix(l, "=== STEP ") {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case strings.HasPrefix(l, killStep) && !k.started:
		k.started, k.inStep = true, true
		k.done, k.afterOK = make(chan struct{}), make(chan struct{})
		go k.run()
	case k.inStep:
		// The next step started: fio is done. Wait for the kills to end,
		// then record the supervisor's status while it still runs.
		k.inStep = false
		done, afterOK := k.done, k.afterOK
		go func() {
			defer close(afterOK)
			<-done
			st, err := queryStatus(k.control)
			k.mu.Lock()
			defer k.mu.Unlock()
			if err != nil {
				k.errs = append(k.errs, "status after fio: "+err.Error())
				return
			}
			k.after = st
		}()
	}
}

func (k *killer) stillInStep() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.inStep
}

func (k *killer) run() {
	defer close(k.done)
	start := time.Now()
	for _, d := range killAfter {
		time.Sleep(time.Until(start.Add(d)))
		if !k.stillInStep() {
			k.fail("fio ended before the kill planned %v into it (the guest step is too short)", d)
			return
		}
		pid, err := k.worker()
		if err != nil {
			k.fail("%v", err)
			return
		}
		k.out.hostf(">>> killing the vfsd worker (pid %d) while the guest writes... (SIGKILL)", pid)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			k.fail("kill %d: %v", pid, err)
			return
		}
		k.mu.Lock()
		k.kills = append(k.kills, pid)
		k.mu.Unlock()
	}
}

// worker returns the current worker's pid from the control socket, waiting
// for a replacement worker after a kill; it checks that the pid is a
// "vfsd worker" process.
func (k *killer) worker() (int, error) {
	var last error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := queryStatus(k.control)
		switch {
		case err != nil:
			last = err
		case st.WorkerPID == 0:
			last = fmt.Errorf("no worker running")
		case k.killed(st.WorkerPID):
			last = fmt.Errorf("worker %d was already killed", st.WorkerPID)
		default:
			argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.WorkerPID))
			a := strings.Split(string(argv), "\x00")
			if err != nil || len(a) < 2 || a[1] != "worker" {
				return 0, fmt.Errorf("pid %d from the control socket is not a vfsd worker (argv %q, %v)", st.WorkerPID, a, err)
			}
			return st.WorkerPID, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("no vfsd worker to kill: %v", last)
}

func (k *killer) killed(pid int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.kills {
		if p == pid {
			return true
		}
	}
	return false
}

func (k *killer) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	k.out.hostf("!!! %s", msg)
	k.mu.Lock()
	k.errs = append(k.errs, msg)
	k.mu.Unlock()
}

// report prints what the kills did, after a passing run; it is an error when
// the kills did not happen or the supervisor did not record them.
func (k *killer) report(res *guest.Result) error {
	k.mu.Lock()
	done, afterOK, inStep := k.done, k.afterOK, k.inStep
	k.mu.Unlock()
	if done != nil {
		<-done
		if !inStep {
			<-afterOK
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	banner("the worker crashes")
	if len(k.errs) > 0 {
		return fmt.Errorf("worker kills: %s", strings.Join(k.errs, "; "))
	}
	if !k.started || len(k.kills) == 0 {
		return fmt.Errorf("the guest's %q step was not seen: no worker was killed", killStep)
	}
	killed, other, _ := guest.WorkerDeaths(res.DaemonLog)
	fmt.Printf("killed workers (SIGKILL during fio): %v; the supervisor logged %d killed worker(s), %d other death(s)\n",
		k.kills, len(killed), len(other))
	fmt.Printf("the guest's fio (randrw 40 MiB, crc32c, verify_fatal=1) passed with no error: the guest did not notice\n")
	st := k.after
	if st == nil {
		return fmt.Errorf("no supervisor status after the fio step")
	}
	fmt.Printf("\n$ vfsd status --socket-path %s   (after fio)\n%s\n", strings.TrimSuffix(k.control, ".ctl"), st.raw)
	fmt.Printf("worker pid %d (up %.1fs), restarts %d, crashes %d, last stall %.1f ms, stored fds %d",
		st.WorkerPID, st.WorkerUptimeS, st.Restarts, st.Crashes, st.LastStallMS, st.StoredFDs)
	if st.Queues != nil && st.Requests != nil {
		fmt.Printf(", queues %d, requests %d %v", *st.Queues, st.Requests.Total, st.Requests.PerQueue)
	}
	fmt.Println()
	if st.Restarts < int64(len(k.kills)) {
		return fmt.Errorf("the supervisor counts %d restarts after %d kills", st.Restarts, len(k.kills))
	}
	return nil
}

func queryStatus(path string) (*ctlStatus, error) {
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, "status"); err != nil {
		return nil, err
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		b.Write(buf[:n])
		if err != nil || strings.Contains(b.String(), "\n") {
			break
		}
	}
	line := strings.TrimSpace(b.String())
	var st ctlStatus
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		return nil, fmt.Errorf("control socket %s: %q: %v", path, line, err)
	}
	st.raw = line
	return &st, nil
}
