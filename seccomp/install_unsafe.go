package seccomp

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// setFilter is seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog). With
// SECCOMP_FILTER_FLAG_TSYNC a positive return is the id of a thread that
// could not be synchronised (nothing was installed).
func setFilter(prog []unix.SockFilter, flags uintptr) (tid int, err error) {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: unsafe.SliceData(prog)}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// actionAvailable asks the kernel whether it knows the filter return action
// (SECCOMP_GET_ACTION_AVAIL).
func actionAvailable(action uint32) error {
	_, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_ACTION_AVAIL, 0, uintptr(unsafe.Pointer(&action)))
	if e != 0 {
		return e
	}
	return nil
}
