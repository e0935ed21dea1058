package seccomp

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The victim: the test binary re-executed with these variables installs
// the filter, does the kind of work the worker does, prints OK, then makes
// a forbidden call and prints its result (if it still lives).
const (
	envVictim    = "VFSD_SECCOMP_VICTIM"        // action
	envForbidden = "VFSD_SECCOMP_VICTIM_CALL"   // which forbidden call
	envThread    = "VFSD_SECCOMP_VICTIM_THREAD" // "1": make it on a thread started before Install
	envDir       = "VFSD_SECCOMP_VICTIM_DIR"
)

func TestMain(m *testing.M) {
	if a := os.Getenv(envVictim); a != "" {
		os.Exit(victim(a, os.Getenv(envForbidden), os.Getenv(envThread) == "1", os.Getenv(envDir)))
	}
	os.Exit(m.Run())
}

// forbidden makes one syscall outside the allowlist and returns its errno
// (0: it succeeded). Each is harmless when it is allowed (log, none).
func forbidden(call string) unix.Errno {
	switch call {
	case "socket":
		fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if e == 0 {
			unix.Close(int(fd))
		}
		return e
	case "ptrace": // an invalid request for pid 0: ESRCH when allowed
		_, _, e := unix.RawSyscall(unix.SYS_PTRACE, 0xffff, 0, 0)
		return e
	case "execve": // a path that does not exist: ENOENT when allowed
		path := []byte("/nonexistent/vfsd-seccomp\x00")
		_, _, e := unix.RawSyscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(&path[0])), 0, 0)
		return e
	case "mmap-exec":
		p, _, e := unix.RawSyscall6(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uintptr(0), 0)
		if e == 0 {
			unix.RawSyscall(unix.SYS_MUNMAP, p, 4096, 0)
		}
		return e
	case "fcntl-setown":
		_, _, e := unix.RawSyscall(unix.SYS_FCNTL, 1, unix.F_SETOWN, 0)
		return e
	}
	panic("unknown forbidden call " + call)
}

func victim(action, call string, onOldThread bool, dir string) int {
	a, err := ParseAction(action)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 10
	}
	// A thread that exists before Install: TSYNC must filter it too.
	old := make(chan unix.Errno)
	gate := make(chan struct{})
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(started)
		<-gate
		old <- forbidden(call)
	}()
	<-started
	if err := Install(Options{Action: a}); err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		return 11
	}
	if err := allowedWork(dir); err != nil {
		fmt.Fprintln(os.Stderr, "allowed work:", err)
		return 12
	}
	os.Stdout.WriteString("OK\n")
	var e unix.Errno
	if onOldThread {
		close(gate)
		e = <-old
	} else {
		e = forbidden(call)
	}
	fmt.Fprintf(os.Stdout, "RESULT %d\n", int(e))
	return 0
}

// allowedWork does, under the filter, what the worker does: files through
// the *at calls, threads, timers, GC, memory returned to the kernel,
// eventfds and epoll, a unix socketpair's messages with fds.
func allowedWork(dir string) error {
	name := filepath.Join(dir, "f")
	want := bytes.Repeat([]byte("vfsd"), 4096)
	if err := os.WriteFile(name, want, 0o600); err != nil {
		return err
	}
	got, err := os.ReadFile(name)
	if err != nil || !bytes.Equal(got, want) {
		return fmt.Errorf("read back: %v", err)
	}
	// The passthrough's way: *at calls relative to a directory fd.
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Mkdirat(dfd, "d", 0o700); err != nil {
		return fmt.Errorf("mkdirat: %w", err)
	}
	if err := unix.Renameat2(dfd, "f", dfd, "d/g", unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("renameat2: %w", err)
	}
	var stx unix.Statx_t
	if err := unix.Statx(dfd, "d/g", unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx); err != nil || stx.Size != uint64(len(want)) {
		return fmt.Errorf("statx: %v (size %d)", err, stx.Size)
	}
	if err := unix.Unlinkat(dfd, "d/g", 0); err != nil {
		return fmt.Errorf("unlinkat: %w", err)
	}
	if err := unix.Unlinkat(dfd, "d", unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("rmdir: %w", err)
	}
	// Goroutines on threads of their own (clone), each allocating.
	var wg sync.WaitGroup
	sums := make([]int, 8)
	for i := range sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // exits with the goroutine: a thread ends
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
				sums[i] += int(b[j])
			}
			time.Sleep(time.Millisecond)
		}()
	}
	wg.Wait()
	for _, s := range sums {
		if s != sums[0] {
			return errors.New("goroutines disagree")
		}
	}
	runtime.GC()
	time.Sleep(5 * time.Millisecond)
	// An eventfd signalled and waited for with epoll (the queue threads).
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(efd)
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	if _, err := unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		return fmt.Errorf("eventfd write: %w", err)
	}
	evs := make([]unix.EpollEvent, 1)
	n, err := unix.EpollWait(ep, evs, 1000)
	for err == unix.EINTR { // epoll_wait is never restarted after a signal
		n, err = unix.EpollWait(ep, evs, 1000)
	}
	if n != 1 || err != nil {
		return fmt.Errorf("epoll_wait: %d, %v", n, err)
	}
	return nil
}

