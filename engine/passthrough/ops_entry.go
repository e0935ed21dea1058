package passthrough

import (
	"bytes"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// component takes one NUL-terminated path component off b: not empty, at
// most NAME_MAX bytes, no '/', not "." or "..". The NUL must be present;
// bytes after it are returned as rest.
func component(b []byte) (name, rest []byte, e unix.Errno) {
	name, rest, e = rawComponent(b)
	if e == 0 && isDots(name) {
		return nil, nil, unix.EINVAL
	}
	return name, rest, e
}

// rawComponent is component allowing "." and "..".
func rawComponent(b []byte) (name, rest []byte, e unix.Errno) {
	name, rest, ok := fuse.CString(b)
	switch {
	case !ok || len(name) == 0:
		return nil, nil, unix.EINVAL
	case len(name) > fuse.NameMax:
		return nil, nil, unix.ENAMETOOLONG
	case bytes.IndexByte(name, '/') >= 0:
		return nil, nil, unix.EINVAL
	}
	return name, rest, 0
}

func isDots(n []byte) bool {
	return len(n) == 1 && n[0] == '.' || len(n) == 2 && n[0] == '.' && n[1] == '.'
}

func (fs *FS) replyEntry(rep *fuse.Reply, e *fuse.EntryOut) {
	rep.Ok(fuse.Bytes(e))
}

func (fs *FS) opLookup(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	name, _, eno := rawComponent(arg)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	self := len(name) == 1 && name[0] == '.'
	var p *inode
	if self {
		// The guest's NFS export support looks up "." on any nodeid,
		// directories and files alike, to revalidate a file handle.
		p, eno = fs.getInode(req.NodeID)
	} else {
		p, eno = fs.getDir(req.NodeID)
	}
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	var e fuse.EntryOut
	switch {
	case self, isDots(name) && p == fs.root:
		// ".." of the root is the root: the guest never leaves the
		// shared directory.
		eno = fs.entryOf(p, &e)
	default:
		eno = fs.lookupAt(p.fd, name, &e)
	}
	if eno != 0 {
		rep.Error(eno)
		return
	}
	fs.replyEntry(rep, &e)
}

func (fs *FS) opForget(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.ForgetIn
	fuse.Parse(arg, &in)
	fs.forget(req.NodeID, in.Nlookup)
	rep.NoReply()
}

func (fs *FS) opBatchForget(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.BatchForgetIn
	rest, _ := fuse.Parse(arg, &in)
	var one fuse.ForgetOne
	for i := uint32(0); i < in.Count; i++ {
		var ok bool
		if rest, ok = fuse.Parse(rest, &one); !ok {
			break // count larger than the entries sent: do what is there
		}
		fs.forget(one.NodeID, one.Nlookup)
	}
	rep.NoReply()
}

func (fs *FS) opGetattr(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	fs.replyAttr(rep, in.fd)
}

func (fs *FS) replyAttr(rep *fuse.Reply, fd int) {
	var st unix.Statx_t
	if err := statxFd(fd, &st); err != nil {
		rep.Error(errno(err))
		return
	}
	out := fuse.AttrOut{AttrValid: fs.policy.ttl}
	fillAttr(&out.Attr, &st)
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opSetattr(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var a fuse.SetattrIn
	fuse.Parse(arg, &a)
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	// fd: a real fd when the guest named an open file, else -1 (use the
	// inode's O_PATH fd and procfs).
	fd := -1
	if a.Valid&fuse.FattrFH != 0 {
		h, eno := fs.getHandle(a.Fh)
		if eno != 0 {
			rep.Error(eno)
			return
		}
		defer h.unpin()
		if h.dir != nil {
			rep.Error(unix.EBADF)
			return
		}
		fd = h.fd
	}
	if eno := fs.setattr(in, fd, &a); eno != 0 {
		rep.Error(eno)
		return
	}
	fs.replyAttr(rep, in.fd)
}

func (fs *FS) setattr(in *inode, fd int, a *fuse.SetattrIn) unix.Errno {
	if a.Valid&fuse.FattrMode != 0 {
		var err error
		switch {
		case fd >= 0:
			err = unix.Fchmod(fd, a.Mode&07777)
		case in.typ == unix.S_IFLNK:
			err = unix.EOPNOTSUPP // Linux has no mode on symlinks
		default:
			var b [24]byte
			err = fchmodat(fs.procfd, fdName(b[:], in.fd), a.Mode&07777)
		}
		if err != nil {
			return errno(err)
		}
	}
	if a.Valid&(fuse.FattrUID|fuse.FattrGID) != 0 {
		uid, gid := ^uint32(0), ^uint32(0)
		if a.Valid&fuse.FattrUID != 0 {
			uid = a.UID
		}
		if a.Valid&fuse.FattrGID != 0 {
			gid = a.GID
		}
		if err := fchownat(in.fd, nil, uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errno(err)
		}
	}
	if a.Valid&fuse.FattrSize != 0 {
		if a.Size > fuse.OffsetMax {
			return unix.EINVAL
		}
		tfd := fd
		if tfd < 0 {
			switch in.typ {
			case unix.S_IFREG:
			case unix.S_IFDIR:
				return unix.EISDIR
			default:
				return unix.EINVAL
			}
			var err error
			if tfd, err = fs.reopen(in.fd, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
				return errno(err)
			}
			defer unix.Close(tfd)
		}
		if err := unix.Ftruncate(tfd, int64(a.Size)); err != nil {
			return errno(err)
		}
		if a.Valid&fuse.FattrKillSuidgid != 0 {
			if eno := fs.killSuidgid(in.fd); eno != 0 {
				return eno
			}
		}
	}
	if a.Valid&(fuse.FattrAtime|fuse.FattrMtime) != 0 {
		ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if a.Valid&fuse.FattrAtime != 0 {
			ts[0] = stamp(a.Atime, a.Atimensec, a.Valid&fuse.FattrAtimeNow != 0)
		}
		if a.Valid&fuse.FattrMtime != 0 {
			ts[1] = stamp(a.Mtime, a.Mtimensec, a.Valid&fuse.FattrMtimeNow != 0)
		}
		if ts[0].Nsec != unix.UTIME_OMIT && ts[0].Nsec != unix.UTIME_NOW && (ts[0].Nsec < 0 || ts[0].Nsec >= 1e9) ||
			ts[1].Nsec != unix.UTIME_OMIT && ts[1].Nsec != unix.UTIME_NOW && (ts[1].Nsec < 0 || ts[1].Nsec >= 1e9) {
			return unix.EINVAL
		}
		tfd := in.fd
		if fd >= 0 {
			tfd = fd
		}
		if err := utimensat(tfd, nil, &ts, unix.AT_EMPTY_PATH); err != nil {
			return errno(err)
		}
	}
	return 0
}

func stamp(sec uint64, nsec uint32, now bool) unix.Timespec {
	if now {
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	return unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
}

// killSuidgid clears S_ISUID, and S_ISGID when group-executable (otherwise
// it marks mandatory locking), as the kernel does on write by non-owners.
// fd may be O_PATH: the chmod goes through procfs.
func (fs *FS) killSuidgid(fd int) unix.Errno {
	var st unix.Statx_t
	if err := statxFd(fd, &st); err != nil {
		return errno(err)
	}
	mode := uint32(st.Mode)
	kill := uint32(unix.S_ISUID)
	if mode&unix.S_IXGRP != 0 {
		kill |= unix.S_ISGID
	}
	if mode&kill == 0 || mode&unix.S_IFMT != unix.S_IFREG {
		return 0
	}
	var b [24]byte
	if err := fchmodat(fs.procfd, fdName(b[:], fd), mode&07777&^kill); err != nil {
		return errno(err)
	}
	return 0
}

func (fs *FS) opStatx(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var sx fuse.StatxIn
	fuse.Parse(arg, &sx)
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	var st unix.Statx_t
	flags := unix.AT_EMPTY_PATH | unix.AT_SYMLINK_NOFOLLOW | int(sx.SxFlags&(unix.AT_STATX_FORCE_SYNC|unix.AT_STATX_DONT_SYNC))
	mask := int(sx.SxMask) | unix.STATX_BASIC_STATS
	if err := statxAt(in.fd, nil, flags, mask&^unix.STATX__RESERVED, &st); err != nil {
		rep.Error(errno(err))
		return
	}
	out := fuse.StatxOut{AttrValid: fs.policy.ttl}
	s := &out.Stat
	s.Mask = st.Mask
	s.Blksize = st.Blksize
	s.Attributes = st.Attributes
	s.Nlink = st.Nlink
	s.UID = st.Uid
	s.GID = st.Gid
	s.Mode = st.Mode
	s.Ino = st.Ino
	s.Size = st.Size
	s.Blocks = st.Blocks
	s.AttributesMask = st.Attributes_mask
	s.Atime = fuse.SxTime{Sec: st.Atime.Sec, Nsec: st.Atime.Nsec}
	s.Btime = fuse.SxTime{Sec: st.Btime.Sec, Nsec: st.Btime.Nsec}
	s.Ctime = fuse.SxTime{Sec: st.Ctime.Sec, Nsec: st.Ctime.Nsec}
	s.Mtime = fuse.SxTime{Sec: st.Mtime.Sec, Nsec: st.Mtime.Nsec}
	s.RdevMajor, s.RdevMinor = st.Rdev_major, st.Rdev_minor
	s.DevMajor, s.DevMinor = st.Dev_major, st.Dev_minor
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opReadlink(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	if in.typ != unix.S_IFLNK {
		rep.Error(unix.EINVAL)
		return
	}
	s := fs.getScratch()
	defer fs.putScratch(s)
	n, err := readlinkat(in.fd, nil, s.buf[:fuse.PathMax])
	if err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok(s.buf[:n])
}

// createMode is the host mode for a new file: the guest's permission bits
// with its umask applied (FUSE_DONT_MASK leaves that to us; without it the
// guest already did, and masking twice changes nothing).
func createMode(mode, umask uint32) uint32 {
	return mode&unix.S_IFMT | mode&07777&^(umask&0777)
}

// created answers a MKNOD/MKDIR/SYMLINK/LINK: looks the new name up.
func (fs *FS) created(rep *fuse.Reply, dirfd int, name []byte) {
	var e fuse.EntryOut
	if eno := fs.lookupAt(dirfd, name, &e); eno != 0 {
		rep.Error(eno)
		return
	}
	fs.replyEntry(rep, &e)
}

func (fs *FS) opSymlink(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	name, rest, eno := component(arg)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	target, _, ok := fuse.CString(rest)
	switch {
	case !ok:
		rep.Error(unix.EINVAL)
		return
	case len(target) == 0:
		rep.Error(unix.ENOENT)
		return
	case len(target) >= fuse.PathMax:
		rep.Error(unix.ENAMETOOLONG)
		return
	}
	p, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	if err := fs.asUser(req.UID, req.GID); err != nil {
		rep.Error(errno(err))
		return
	}
	err := symlinkat(target, p.fd, name)
	fs.asSelf()
	if err != nil {
		rep.Error(errno(err))
		return
	}
	fs.created(rep, p.fd, name)
}

func (fs *FS) opMknod(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.MknodIn
	rest, _ := fuse.Parse(arg, &in)
	name, _, eno := component(rest)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	switch in.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFCHR, unix.S_IFBLK:
	default:
		rep.Error(unix.EINVAL)
		return
	}
	p, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	major, minor := fuse.DecodeDev(in.Rdev)
	if err := fs.asUser(req.UID, req.GID); err != nil {
		rep.Error(errno(err))
		return
	}
	err := mknodat(p.fd, name, createMode(in.Mode, in.Umask), unix.Mkdev(major, minor))
	fs.asSelf()
	if err != nil {
		rep.Error(errno(err))
		return
	}
	fs.created(rep, p.fd, name)
}

func (fs *FS) opMkdir(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.MkdirIn
	rest, _ := fuse.Parse(arg, &in)
	name, _, eno := component(rest)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	p, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	if err := fs.asUser(req.UID, req.GID); err != nil {
		rep.Error(errno(err))
		return
	}
	err := mkdirat(p.fd, name, createMode(in.Mode&07777, in.Umask))
	fs.asSelf()
	if err != nil {
		rep.Error(errno(err))
		return
	}
	fs.created(rep, p.fd, name)
}

func (fs *FS) opUnlink(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.remove(req, rep, arg, 0)
}

func (fs *FS) opRmdir(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.remove(req, rep, arg, unix.AT_REMOVEDIR)
}

func (fs *FS) remove(req *fuse.Request, rep *fuse.Reply, arg []byte, flags int) {
	name, _, eno := component(arg)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	p, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	if err := unlinkat(p.fd, name, flags); err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}

func (fs *FS) opRename(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.RenameIn
	rest, _ := fuse.Parse(arg, &in)
	fs.rename(req, rep, in.Newdir, 0, rest)
}

func (fs *FS) opRename2(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.Rename2In
	rest, _ := fuse.Parse(arg, &in)
	if in.Flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE|unix.RENAME_WHITEOUT) != 0 {
		rep.Error(unix.EINVAL)
		return
	}
	fs.rename(req, rep, in.Newdir, in.Flags, rest)
}

func (fs *FS) rename(req *fuse.Request, rep *fuse.Reply, newdir uint64, flags uint32, names []byte) {
	oldname, rest, eno := component(names)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	newname, _, eno := component(rest)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	op, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer op.unpin()
	np, eno := fs.getDir(newdir)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer np.unpin()
	if err := renameat2(op.fd, oldname, np.fd, newname, flags); err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}

func (fs *FS) opLink(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.LinkIn
	rest, _ := fuse.Parse(arg, &in)
	name, _, eno := component(rest)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	old, eno := fs.getInode(in.Oldnodeid)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer old.unpin()
	p, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	if err := linkat(old.fd, nil, p.fd, name, unix.AT_EMPTY_PATH); err != nil {
		rep.Error(errno(err))
		return
	}
	var e fuse.EntryOut
	if eno := fs.entryOf(old, &e); eno != 0 {
		rep.Error(eno)
		return
	}
	fs.replyEntry(rep, &e)
}

func (fs *FS) opStatfs(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	var st unix.Statfs_t
	if err := unix.Fstatfs(in.fd, &st); err != nil {
		rep.Error(errno(err))
		return
	}
	out := fuse.Kstatfs{
		Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree,
		Bsize: uint32(st.Bsize), Namelen: uint32(st.Namelen), Frsize: uint32(st.Frsize),
	}
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opAccess(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var a fuse.AccessIn
	fuse.Parse(arg, &a)
	if a.Mask&^(unix.R_OK|unix.W_OK|unix.X_OK) != 0 {
		rep.Error(unix.EINVAL)
		return
	}
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	if err := fs.asUser(req.UID, req.GID); err != nil {
		rep.Error(errno(err))
		return
	}
	// AT_EACCESS: check with the thread's fs credentials, not the real ids.
	err := faccessat2(in.fd, nil, a.Mask, unix.AT_EMPTY_PATH|unix.AT_EACCESS|unix.AT_SYMLINK_NOFOLLOW)
	fs.asSelf()
	if err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}
