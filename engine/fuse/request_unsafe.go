package fuse

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

func advance(iov []unix.Iovec, n int) []unix.Iovec {
	for n > 0 && len(iov) > 0 {
		if int(iov[0].Len) <= n {
			n -= int(iov[0].Len)
			iov = iov[1:]
			continue
		}
		iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), n))
		iov[0].Len -= uint64(n)
		n = 0
	}
	return iov
}

func preadv(fd int, iov []unix.Iovec, off int64) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_PREADV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), uintptr(off), uintptr(off>>32), 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// pwritev writes at off+done, or at the current offset when off < 0.
func pwritev(fd int, iov []unix.Iovec, off int64, done int) (int, error) {
	var n uintptr
	var e unix.Errno
	if off < 0 {
		n, _, e = unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	} else {
		o := off + int64(done)
		n, _, e = unix.Syscall6(unix.SYS_PWRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), uintptr(o), uintptr(o>>32), 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
