package crash

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"vfsd/tools/daemon"
	"vfsd/tools/e2e"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
)

// Options configure one supervised vfsd for a crash test.
type Options struct {
	RequestQueues int    // default 1
	Depth         int    // fuseclient depth per request queue (default 32)
	QueueSize     int    // virtqueue size (default 256)
	Indirect      bool   // every chain through an indirect table
	MemSize       uint64 // guest RAM (default 64 MiB)
	// MaxRestarts is passed as --max-restarts (0: a budget no test here
	// exhausts, see BigBudget).
	MaxRestarts int
	// Args are extra vfsd arguments (after the common ones and $VFSD_CRASH_ARGS).
	Args []string
	// Env is added to the daemon's environment (VFSD_CRASHPOINT, ...). It is
	// set with t.Setenv, so tests using it must not run in parallel.
	Env map[string]string
	// NoDial starts the daemon only (no frontend, no INIT).
	NoDial bool
	// NoInit dials but leaves FUSE_INIT to the test.
	NoInit bool
	// Timeout bounds the whole test's requests (default 2 minutes).
	Timeout time.Duration
}

// BigBudget is the --max-restarts of tests that kill the worker hundreds of
// times on purpose.
const BigBudget = 1000000

// BigBudgetWindow is the --restart-window that goes with BigBudget.
const BigBudgetWindow = 500 * time.Millisecond

// Env is one supervised vfsd on one temporary share.
type Env struct {
	T      testing.TB
	Dir    string // the shared directory on the host
	Socket string // the vhost-user socket; the control socket is Socket+".ctl"
	Daemon *daemon.Daemon
	FE     *frontend.Frontend
	C      *fuseclient.Client
	Init   fuseclient.InitOut
	Ctx    context.Context
	Cancel context.CancelFunc
	Opts   Options

	// ExitChecked is set by a test that checked the daemon's exit itself
	// (the cleanup then does not demand a clean exit).
	ExitChecked bool
}

// Binary returns $VFSD_BIN when it names a file, else ./cmd/vfsd built once
// per test binary.
func Binary() (string, error) {
	if b, ok := daemon.VfsdEnvBin(); ok {
		return b, nil
	}
	return e2e.VfsdBinary()
}

// CommonArgs returns the vfsd arguments every daemon here gets besides the
// socket, the share and the cache mode: the crash budget and $VFSD_CRASH_ARGS.
func CommonArgs(maxRestarts int) []string {
	a := []string{"--max-restarts=" + strconv.Itoa(maxRestarts)}
	if maxRestarts == 0 {
		// Hundreds of kills on purpose: a budget they cannot exhaust, and a
		// short window so that the restart backoff (which doubles with each
		// death in the window of a worker younger than 1s, up to 1s) stays
		// in milliseconds.
		a = []string{"--max-restarts=" + strconv.Itoa(BigBudget), "--restart-window=" + BigBudgetWindow.String()}
	}
	return append(a, strings.Fields(os.Getenv("VFSD_CRASH_ARGS"))...)
}

