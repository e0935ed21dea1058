package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
)

// TestMain lets the test binary stand in for vfsd when the supervisor
// (run in-process by the tests) starts it as "vfsd worker ...".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	if os.Getenv("VFSD_TEST_AS_MAIN") == "1" { // the whole vfsd, as a process (systemd_test.go)
		os.Unsetenv("VFSD_TEST_AS_MAIN")
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// startVfsd runs run(args) in-process (supervisor mode: the test binary is
// the worker, see TestMain) and connects to its socket.
func startVfsd(t *testing.T, args ...string) (sock string, c net.Conn, done chan int, errb *syncBuf) {
	t.Helper()
	dir := t.TempDir()
	sock = filepath.Join(dir, "vfsd.sock")
	errb = &syncBuf{}
	done = make(chan int, 1)
	go func() {
		done <- run(append([]string{"--socket-path=" + sock, "--shared-dir=" + dir}, args...), &bytes.Buffer{}, errb)
	}()
	for deadline := time.Now().Add(5 * time.Second); ; {
		var err error
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return sock, c, done, errb
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A worker that dies at every start (a crash point in its start-up) spends
// the crash budget: the supervisor gives up with a clear message and a
// non-zero status.
func TestCrashBudget(t *testing.T) {
	t.Setenv("VFSD_CRASHPOINT", "mid-fd-handover")
	_, c, done, errb := startVfsd(t, "--max-restarts=3", "--restart-window=1m", "--log-level=error")
	defer c.Close()
	select {
	case code := <-done:
		if code == 0 {
			t.Fatalf("exit 0 with an exhausted budget: %s", errb.String())
		}
		if !strings.Contains(errb.String(), "vfsd: supervisor: crash budget exhausted: worker crashed 4 times in 1m0s; giving up") {
			t.Fatalf("stderr lacks the budget message:\n%s", errb.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("still running 20s after every worker died:\n%s", errb.String())
	}
}

// The control socket answers status and upgrade; the status and upgrade
// subcommands talk to it; SIGKILL of the worker is a restart the status
// shows.
func TestControlSocket(t *testing.T) {
	sock, c, done, errb := startVfsd(t, "--log-level=error")
	var out, serr bytes.Buffer
	status := func() Status {
		t.Helper()
		out.Reset()
		if code := run([]string{"status", "--socket-path=" + sock}, &out, &serr); code != 0 {
			t.Fatalf("vfsd status: exit %d: %s", code, serr.String())
		}
		var st Status
		if err := json.Unmarshal(out.Bytes(), &st); err != nil {
			t.Fatalf("status %q: %v", out.String(), err)
		}
		return st
	}
	var st Status
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st = status(); st.WorkerPID != 0 && st.StoredFDs >= 2 { // state.worker, state.inflight, ...
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no worker: %+v", st)
		}
	}
	if st.State != "running" || st.SupervisorPID != os.Getpid() || st.StoredFDs < 2 {
		t.Fatalf("status %+v", st)
	}
	old := st.WorkerPID
	if err := unix.Kill(old, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st = status(); st.Restarts == 1 && st.WorkerPID != old && st.WorkerPID != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restart after SIGKILL: %+v\n%s", st, errb.String())
		}
	}
	if st.Crashes != 1 || st.LastStallMS <= 0 {
		t.Fatalf("status after a crash %+v", st)
	}
	out.Reset()
	if code := run([]string{"upgrade", "--socket-path=" + sock}, &out, &serr); code != 0 || strings.TrimSpace(out.String()) != "ok" {
		t.Fatalf("vfsd upgrade: exit %d, %q %s", code, out.String(), serr.String())
	}
	if st = status(); st.Upgrades != 1 || st.Crashes != 1 {
		t.Fatalf("status after upgrade %+v", st)
	}
	if ans, err := Query(sock+".ctl", "bogus", time.Second); err != nil || ans != "error: unknown command" {
		t.Fatalf("bogus command: %q %v", ans, err)
	}
	c.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(time.Second):
		t.Fatal("still running a second after the frontend disconnected")
	}
	if _, err := os.Stat(sock + ".ctl"); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind: %v", err)
	}
}

