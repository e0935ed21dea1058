package passthrough

import (
	"bytes"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/journal"
	"vfsd/maptable"
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

func (fs *FS) opLookup(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	var e fuse.EntryOut
	switch {
	case self, isDots(name) && p == fs.root:
		// ".." of the root is the root: the guest never leaves the
		// shared directory.
		eno = fs.entryOf(&x, p, &e)
	default:
		eno = fs.lookupAt(&x, p.fd, name, &e)
	}
	if eno != 0 {
		x.fail(rep, eno)
		return
	}
	x.ok(rep, fuse.Bytes(&e), nil)
}

func (fs *FS) opForget(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.ForgetIn
	fuse.Parse(arg, &in)
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	fs.forget(&x, req.NodeID, in.Nlookup, 0)
	x.finish(0, nil, nil)
	rep.NoReply()
}

func (fs *FS) opBatchForget(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.BatchForgetIn
	rest, _ := fuse.Parse(arg, &in)
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	var one fuse.ForgetOne
	for i := uint32(0); i < in.Count; i++ {
		var ok bool
		if rest, ok = fuse.Parse(rest, &one); !ok {
			break // count larger than the entries sent: do what is there
		}
		x.progress(i)
		fs.forget(&x, one.NodeID, one.Nlookup, i)
	}
	x.finish(0, nil, nil)
	rep.NoReply()
}

func (fs *FS) opGetattr(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opSetattr(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opStatx(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opReadlink(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

// created answers a MKNOD/MKDIR/SYMLINK: looks the new name up.
func (fs *FS) created(x *txn, rep *fuse.Reply, dirfd int, name []byte) {
	var e fuse.EntryOut
	if eno := fs.lookupAt(x, dirfd, name, &e); eno != 0 {
		x.fail(rep, eno)
		return
	}
	x.ok(rep, fuse.Bytes(&e), nil)
}

// coarseNow is the time file timestamps are taken from (the coarse
// realtime clock), in nanoseconds: an inode created after it has a birth
// time not before it.
func coarseNow() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &ts) != nil {
		return 0
	}
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec)
}

// ownEntry is the make rule's EEXIST test: name in dirfd is the entry the
// crashed run of this request created when it was born at or after start,
// belongs to uid, has type typ and, for symlinks, target, for devices rdev.
func (fs *FS) ownEntry(dirfd int, name []byte, start uint64, uid, typ uint32, target []byte, rdev uint64) bool {
	var st unix.Statx_t
	if statxAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, statxMask|unix.STATX_BTIME, &st) != nil {
		return false
	}
	if uint32(st.Mode)&unix.S_IFMT != typ || st.Uid != uid {
		return false
	}
	t := st.Ctime
	if st.Mask&unix.STATX_BTIME != 0 {
		t = st.Btime
	}
	if t.Sec < 0 || uint64(t.Sec)*1e9+uint64(t.Nsec) < start {
		return false
	}
	switch typ {
	case unix.S_IFLNK:
		s := fs.getScratch()
		defer fs.putScratch(s)
		n, err := readlinkat(dirfd, name, s.buf[:fuse.PathMax])
		return err == nil && bytes.Equal(s.buf[:n], target)
	case unix.S_IFCHR, unix.S_IFBLK:
		return unix.Mkdev(st.Rdev_major, st.Rdev_minor) == rdev
	}
	return true
}

// makeNode runs a MKNOD/MKDIR/SYMLINK (mk) under the make rule and answers
// the new entry.
func (fs *FS) makeNode(x *txn, req *fuse.Request, rep *fuse.Reply, p *inode, name []byte, typ uint32,
	target []byte, rdev uint64, mk func() error) {
	var pre [journal.PreWords]uint64
	pre[0] = coarseNow()
	x.begin(&pre)
	sg, err := fs.asCreator(req)
	if err != nil {
		x.fail(rep, errno(err))
		return
	}
	err = mk()
	fs.asSelfCreator(sg)
	crash(cpSyscall)
	if err == unix.EEXIST && x.res != nil && fs.ownEntry(p.fd, name, pre[0], req.UID, typ, target, rdev) {
		err = nil // ours, made before the crash
	}
	if err != nil {
		x.fail(rep, errno(err))
		return
	}
	fs.created(x, rep, p.fd, name)
}

func (fs *FS) opSymlink(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	fs.makeNode(&x, req, rep, p, name, unix.S_IFLNK, target, 0, func() error { return symlinkat(target, p.fd, name) })
}

func (fs *FS) opMknod(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	dev := unix.Mkdev(major, minor)
	fs.makeNode(&x, req, rep, p, name, in.Mode&unix.S_IFMT, nil, dev, func() error {
		return mknodat(p.fd, name, createMode(in.Mode, in.Umask), dev)
	})
}

func (fs *FS) opMkdir(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	fs.makeNode(&x, req, rep, p, name, unix.S_IFDIR, nil, 0, func() error {
		return mkdirat(p.fd, name, createMode(in.Mode&07777, in.Umask))
	})
}

func (fs *FS) opUnlink(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.remove(&x, req, rep, arg, 0)
}

func (fs *FS) opRmdir(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.remove(&x, req, rep, arg, unix.AT_REMOVEDIR)
}

// keyWords puts k into three pre-state words.
func keyWords(w []uint64, k maptable.Key) { copy(w, k[:]) }

func wordsKey(w []uint64) maptable.Key { return maptable.Key{w[0], w[1], w[2]} }

// remove runs UNLINK/RMDIR under the remove rule.
func (fs *FS) remove(x *txn, req *fuse.Request, rep *fuse.Reply, arg []byte, flags int) {
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
	// pre: the target's key (words 0-2), word 3 = 1 when it existed.
	var pre [journal.PreWords]uint64
	var st unix.Statx_t
	found := statxAt(p.fd, name, unix.AT_SYMLINK_NOFOLLOW, statxMask, &st) == nil
	if found {
		keyWords(pre[:], keyOf(&st))
		pre[3] = 1
	}
	x.begin(&pre)
	if x.res != nil && pre[3] == 1 {
		// Started: the name gone, or holding another inode, means our
		// unlink happened (never remove a newer file).
		if !found || keyOf(&st) != wordsKey(pre[:]) {
			x.ok(rep, nil, nil)
			return
		}
	}
	if found {
		// The guest may still use the inode after its last link goes: keep
		// its fd in the store first (a handle cannot reopen it).
		fs.keepIfLastLink(&st)
	}
	err := unlinkat(p.fd, name, flags)
	crash(cpSyscall)
	if err != nil {
		x.fail(rep, errno(err))
		return
	}
	x.ok(rep, nil, nil)
}

func (fs *FS) opRename(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.RenameIn
	rest, _ := fuse.Parse(arg, &in)
	fs.rename(&x, req, rep, in.Newdir, 0, rest)
}

func (fs *FS) opRename2(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.Rename2In
	rest, _ := fuse.Parse(arg, &in)
	if in.Flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE|unix.RENAME_WHITEOUT) != 0 {
		rep.Error(unix.EINVAL)
		return
	}
	fs.rename(&x, req, rep, in.Newdir, in.Flags, rest)
}

