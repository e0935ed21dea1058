package passthrough

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw *at syscall wrappers that take names as *byte pointing at a
// NUL-terminated string already in memory (a guest name in Request.Arg, a
// getdents record, a procfs fd name). x/sys's string forms copy every path
// into a fresh allocation; these keep LOOKUP and GETATTR allocation-free.

var emptyPath = [1]byte{0}

// cstr returns a pointer to name's first byte. Precondition: the byte after
// name in its backing array is NUL (fuse.CString guarantees it); an empty
// name means "" (for AT_EMPTY_PATH).
func cstr(name []byte) *byte {
	if len(name) == 0 {
		return &emptyPath[0]
	}
	return unsafe.SliceData(name)
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func statxAt(dirfd int, name []byte, flags int, mask int, st *unix.Statx_t) error {
	_, _, e := unix.Syscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(flags), uintptr(mask), uintptr(unsafe.Pointer(st)), 0)
	return errnoErr(e)
}

func openat(dirfd int, name []byte, flags int, mode uint32) (int, error) {
	for {
		fd, _, e := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
			uintptr(flags), uintptr(mode), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(fd), nil
	}
}

func mkdirat(dirfd int, name []byte, mode uint32) error {
	_, _, e := unix.Syscall(unix.SYS_MKDIRAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))), uintptr(mode))
	return errnoErr(e)
}

func mknodat(dirfd int, name []byte, mode uint32, dev uint64) error {
	_, _, e := unix.Syscall6(unix.SYS_MKNODAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(mode), uintptr(dev), 0, 0)
	return errnoErr(e)
}

func symlinkat(target []byte, dirfd int, name []byte) error {
	_, _, e := unix.Syscall(unix.SYS_SYMLINKAT, uintptr(unsafe.Pointer(cstr(target))), uintptr(dirfd),
		uintptr(unsafe.Pointer(cstr(name))))
	return errnoErr(e)
}

func unlinkat(dirfd int, name []byte, flags int) error {
	_, _, e := unix.Syscall(unix.SYS_UNLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))), uintptr(flags))
	return errnoErr(e)
}

func renameat2(olddir int, oldname []byte, newdir int, newname []byte, flags uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_RENAMEAT2, uintptr(olddir), uintptr(unsafe.Pointer(cstr(oldname))),
		uintptr(newdir), uintptr(unsafe.Pointer(cstr(newname))), uintptr(flags), 0)
	return errnoErr(e)
}

func linkat(olddir int, oldname []byte, newdir int, newname []byte, flags int) error {
	_, _, e := unix.Syscall6(unix.SYS_LINKAT, uintptr(olddir), uintptr(unsafe.Pointer(cstr(oldname))),
		uintptr(newdir), uintptr(unsafe.Pointer(cstr(newname))), uintptr(flags), 0)
	return errnoErr(e)
}

func readlinkat(dirfd int, name []byte, buf []byte) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(len(buf)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func utimensat(dirfd int, name []byte, ts *[2]unix.Timespec, flags int) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(unsafe.Pointer(ts)), uintptr(flags), 0, 0)
	return errnoErr(e)
}

func fchownat(dirfd int, name []byte, uid, gid uint32, flags int) error {
	_, _, e := unix.Syscall6(unix.SYS_FCHOWNAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(uid), uintptr(gid), uintptr(flags), 0)
	return errnoErr(e)
}

func fchmodat(dirfd int, name []byte, mode uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_FCHMODAT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(mode), 0, 0, 0)
	return errnoErr(e)
}

func faccessat2(dirfd int, name []byte, mode uint32, flags int) error {
	_, _, e := unix.Syscall6(unix.SYS_FACCESSAT2, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(mode), uintptr(flags), 0, 0)
	return errnoErr(e)
}

// sameInode reports whether fd's file handle is fh (the same inode: for
// most filesystems its number and generation). False when fd has no handle.
func sameInode(fd int, fh *fileHandle) bool {
	var cur fileHandle
	return nameToHandle(fd, &cur) == nil && cur.equal(fh)
}

// fileHandle is struct file_handle with room for maxHandleSize bytes.
type fileHandle struct {
	bytes uint32
	typ   int32
	f     [maxHandleSize]byte
}

// equal reports whether h and o are the same file handle.
func (h *fileHandle) equal(o *fileHandle) bool {
	return h.typ == o.typ && string(h.f[:h.bytes]) == string(o.f[:o.bytes])
}

// nameToHandle is name_to_handle_at(fd, "", AT_EMPTY_PATH) into h: the
// handle of fd's own inode.
func nameToHandle(fd int, h *fileHandle) error {
	return nameToHandleAt(fd, nil, unix.AT_EMPTY_PATH, h)
}

// nameToHandleAt is name_to_handle_at(dirfd, name, flags) into h, without
// the allocations of x/sys's form (one per new inode on READDIRPLUS). With
// flags 0 it is the handle of the name itself (a symlink is not followed).
func nameToHandleAt(dirfd int, name []byte, flags int, h *fileHandle) error {
	h.bytes = maxHandleSize
	var mnt int32
	_, _, e := unix.Syscall6(unix.SYS_NAME_TO_HANDLE_AT, uintptr(dirfd), uintptr(unsafe.Pointer(cstr(name))),
		uintptr(unsafe.Pointer(h)), uintptr(unsafe.Pointer(&mnt)), uintptr(flags), 0)
	return errnoErr(e)
}

// openByHandle is open_by_handle_at(mountfd, h, flags).
func openByHandle(mountfd int, h *fileHandle, flags int) (int, error) {
	for {
		fd, _, e := unix.Syscall(unix.SYS_OPEN_BY_HANDLE_AT, uintptr(mountfd), uintptr(unsafe.Pointer(h)), uintptr(flags))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(fd), nil
	}
}