// The supervisor passes --seccomp to the worker, which installs the filter
// (kill by default) once it serves: /proc/PID/status shows mode 2
// (filter); with --seccomp=none it shows 0. The filtered worker still
// answers the frontend.
func TestWorkerSeccomp(t *testing.T) {
	for _, c := range []struct{ flag, mode string }{{"", "2"}, {"--seccomp=none", "0"}, {"--seccomp=log", "2"}} {
		t.Run("mode"+c.mode+c.flag, func(t *testing.T) {
			args := []string{"--log-level=error"}
			if c.flag != "" {
				args = append(args, c.flag)
			}
			sock, conn, done, errb := startVfsd(t, args...)
			var mode string
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				var out, serr bytes.Buffer
				var st Status
				if run([]string{"status", "--socket-path=" + sock}, &out, &serr) == 0 &&
					json.Unmarshal(out.Bytes(), &st) == nil && st.WorkerPID != 0 && st.StoredFDs >= 2 {
					// READY=1 comes after the filter: stored state means
					// start-up got that far; poll the mode until it shows.
					b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.WorkerPID))
					for _, l := range strings.Split(string(b), "\n") {
						if v, ok := strings.CutPrefix(l, "Seccomp:"); ok {
							mode = strings.TrimSpace(v)
						}
					}
					if mode == c.mode {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("worker seccomp mode %q, want %q\n%s", mode, c.mode, errb.String())
				}
			}
			// GET_FEATURES through the supervisor to the filtered worker.
			conn.Write([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
			reply := make([]byte, 20)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(conn, reply); err != nil {
				t.Fatalf("GET_FEATURES: %v\n%s", err, errb.String())
			}
			conn.Close()
			select {
			case code := <-done:
				if code != 0 || strings.Contains(errb.String(), "bad system call") {
					t.Fatalf("exit %d: %s", code, errb.String())
				}
			case <-time.After(5 * time.Second):
				t.Fatal("still running after the frontend disconnected")
			}
		})
	}
}

// vfsd status shows the started queues and the requests answered, per
// queue, counted across a worker crash (the counters live in a memfd in
// the fd store, engine/metrics.Shared).
func TestStatusQueuesRequests(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vfsd.sock")
	errb := &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"--socket-path=" + sock, "--shared-dir=" + dir, "--log-level=error"}, &bytes.Buffer{}, errb)
	}()
	fe, err := frontend.Dial(sock, frontend.Options{Mem: frontend.MemOptions{Size: 16 << 20}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, errb.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := fuseclient.New(fe, fuseclient.Options{})
	if _, err := c.Init(ctx, 0); err != nil {
		t.Fatalf("INIT: %v", err)
	}
	status := func() Status {
		t.Helper()
		var out, serr bytes.Buffer
		if code := run([]string{"status", "--socket-path=" + sock}, &out, &serr); code != 0 {
			t.Fatalf("vfsd status: exit %d: %s", code, serr.String())
		}
		var st Status
		if err := json.Unmarshal(out.Bytes(), &st); err != nil {
			t.Fatalf("status %q: %v", out.String(), err)
		}
		return st
	}
	getattrs := func(n int) {
		t.Helper()
		for range n {
			if _, err := c.Getattr(ctx, 1, nil); err != nil {
				t.Fatalf("GETATTR: %v", err)
			}
		}
	}
	// The count is taken when the answer is sent: wait for it.
	waitTotal := func(want uint64) Status {
		t.Helper()
		var st Status
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if st = status(); st.Requests.Total >= want || time.Now().After(deadline) {
				break
			}
		}
		if st.Requests.Total != want {
			t.Fatalf("requests %+v, want total %d\n%s", st.Requests, want, errb.String())
		}
		return st
	}
	getattrs(9)
	st := waitTotal(10) // INIT + 9 GETATTR, all on request queue 1
	if st.Queues != fe.NumQueues() || st.Queues != 2 {
		t.Fatalf("queues %d, want %d (hiprio + 1 request queue)", st.Queues, fe.NumQueues())
	}
	if fmt.Sprint(st.Requests.PerQueue) != "[0 10]" {
		t.Fatalf("per queue %v, want [0 10]", st.Requests.PerQueue)
	}
	old := st.WorkerPID
	if err := unix.Kill(old, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st = status(); st.Restarts == 1 && st.WorkerPID != old && st.WorkerPID != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restart after SIGKILL: %+v\n%s", st, errb.String())
		}
	}
	getattrs(5)
	st = waitTotal(15) // the new worker counts on
	if st.Queues != 2 || fmt.Sprint(st.Requests.PerQueue) != "[0 15]" {
		t.Fatalf("after a crash: queues %d, per queue %v, want 2 and [0 15]", st.Queues, st.Requests.PerQueue)
	}
	fe.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still running after the frontend disconnected")
	}
}