// rename runs RENAME/RENAME2 under the rename rule.
func (fs *FS) rename(x *txn, req *fuse.Request, rep *fuse.Reply, newdir uint64, flags uint32, names []byte) {
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
	// pre: source key (words 0-2), destination key (3-5), word 6: bit 0
	// source existed, bit 1 destination existed.
	var pre [journal.PreWords]uint64
	var ss, ds unix.Statx_t
	srcOK := statxAt(op.fd, oldname, unix.AT_SYMLINK_NOFOLLOW, statxMask, &ss) == nil
	dstOK := statxAt(np.fd, newname, unix.AT_SYMLINK_NOFOLLOW, statxMask, &ds) == nil
	if srcOK {
		keyWords(pre[0:], keyOf(&ss))
		pre[6] |= 1
	}
	if dstOK {
		keyWords(pre[3:], keyOf(&ds))
		pre[6] |= 2
	}
	x.begin(&pre)
	if x.res != nil && pre[6]&1 != 0 {
		src, dst := wordsKey(pre[0:]), wordsKey(pre[3:])
		var applied bool
		if flags&unix.RENAME_EXCHANGE != 0 {
			applied = pre[6]&2 != 0 && srcOK && dstOK && keyOf(&ss) == dst && keyOf(&ds) == src
		} else {
			applied = dstOK && keyOf(&ds) == src && !(srcOK && keyOf(&ss) == src)
		}
		if applied {
			x.ok(rep, nil, nil)
			return
		}
	}
	if dstOK && flags&unix.RENAME_EXCHANGE == 0 {
		fs.keepIfLastLink(&ds) // replaced: its last link may go
	}
	err := renameat2(op.fd, oldname, np.fd, newname, flags)
	crash(cpSyscall)
	if err != nil {
		x.fail(rep, errno(err))
		return
	}
	x.ok(rep, nil, nil)
}

func (fs *FS) opLink(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	// pre: word 0 start time, words 1-3 the source's key.
	var pre [journal.PreWords]uint64
	pre[0] = coarseNow()
	keyWords(pre[1:], old.key)
	x.begin(&pre)
	err := linkat(old.fd, nil, p.fd, name, unix.AT_EMPTY_PATH)
	crash(cpSyscall)
	if err == unix.EEXIST && x.res != nil {
		var st unix.Statx_t
		if statxAt(p.fd, name, unix.AT_SYMLINK_NOFOLLOW, statxMask, &st) == nil && keyOf(&st) == wordsKey(pre[1:]) {
			err = nil // the name holds the source: our link
		}
	}
	if err != nil {
		x.fail(rep, errno(err))
		return
	}
	var e fuse.EntryOut
	if eno := fs.entryOf(&x, old, &e); eno != 0 {
		x.fail(rep, eno)
		return
	}
	x.ok(rep, fuse.Bytes(&e), nil)
}

func (fs *FS) opStatfs(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opAccess(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	c, err := fs.asUser(req.UID, req.GID)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	// AT_EACCESS: check with the thread's fs credentials, not the real ids.
	err = faccessat2(in.fd, nil, a.Mask, unix.AT_EMPTY_PATH|unix.AT_EACCESS|unix.AT_SYMLINK_NOFOLLOW)
	fs.asSelf(c)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}
