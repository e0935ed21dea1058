package passthrough

import (
	"bytes"
	"strconv"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/journal"
)

// Extended attributes. Regular files and directories get a real fd,
// re-opened through procfs, and the f*xattr calls. Other inodes (symlinks,
// fifos, sockets, devices) cannot be opened safely (a fifo blocks, a device
// is a device), so the path form runs on /proc/self/fd/N: that magic link
// resolves to the inode itself, not to a symlink's target. In the chroot
// sandbox there is no /proc in the root: the call then runs on the
// procThread, as "N" relative to an inherited /proc/self/fd. The host's answer
// (ENOTSUP, EPERM for user.* on special files, ERANGE, ENODATA) goes back
// unchanged.

// xattrTarget is the fd or path xattr syscalls act on for in.
type xattrTarget struct {
	fd   int // >= 0: a real fd the caller closes
	path string
	// pt, when set, runs the path-form calls; path is then relative to its
	// working directory, /proc/self/fd (chroot sandbox, see procthread.go).
	pt *procThread
}

func (fs *FS) xattrTarget(in *inode) (xattrTarget, error) {
	switch in.typ {
	case unix.S_IFREG, unix.S_IFDIR:
		fd, err := fs.reopen(in.fd, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
		if err != nil {
			return xattrTarget{fd: -1}, err
		}
		return xattrTarget{fd: fd}, nil
	}
	if fs.procThread != nil {
		return xattrTarget{fd: -1, path: strconv.Itoa(in.fd), pt: fs.procThread}, nil
	}
	return xattrTarget{fd: -1, path: "/proc/self/fd/" + strconv.Itoa(in.fd)}, nil
}

// onPath runs a path-form call, on the proc thread when there is one.
func (t xattrTarget) onPath(f func() (int, error)) (n int, err error) {
	if t.pt == nil {
		return f()
	}
	t.pt.do(func() { n, err = f() })
	return n, err
}

func (t xattrTarget) close() {
	if t.fd >= 0 {
		unix.Close(t.fd)
	}
}

func (t xattrTarget) get(name string, dst []byte) (int, error) {
	if t.fd >= 0 {
		return unix.Fgetxattr(t.fd, name, dst)
	}
	return t.onPath(func() (int, error) { return unix.Getxattr(t.path, name, dst) })
}

func (t xattrTarget) list(dst []byte) (int, error) {
	if t.fd >= 0 {
		return unix.Flistxattr(t.fd, dst)
	}
	return t.onPath(func() (int, error) { return unix.Listxattr(t.path, dst) })
}

func (t xattrTarget) set(name string, val []byte, flags int) error {
	if t.fd >= 0 {
		return unix.Fsetxattr(t.fd, name, val, flags)
	}
	_, err := t.onPath(func() (int, error) { return 0, unix.Setxattr(t.path, name, val, flags) })
	return err
}

func (t xattrTarget) remove(name string) error {
	if t.fd >= 0 {
		return unix.Fremovexattr(t.fd, name)
	}
	_, err := t.onPath(func() (int, error) { return 0, unix.Removexattr(t.path, name) })
	return err
}

// xattrName takes a NUL-terminated attribute name off b.
func xattrName(b []byte) (string, []byte, unix.Errno) {
	name, rest, ok := fuse.CString(b)
	switch {
	case !ok || len(name) == 0:
		return "", nil, unix.EINVAL
	case len(name) > fuse.XattrNameMax:
		return "", nil, unix.ERANGE
	}
	return string(name), rest, 0
}

// withXattr pins the inode and opens its xattr target for fn.
func (fs *FS) withXattr(req *fuse.Request, rep *fuse.Reply, fn func(t xattrTarget, in *inode)) {
	if !fs.opts.Xattr {
		rep.Error(unix.ENOSYS)
		return
	}
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	t, err := fs.xattrTarget(in)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	defer t.close()
	fn(t, in)
}

// replySized answers GETXATTR/LISTXATTR: with size 0 the guest asks only
// for the length; else the value, or ERANGE when it is longer than size.
func (fs *FS) replySized(rep *fuse.Reply, size uint32, call func(dst []byte) (int, error)) {
	if size == 0 {
		n, err := call(nil)
		if err != nil {
			rep.Error(errno(err))
			return
		}
		out := fuse.GetxattrOut{Size: uint32(n)}
		rep.Ok(fuse.Bytes(&out))
		return
	}
	s := fs.getScratch()
	defer fs.putScratch(s)
	n, err := call(s.buf[:min(int(size), fuse.XattrSizeMax)])
	if err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok(s.buf[:n])
}

func (fs *FS) opGetxattr(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var g fuse.GetxattrIn
	rest, _ := fuse.Parse(arg, &g)
	name, _, eno := xattrName(rest)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	fs.withXattr(req, rep, func(t xattrTarget, _ *inode) {
		fs.replySized(rep, g.Size, func(dst []byte) (int, error) { return t.get(name, dst) })
	})
}

func (fs *FS) opListxattr(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var g fuse.GetxattrIn
	fuse.Parse(arg, &g)
	fs.withXattr(req, rep, func(t xattrTarget, _ *inode) {
		fs.replySized(rep, g.Size, t.list)
	})
}

func (fs *FS) opSetxattr(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	// SETXATTR_EXT widens fuse_setxattr_in from 8 to 16 bytes.
	var s fuse.SetxattrIn
	fixed := fuse.SetxattrInCompat
	if fs.has(fuse.FlagSetxattrExt) {
		fixed = fuse.SetxattrInSize
	}
	if len(arg) < fixed || !fuse.ParsePrefix(arg[:fixed], &s, fixed) {
		rep.Error(unix.EINVAL)
		return
	}
	name, rest, eno := xattrName(arg[fixed:])
	if eno != 0 {
		rep.Error(eno)
		return
	}
	switch {
	case s.Size > fuse.XattrSizeMax:
		rep.Error(unix.E2BIG)
		return
	case uint64(len(rest)) < uint64(s.Size):
		rep.Error(unix.EINVAL)
		return
	case s.Flags&^(unix.XATTR_CREATE|unix.XATTR_REPLACE) != 0:
		rep.Error(unix.EINVAL)
		return
	}
	val := rest[:s.Size]
	fs.withXattr(req, rep, func(t xattrTarget, in *inode) {
		var pre [journal.PreWords]uint64
		x.begin(&pre)
		err := t.set(name, val, int(s.Flags))
		crash(cpSyscall)
		if err == unix.EEXIST && x.res != nil && s.Flags&unix.XATTR_CREATE != 0 {
			// The xcreate rule: the value we set before the crash is ours.
			b := fs.getScratch()
			n, gerr := t.get(name, b.buf[:fuse.XattrSizeMax])
			if gerr == nil && bytes.Equal(b.buf[:n], val) {
				err = nil
			}
			fs.putScratch(b)
		}
		if err != nil {
			x.fail(rep, errno(err))
			return
		}
		if s.SetxattrFlags&fuse.SetxattrACLKillSgid != 0 && name == "system.posix_acl_access" {
			if eno := fs.clearSgid(in.fd); eno != 0 {
				x.fail(rep, eno)
				return
			}
		}
		x.ok(rep, nil, nil)
	})
}

// clearSgid drops S_ISGID (an ACL change by a user outside the group).
func (fs *FS) clearSgid(fd int) unix.Errno {
	var st unix.Statx_t
	if err := statxFd(fd, &st); err != nil {
		return errno(err)
	}
	if st.Mode&unix.S_ISGID == 0 || uint32(st.Mode)&unix.S_IFMT == unix.S_IFLNK {
		return 0
	}
	var b [24]byte
	if err := fchmodat(fs.procfd, fdName(b[:], fd), uint32(st.Mode)&07777&^unix.S_ISGID); err != nil {
		return errno(err)
	}
	return 0
}

func (fs *FS) opRemovexattr(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	name, _, eno := xattrName(arg)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	fs.withXattr(req, rep, func(t xattrTarget, _ *inode) {
		var pre [journal.PreWords]uint64
		x.begin(&pre)
		err := t.remove(name)
		crash(cpSyscall)
		if err == unix.ENODATA && x.res != nil {
			err = nil // the xremove rule: removed before the crash
		}
		if err != nil {
			x.fail(rep, errno(err))
			return
		}
		x.ok(rep, nil, nil)
	})
}
