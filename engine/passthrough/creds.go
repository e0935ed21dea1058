package passthrough

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Per-thread filesystem credentials. setfsuid/setfsgid are per-thread in
// Linux (the raw syscalls, not Go's all-threads Setuid), so the goroutine is
// locked to its OS thread while they differ from the process's. A non-zero
// fsuid also drops the fs capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN,
// CAP_MKNOD, ...) for the thread, so the host checks the guest user's rights
// on the parent directory, as virtiofsd does.

// asUser switches the calling thread's fsuid/fsgid to uid/gid. On success the
// caller must call fs.asSelf exactly once.
func (fs *FS) asUser(uid, gid uint32) error {
	runtime.LockOSThread()
	if uid == fs.euid && gid == fs.egid {
		return nil
	}
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(cur) != gid {
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(fs.egid), 0, 0)
		runtime.UnlockOSThread()
		return unix.EPERM
	}
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != uid {
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(fs.euid), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(fs.egid), 0, 0)
		runtime.UnlockOSThread()
		return unix.EPERM
	}
	return nil
}

// asSelf restores the process's credentials on the calling thread.
func (fs *FS) asSelf() {
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(fs.euid), 0, 0)
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(fs.egid), 0, 0)
	runtime.UnlockOSThread()
}
