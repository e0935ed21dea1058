package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/seccomp"
)

const envChild = "VFSD_SYSAUDIT_CHILD"

const (
	nGetppid = 1000
	nGetpid  = 500
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envChild); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child runs in a re-executed test binary. "getppid" and "seal" wait for a
// byte on stdin (the parent has added them to the tracer by then).
func child(mode string) int {
	switch mode {
	case "getppid", "seal":
		var b [1]byte
		if _, err := os.Stdin.Read(b[:]); err != nil {
			return 10
		}
		for i := 0; i < nGetppid; i++ {
			unix.Getppid()
		}
		if mode == "seal" {
			if err := seccomp.Install(seccomp.Options{Action: seccomp.ActionKill}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 11
			}
			for i := 0; i < nGetpid; i++ {
				unix.Getpid()
			}
		}
		return 0
	case "daemon":
		// A plain "vfsd": found by polling, then makes one syscall outside
		// the allowlist after installing a logging filter.
		time.Sleep(300 * time.Millisecond)
		if err := seccomp.Install(seccomp.Options{Action: seccomp.ActionLog}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 11
		}
		unix.Getppid()
		return 0
	}
	return 12
}

func newTracer(t *testing.T) *Tracer {
	t.Helper()
	tr, err := NewTracer()
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("BPF unavailable (not root): %v", err)
		}
		t.Fatalf("BPF as root: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// startChild starts the test binary in mode, stopped on its stdin.
func startChild(t *testing.T, mode string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+mode)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, in
}

func nr(t *testing.T, name string) uint32 {
	t.Helper()
	n, ok := seccomp.Number(name)
	if !ok {
		t.Fatalf("no syscall %s", name)
	}
	return n
}

func TestTracerCountsGetppid(t *testing.T) {
	tr := newTracer(t)
	cmd, in := startChild(t, "getppid")
	if err := tr.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	in.Write([]byte{1})
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	c, err := tr.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.All[nr(t, "getppid")]; got < nGetppid || got > nGetppid+10 {
		t.Errorf("getppid counted %d times, want %d", got, nGetppid)
	}
	if got := c.All[nr(t, "exit_group")]; got != 1 {
		t.Errorf("exit_group counted %d times, want 1", got)
	}
	for i, n := range c.Sealed {
		if n != 0 {
			t.Errorf("sealed bank has %s=%d without a filter", seccomp.Name(uint32(i)), n)
		}
	}
	if tr.Sealed(cmd.Process.Pid) {
		t.Error("process marked sealed without a filter")
	}
	// The test process itself is not traced.
	before := c.All[nr(t, "getppid")]
	for i := 0; i < 100; i++ {
		unix.Getppid()
	}
	c, _ = tr.Counts()
	if c.All[nr(t, "getppid")] != before {
		t.Error("an untraced process was counted")
	}
}