// Start starts vfsd in supervisor mode (its default) on a fresh share, dials
// it and sends INIT. Everything is torn down when the test ends; the daemon
// must exit by itself once the frontend hung up.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	if o.RequestQueues == 0 {
		o.RequestQueues = 1
	}
	if o.Depth == 0 {
		o.Depth = 32
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.MemSize == 0 {
		o.MemSize = 64 << 20
	}
	bin, err := Binary()
	if err != nil {
		t.Fatalf("vfsd binary: %v", err)
	}
	tmp := t.TempDir()
	e := &Env{T: t, Dir: filepath.Join(tmp, "shared"), Socket: filepath.Join(tmp, "vhost.sock"), Opts: o}
	if err := os.Mkdir(e.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range o.Env {
		if tt, ok := t.(*testing.T); ok {
			tt.Setenv(k, v)
		} else {
			t.Fatalf("Options.Env needs a *testing.T")
		}
	}
	cfg := daemon.Config{Kind: daemon.Vfsd, Bin: bin, Socket: e.Socket, SharedDir: e.Dir, Full: true,
		Extra: append(CommonArgs(o.MaxRestarts), o.Args...)}
	if o.RequestQueues > 1 {
		cfg.RequestQueues = o.RequestQueues
	}
	d, err := daemon.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.Daemon = d
	e.Ctx, e.Cancel = context.WithTimeout(context.Background(), o.Timeout)
	t.Cleanup(func() {
		e.Cancel()
		if e.FE != nil {
			e.FE.Close()
		}
		if !d.Wait(10*time.Second) && !e.ExitChecked {
			t.Errorf("vfsd (supervisor) did not exit within 10s of the frontend hanging up; killed")
		}
		if t.Failed() {
			t.Logf("vfsd output (last 150 lines):\n%s", tail(d.Output(), 150))
		}
	})
	t.Logf("vfsd %s", strings.Join(cfg.Args(), " "))
	if o.NoDial {
		return e
	}
	fe, err := dialFrontend(e)
	if err != nil {
		t.Fatalf("dial vfsd: %v\nvfsd output:\n%s", err, tail(d.Output(), 60))
	}
	e.FE = fe
	e.C = fuseclient.New(fe, fuseclient.Options{Depth: o.Depth})
	if !o.NoInit {
		if e.Init, err = e.C.Init(e.Ctx, 0); err != nil {
			t.Fatalf("INIT: %v", err)
		}
	}
	return e
}

// dialFrontend connects a frontend with e's options (QEMU 7.2's setup).
func dialFrontend(e *Env) (*frontend.Frontend, error) {
	o := e.Opts
	return frontend.Dial(e.Socket, frontend.Options{Mem: frontend.MemOptions{Size: o.MemSize},
		QueueSize: o.QueueSize, RequestQueues: o.RequestQueues, Indirect: o.Indirect, DialTimeout: 15 * time.Second})
}

// Path returns the host path of name inside the share.
func (e *Env) Path(name ...string) string {
	return filepath.Join(append([]string{e.Dir}, name...)...)
}

// Status is the control socket's answer to `status`, decoded generically,
// with the fields the tests need found by name.
type Status struct {
	Raw       map[string]any
	WorkerPID int   // -1 when the answer has no worker pid field
	Crashes   int64 // -1 when it has no crash counter
}

// ControlStatus asks the supervisor's control socket (SOCKET.ctl) for `status`.
func ControlStatus(socket string) (Status, error) {
	st := Status{WorkerPID: -1, Crashes: -1}
	c, err := net.DialTimeout("unix", socket+".ctl", 2*time.Second)
	if err != nil {
		return st, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("status\n")); err != nil {
		return st, err
	}
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	if err := json.NewDecoder(c).Decode(&st.Raw); err != nil {
		return st, fmt.Errorf("status: not JSON: %w", err)
	}
	if v, ok := findNumber(st.Raw, "workerpid", "worker.pid", "worker"); ok {
		st.WorkerPID = int(v)
	}
	if v, ok := findNumber(st.Raw, "crashes", "deaths", "workercrashes"); ok {
		st.Crashes = int64(v)
	}
	return st, nil
}

// findNumber looks for the first of keys (compared lower-case without '_'
// and '-'; "a.b" is key b inside object a) holding a number.
func findNumber(m map[string]any, keys ...string) (float64, bool) {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	var get func(m map[string]any, path []string) (float64, bool)
	get = func(m map[string]any, path []string) (float64, bool) {
		for k, v := range m {
			if norm(k) != path[0] {
				continue
			}
			if len(path) == 1 {
				if f, ok := v.(float64); ok {
					return f, true
				}
				continue
			}
			if sub, ok := v.(map[string]any); ok {
				return get(sub, path[1:])
			}
		}
		return 0, false
	}
	for _, k := range keys {
		if v, ok := get(m, strings.Split(k, ".")); ok {
			return v, true
		}
	}
	return 0, false
}

// Children returns the child processes of pid (all its threads' children).
func Children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	seen := map[int]bool{}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil && !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// WorkerPID returns the current worker's pid: from the control socket, else
// the supervisor's only live (not zombie) child. 0 when there is none now.
func (e *Env) WorkerPID() (int, string) {
	if st, err := ControlStatus(e.Socket); err == nil && st.WorkerPID > 0 && alive(st.WorkerPID) {
		return st.WorkerPID, "status"
	}
	var live []int
	for _, c := range Children(e.Daemon.PID()) {
		if alive(c) {
			live = append(live, c)
		}
	}
	if len(live) == 1 {
		return live[0], "children"
	}
	return 0, ""
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// WaitNewWorker waits up to limit for a live worker other than old.
func (e *Env) WaitNewWorker(old int, limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	for {
		if pid, _ := e.WorkerPID(); pid > 0 && pid != old {
			return pid, nil
		}
		select {
		case <-e.Daemon.Done():
			return 0, fmt.Errorf("the supervisor exited: %v", e.Daemon.ExitErr())
		default:
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no new worker within %v (old pid %d; supervisor children %v)", limit, old, Children(e.Daemon.PID()))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// KillWorker SIGKILLs the current worker (waiting up to 10s for one to exist)
// and returns its pid.
func (e *Env) KillWorker() (int, error) {
	pid, err := e.WaitNewWorker(0, 10*time.Second)
	if err != nil {
		return 0, err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("kill worker %d: %w", pid, err)
	}
	return pid, nil
}

// FDCount returns the number of open fds of pid.
func FDCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// FDList describes pid's open fds (for a leak report).
func FDList(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, en := range ents {
		l, _ := os.Readlink(filepath.Join(dir, en.Name()))
		fmt.Fprintf(&b, "  %s -> %s\n", en.Name(), l)
	}
	return b.String()
}

// CheckAlive fails unless the frontend is connected and the supervisor runs.
func (e *Env) CheckAlive() error {
	select {
	case <-e.FE.Dead():
		return fmt.Errorf("frontend disconnected (EOF from vfsd): %v", e.FE.DeadErr())
	default:
	}
	select {
	case <-e.Daemon.Done():
		return fmt.Errorf("the supervisor exited: %v", e.Daemon.ExitErr())
	default:
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