func runVictim(t *testing.T, action, call string, onOldThread bool) (stdout, stderr string, err error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	thread := "0"
	if onOldThread {
		thread = "1"
	}
	cmd.Env = append(os.Environ(), envVictim+"="+action, envForbidden+"="+call, envThread+"="+thread, envDir+"="+t.TempDir())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func signalOf(err error) syscall.Signal {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return 0
}

func needSeccomp(t *testing.T) {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("seccomp filter is x86_64 only")
	}
	st, err := os.ReadFile("/proc/self/status")
	if err != nil || !strings.Contains(string(st), "Seccomp:") {
		t.Skip("kernel without seccomp (no Seccomp: line in /proc/self/status)")
	}
}

// In kill mode the allowed work runs and the forbidden call kills the
// process with SIGSYS, whichever thread makes it.
func TestVictimKilled(t *testing.T) {
	needSeccomp(t)
	t.Logf("victim threads started by %s", map[bool]string{true: "glibc pthread_create (cgo)", false: "the Go runtime's clone"}[victimCgo])
	for _, tc := range []struct {
		call   string
		thread bool
	}{
		{"socket", false}, {"ptrace", false}, {"execve", false}, {"mmap-exec", false},
		{"fcntl-setown", false}, {"socket", true},
	} {
		t.Run(fmt.Sprintf("%s/oldthread=%v", tc.call, tc.thread), func(t *testing.T) {
			out, errOut, err := runVictim(t, "kill", tc.call, tc.thread)
			if !strings.Contains(out, "OK\n") {
				t.Fatalf("allowed work did not finish: %v\nstdout: %s\nstderr: %s", err, out, errOut)
			}
			if strings.Contains(out, "RESULT") {
				t.Fatalf("forbidden %s returned: %s", tc.call, out)
			}
			if sig := signalOf(err); sig != syscall.SIGSYS {
				t.Fatalf("victim ended with %v (signal %v), want killed by SIGSYS\nstderr: %s", err, sig, errOut)
			}
		})
	}
}

func TestVictimOtherActions(t *testing.T) {
	needSeccomp(t)
	for _, tc := range []struct {
		action, call string
		want         string // RESULT line; "" for trap
	}{
		{"errno", "socket", fmt.Sprintf("RESULT %d\n", unix.EPERM)},
		{"errno", "execve", fmt.Sprintf("RESULT %d\n", unix.EPERM)},
		{"log", "socket", "RESULT 0\n"},                            // allowed, logged
		{"log", "execve", fmt.Sprintf("RESULT %d\n", unix.ENOENT)}, // allowed: the path is missing
		{"none", "ptrace", fmt.Sprintf("RESULT %d\n", unix.ESRCH)}, // no filter
		{"trap", "socket", ""},
	} {
		t.Run(tc.action+"/"+tc.call, func(t *testing.T) {
			out, errOut, err := runVictim(t, tc.action, tc.call, false)
			if !strings.Contains(out, "OK\n") {
				t.Fatalf("allowed work did not finish: %v\nstdout: %s\nstderr: %s", err, out, errOut)
			}
			if tc.action == "trap" {
				// The Go runtime's SIGSYS handler: a stack trace and exit 2.
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(errOut, "SIGSYS") {
					t.Fatalf("trap: %v, stderr %q; want exit 2 with SIGSYS", err, errOut)
				}
				if strings.Contains(out, "RESULT") {
					t.Fatalf("trapped call returned: %s", out)
				}
				return
			}
			if err != nil {
				t.Fatalf("victim failed: %v\nstderr: %s", err, errOut)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("stdout %q, want %q", out, tc.want)
			}
		})
	}
}

// ActionNone installs nothing (the test process keeps its seccomp mode).
func TestInstallNoneIsNoop(t *testing.T) {
	before, _ := os.ReadFile("/proc/self/status")
	if err := Install(Options{Action: ActionNone}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile("/proc/self/status")
	mode := func(st []byte) string {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "Seccomp:") {
				return l
			}
		}
		return ""
	}
	if mode(before) != mode(after) {
		t.Fatalf("ActionNone changed %q to %q", mode(before), mode(after))
	}
}
