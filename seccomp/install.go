package seccomp

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Install puts the filter for o on every thread of the process, for the
// rest of its life: prctl(PR_SET_NO_NEW_PRIVS), then
// seccomp(SECCOMP_SET_MODE_FILTER) with SECCOMP_FILTER_FLAG_TSYNC (all Go
// threads, including those already running). A denied call leaves a kernel
// audit record (type=1326) naming the syscall: kill and log always do, trap
// and errno are installed with SECCOMP_FILTER_FLAG_LOG. With ActionNone it
// does nothing. o.PID 0 means this process.
//
// Call it last in start-up, once every fd, mapping and socket the process
// needs before serving has been made: from then on only the table's
// syscalls run.
func Install(o Options) error {
	if o.Action == ActionNone {
		return nil
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return fmt.Errorf("seccomp: only linux/amd64 is supported, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
	prog, err := Program(o)
	if err != nil {
		return err
	}
	deny, _ := o.Action.ret()
	if err := actionAvailable(deny &^ unix.SECCOMP_RET_DATA); err != nil {
		return fmt.Errorf("seccomp: action %v not supported by this kernel: %w", o.Action, err)
	}
	// NO_NEW_PRIVS is per thread until TSYNC copies it to the others: both
	// calls must run on the same thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("seccomp: prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_TSYNC)
	if o.Action == ActionTrap || o.Action == ActionErrno {
		// Diagnostic modes: have the kernel log what they deny. Kill and
		// log are logged without it, and it would also log every clone3
		// answered ENOSYS.
		flags |= unix.SECCOMP_FILTER_FLAG_LOG
	}
	tid, err := setFilter(prog, flags)
	if err != nil {
		return fmt.Errorf("seccomp: install filter: %w", err)
	}
	if tid != 0 {
		return fmt.Errorf("seccomp: thread %d could not be synchronised to the filter", tid)
	}
	return nil
}