func TestTracerSealedAfterSeccomp(t *testing.T) {
	tr := newTracer(t)
	cmd, in := startChild(t, "seal")
	pid := cmd.Process.Pid
	if err := tr.Add(pid); err != nil {
		t.Fatal(err)
	}
	in.Write([]byte{1})
	// Wait for the exit without reaping, so that Sealed can still be read.
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if !tr.Sealed(pid) {
		t.Error("process not marked sealed after seccomp(SET_MODE_FILTER)")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	c, err := tr.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.All[nr(t, "getppid")]; got < nGetppid {
		t.Errorf("getppid: %d, want >= %d", got, nGetppid)
	}
	if got := c.Sealed[nr(t, "getppid")]; got != 0 {
		t.Errorf("getppid before the filter counted as sealed: %d", got)
	}
	if got := c.Sealed[nr(t, "getpid")]; got < nGetpid {
		t.Errorf("getpid after the filter: %d, want >= %d", got, nGetpid)
	}
	if c.All[nr(t, "seccomp")] < 2 || c.Sealed[nr(t, "seccomp")] != 0 {
		t.Errorf("seccomp: all %d sealed %d; want >= 2 (GET_ACTION_AVAIL, SET_MODE_FILTER) and 0",
			c.All[nr(t, "seccomp")], c.Sealed[nr(t, "seccomp")])
	}
	if c.Sealed[nr(t, "exit_group")] != 1 {
		t.Errorf("exit_group after the filter: %d, want 1", c.Sealed[nr(t, "exit_group")])
	}
}

// The whole tool: a command that starts a plain "vfsd" which installs a
// logging filter and then calls getppid (not allowlisted).
func TestRunFindsMissingSyscall(t *testing.T) {
	newTracer(t) // skip or fail like the others
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	vfsd := filepath.Join(t.TempDir(), "vfsd")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vfsd, data, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envChild, "daemon")
	var out, errb bytes.Buffer
	status := run([]string{"-comm", "vfsd", "--", "sh", "-c", vfsd + " -test.run=^$"}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr (%d bytes):\n%s", out.String(), errb.Len(), errb.String())
	if status != 1 {
		t.Fatalf("status %d, want 1 (a syscall missing from the allowlist)", status)
	}
	if !strings.Contains(out.String(), "traced 0 worker(s) and 1 plain daemon(s)") ||
		!strings.Contains(out.String(), "1 installed a seccomp filter") {
		t.Errorf("summary line wrong")
	}
	if !strings.Contains(out.String(), "after the seccomp filter was installed") ||
		!strings.Contains(out.String(), "MISSING from the allowlist (1): [getppid]") {
		t.Errorf("report does not name getppid as the one missing syscall")
	}
}

func TestParseArgs(t *testing.T) {
	for _, bad := range [][]string{{}, {"-pid", "1", "--", "true"}, {"-pid", "-3"}, {"-from", "x", "--", "true"}, {"-poll", "0s", "--", "true"}} {
		if _, err := parseArgs(bad, io.Discard); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	c, err := parseArgs([]string{"-comm", "x", "-strict", "--", "go", "test", "-run", "X"}, io.Discard)
	if err != nil || c.comm != "x" || !c.strict || !slices.Equal(c.cmd, []string{"go", "test", "-run", "X"}) {
		t.Errorf("parse: %+v, %v", c, err)
	}
}

func TestReport(t *testing.T) {
	var c Counts
	c.All[nr(t, "read")] = 5
	c.All[nr(t, "execve")] = 1
	c.Sealed[nr(t, "read")] = 3
	c.Sealed[nr(t, "ptrace")] = 2
	allow := []string{"read", "write"}
	r := makeReport(c, allow, true)
	if !slices.Equal(r.Missing, []string{"ptrace"}) || !slices.Equal(r.Unused, []string{"write"}) {
		t.Errorf("sealed: missing %v unused %v", r.Missing, r.Unused)
	}
	if len(r.Seen) != 2 || r.Seen[0].Name != "read" || r.Seen[0].Count != 3 {
		t.Errorf("sealed: seen %+v", r.Seen)
	}
	r = makeReport(c, allow, false)
	if !slices.Equal(r.Missing, []string{"execve"}) || !slices.Equal(r.Unused, []string{"write"}) {
		t.Errorf("all: missing %v unused %v", r.Missing, r.Unused)
	}
	var b bytes.Buffer
	r.Print(&b)
	if !strings.Contains(b.String(), "MISSING from the allowlist (1): [execve]") {
		t.Errorf("print:\n%s", b.String())
	}
}

// fakeProc is a /proc with stat and cmdline files.
type fakeProc struct {
	t    *testing.T
	root string
}

func (f fakeProc) set(pid, ppid int, comm string, argv ...string) {
	dir := filepath.Join(f.root, fmt.Sprint(pid))
	os.MkdirAll(dir, 0o755)
	stat := fmt.Sprintf("%d (%s) S %d 1 1 0 -1\n", pid, comm, ppid)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cmdline"), []byte(strings.Join(argv, "\x00")+"\x00"), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f fakeProc) gone(pid int) { os.RemoveAll(filepath.Join(f.root, fmt.Sprint(pid))) }

type fakeTracer struct{ traced map[int]bool }

func (f *fakeTracer) Add(pid int) error {
	if f.traced[pid] {
		return errors.New("already traced")
	}
	f.traced[pid] = true
	return nil
}
func (f *fakeTracer) Remove(pid int) error { delete(f.traced, pid); return nil }
func (f *fakeTracer) Sealed(pid int) bool  { return pid == 12 }

func TestTracker(t *testing.T) {
	fp := fakeProc{t, t.TempDir()}
	ft := &fakeTracer{traced: map[int]bool{}}
	tk := newTracker(fp.root, 10, "vfsd", ft, t.Logf)
	tracedPids := func() []int {
		var ps []int
		for p := range ft.traced {
			ps = append(ps, p)
		}
		slices.Sort(ps)
		return ps
	}
	scan := func(want ...int) {
		t.Helper()
		if err := tk.scan(); err != nil {
			t.Fatal(err)
		}
		if got := tracedPids(); !slices.Equal(got, want) {
			t.Fatalf("traced %v, want %v", got, want)
		}
	}
	fp.set(1, 0, "init", "/sbin/init")
	fp.set(10, 1, "go", "go", "test", "./tools/e2e")
	fp.set(11, 10, "e2e.test", "/tmp/e2e.test")
	fp.set(50, 1, "vfsd", "/usr/bin/vfsd", "--socket-path=/x") // not a descendant
	fp.set(51, 1, "other", "other", "worker")                  // not a descendant
	scan()
	// A daemon forked by the test binary, before its exec: the parent's
	// name; after the exec: vfsd.
	fp.set(12, 11, "e2e.test", "/tmp/e2e.test")
	scan()
	fp.set(12, 11, "vfsd", "/tmp/bin/vfsd", "--socket-path=/s", "--shared-dir=/d")
	scan(12)
	// A supervisor and its worker: once the worker appears, the supervisor
	// is no longer traced.
	fp.set(13, 11, "vfsd", "/tmp/bin/vfsd", "--socket-path=/s2")
	scan(12, 13)
	fp.set(14, 13, "vfsd", "/proc/self/exe", "worker", "--vhost-fd=5")
	scan(12, 14)
	// --no-supervisor daemons stay traced even with a child named worker.
	fp.set(15, 11, "vfsd", "/tmp/bin/vfsd", "--no-supervisor")
	fp.set(16, 15, "vfsd", "/proc/self/exe", "worker")
	scan(12, 14, 15, 16)
	// Exits stop the tracing; the sealed one is remembered.
	fp.gone(12)
	fp.gone(14)
	scan(15, 16)
	tk.finish()
	n := tk.count()
	if n[RoleWorker] != 2 || n[RoleDaemon] != 2 || n[RoleSupervisor] != 1 {
		t.Errorf("roles %v", n)
	}
	if !tk.sealed[12] || len(tk.sealed) != 1 {
		t.Errorf("sealed %v, want pid 12", tk.sealed)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		comm string
		argv []string
		want Role
	}{
		{"vfsd", []string{"/proc/self/exe", "worker", "--vhost-fd=3"}, RoleWorker},
		{"supervisor.test", []string{"/tmp/supervisor.test", "worker"}, RoleWorker},
		{"vfsd", []string{"vfsd", "--socket-path=/s"}, RoleDaemon},
		{"vfsd", []string{"vfsd"}, RoleDaemon},
		{"virtiofsd", []string{"virtiofsd", "--socket-path=/s"}, RoleNone},
		{"go", []string{"go", "test", "worker"}, RoleNone},
	} {
		if got := classify(tc.comm, tc.argv, "vfsd"); got != tc.want {
			t.Errorf("classify(%q, %q) = %v, want %v", tc.comm, tc.argv, got, tc.want)
		}
	}
}
