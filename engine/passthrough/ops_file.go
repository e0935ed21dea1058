package passthrough

import (
	"bytes"
	"encoding/binary"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/journal"
)

// openFlags turns guest open flags into host flags: only flags whose meaning
// is the file's own pass; never follow a symlink, never create (OPEN), never
// an O_PATH or O_TMPFILE smuggled in, and cloexec always.
func (fs *FS) openFlags(f uint32) (int, unix.Errno) {
	flags := int(f)
	if flags&unix.O_ACCMODE == unix.O_ACCMODE {
		return 0, unix.EINVAL
	}
	keep := unix.O_ACCMODE | unix.O_APPEND | unix.O_NONBLOCK | unix.O_DSYNC | unix.O_SYNC |
		unix.O_NOATIME | unix.O_TRUNC | unix.O_EXCL | unix.O_DIRECT
	if !fs.opts.AllowDirectIO {
		keep &^= unix.O_DIRECT
	}
	flags &= keep
	if fs.has(fuse.FlagWritebackCache) {
		// The guest page cache may read-modify-write what it caches and
		// sends writes with explicit offsets.
		if flags&unix.O_ACCMODE == unix.O_WRONLY {
			flags = flags&^unix.O_ACCMODE | unix.O_RDWR
		}
		flags &^= unix.O_APPEND
	}
	return flags | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_LARGEFILE, 0
}

func (fs *FS) opOpen(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var o fuse.OpenIn
	fuse.Parse(arg, &o)
	flags, eno := fs.openFlags(o.Flags)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	flags &^= unix.O_EXCL
	in, eno := fs.getInode(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	if fh, ok := fs.resumedHandle(&x, req); ok {
		out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.fileFlags}
		x.ok(rep, fuse.Bytes(&out), nil)
		return
	}
	if eno := openable(in.typ); eno != 0 {
		rep.Error(eno)
		return
	}
	fd, err := fs.reopen(in.fd, flags&^unix.O_NOFOLLOW) // the procfs link itself is a symlink
	if err != nil {
		rep.Error(errno(err))
		return
	}
	if flags&unix.O_TRUNC != 0 && o.OpenFlags&fuse.OpenKillSuidgid != 0 {
		if eno := fs.killSuidgid(fd); eno != 0 {
			unix.Close(fd)
			rep.Error(eno)
			return
		}
	}
	fh, eno := fs.newHandle(handleKey(&x, req.Queue, req.Head), fd, in, flags, false)
	if eno != 0 {
		x.fail(rep, eno)
		return
	}
	out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.fileFlags}
	x.ok(rep, fuse.Bytes(&out), nil)
}

// resumedHandle is the open rule: the handle the crashed run of this
// resubmitted request created, found by its key. A record whose fd never
// reached the store is re-opened from its inode (getHandle); one that
// cannot be is deleted (the open is then re-executed).
func (fs *FS) resumedHandle(x *txn, req *fuse.Request) (uint64, bool) {
	if x.res == nil {
		return 0, false
	}
	id, ok := fs.handles.Lookup(handleKey(x, req.Queue, req.Head))
	if !ok {
		return 0, false
	}
	h, eno := fs.getHandle(uint64(id))
	if eno != 0 {
		fs.hmu.Lock()
		fs.handles.Delete(id)
		fs.hmu.Unlock()
		return 0, false
	}
	h.unpin()
	return uint64(id), true
}

func (fs *FS) opCreate(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var c fuse.CreateIn
	rest, _ := fuse.Parse(arg, &c)
	name, _, eno := component(rest)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	flags, eno := fs.openFlags(c.Flags)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	fs.createFile(&x, req, rep, name, flags|unix.O_CREAT, createMode(unix.S_IFREG|c.Mode&07777, c.Umask))
}

// opTmpfile creates an unnamed file in the directory (O_TMPFILE). The name
// the guest sends is a placeholder and ignored.
func (fs *FS) opTmpfile(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var c fuse.CreateIn
	fuse.Parse(arg, &c)
	flags, eno := fs.openFlags(c.Flags)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	if flags&unix.O_ACCMODE == unix.O_RDONLY {
		rep.Error(unix.EINVAL)
		return
	}
	// O_EXCL keeps its O_TMPFILE meaning: the file can never be linked.
	fs.createFile(&x, req, rep, dotName[:1], flags|unix.O_TMPFILE, createMode(c.Mode&07777, c.Umask))
}

var dotName = [2]byte{'.', 0}

// createFile runs CREATE/TMPFILE under the create/tmpfile rules.
func (fs *FS) createFile(x *txn, req *fuse.Request, rep *fuse.Reply, name []byte, flags int, mode uint32) {
	p, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer p.unpin()
	hflags := flags &^ (unix.O_CREAT | unix.O_TMPFILE | unix.O_EXCL | unix.O_TRUNC)
	var pre [journal.PreWords]uint64
	pre[0] = coarseNow()
	x.begin(&pre)
	var e fuse.EntryOut
	if fh, ok := fs.resumedHandle(x, req); ok {
		// Created, counted and opened before the crash.
		h, eno := fs.getHandle(fh)
		if eno == 0 {
			in, eno2 := fs.getInode(h.nodeid)
			h.unpin()
			if eno = eno2; eno == 0 {
				eno = fs.entryOf(x, in, &e)
				in.unpin()
			}
		}
		if eno != 0 {
			x.fail(rep, eno)
			return
		}
		out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.fileFlags}
		x.ok(rep, fuse.Bytes(&e), fuse.Bytes(&out))
		return
	}
	fd := fs.resumedCreated(x, hflags)
	if fd < 0 {
		sg, err := fs.asCreator(req)
		if err != nil {
			x.fail(rep, errno(err))
			return
		}
		fd, err = fs.openCreate(p.fd, name, flags, mode&07777)
		fs.asSelfCreator(sg)
		crash(cpSyscall)
		if err == unix.EEXIST && x.res != nil && flags&unix.O_EXCL != 0 &&
			fs.ownEntry(p.fd, name, pre[0], req.UID, unix.S_IFREG, nil, 0) {
			// Ours (the make rule): open it without creating or truncating.
			fd, err = fs.openExisting(p.fd, name, hflags)
		}
		if err != nil {
			x.fail(rep, errno(err))
			return
		}
	}
	in, eno := fs.adoptOpen(x, fd, &e)
	if eno != 0 {
		unix.Close(fd)
		x.fail(rep, eno)
		return
	}
	fh, eno := fs.newHandle(handleKey(x, req.Queue, req.Head), fd, in, hflags, false)
	if eno != 0 {
		fs.forget(&txn{q: x.q}, e.NodeID, 1, 0) // the guest never learns of this reference
		x.fail(rep, eno)
		return
	}
	out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.fileFlags}
	x.ok(rep, fuse.Bytes(&e), fuse.Bytes(&out))
}

// openCreate is openat(dirfd, name, flags|O_CREAT, mode) that opens an
// existing name only if it is a regular file. open(2) would open whatever
// is there: a FIFO without a peer blocks the calling queue thread for good,
// and a device node would be opened on the host (OPEN refuses both, see
// opOpen). So without O_EXCL the name is created exclusively first, and if
// it exists it goes through openExisting; a name that keeps vanishing and
// reappearing between the two gets the last error. Call it as the creator.
func (fs *FS) openCreate(dirfd int, name []byte, flags int, mode uint32) (int, error) {
	if flags&unix.O_CREAT == 0 || flags&unix.O_EXCL != 0 {
		return openat(dirfd, name, flags, mode)
	}
	var err error
	for range 3 {
		var fd int
		if fd, err = openat(dirfd, name, flags|unix.O_EXCL, mode); err != unix.EEXIST {
			return fd, err
		}
		if fd, err = fs.openExisting(dirfd, name, flags&^unix.O_CREAT); err != unix.ENOENT {
			return fd, err
		}
	}
	return -1, err
}

// openExisting opens the regular file name under dirfd with flags (no
// O_CREAT), never following a symlink and never opening anything else:
// O_PATH first, which neither blocks nor runs a driver's open, then a
// reopen through procfs, which checks the caller's access as open(2) does.
func (fs *FS) openExisting(dirfd int, name []byte, flags int) (int, error) {
	var st unix.Statx_t
	pfd, eno := openPathStat(dirfd, name, &st)
	if eno != 0 {
		return -1, eno
	}
	defer unix.Close(pfd)
	if eno := openable(uint32(st.Mode) & unix.S_IFMT); eno != 0 {
		return -1, eno
	}
	return fs.reopen(pfd, flags&^(unix.O_NOFOLLOW|unix.O_EXCL))
}

// openable says whether the host may open a file of type typ for the guest:
// only a regular file. Devices and fifos are opened by the guest kernel
// itself (on the host a FIFO would block, a device reach host hardware);
// a symlink's target is never followed.
func openable(typ uint32) unix.Errno {
	switch typ {
	case unix.S_IFREG:
		return 0
	case unix.S_IFDIR:
		return unix.EISDIR
	case unix.S_IFLNK:
		return unix.ELOOP
	}
	return unix.ENXIO
}

// resumedCreated: when the crashed run of this CREATE/TMPFILE counted its
// inode (ref record) but its handle did not survive, re-open that inode
// through procfs with the handle's flags (no second file, no O_TRUNC).
// -1 when there is none: the request is re-executed.
func (fs *FS) resumedCreated(x *txn, hflags int) int {
	if x.res == nil || !x.res.RefValid {
		return -1
	}
	fs.imu.Lock()
	in, _ := fs.knownLocked(x.res.Ref.Key, -1, nil)
	if in == nil {
		// Counted but unreachable (a TMPFILE whose fd died with the
		// worker): drop that reference, the guest never got it.
		if id, ok := fs.inodes.Lookup(x.res.Ref.Key); ok {
			if rin := fs.recordOnlyLocked(id); rin != nil && x.counted(rin, rin.key) {
				rin.cnt[x.q]--
				rin.total--
				if rin.total > 0 {
					fs.inodes.Update(id, rin)
				} else {
					fs.inodes.Delete(id)
				}
			}
		}
		fs.imu.Unlock()
		return -1
	}
	if !x.counted(in, in.key) || in.typ != unix.S_IFREG || fs.openDeferredLocked(in) != 0 {
		fs.imu.Unlock()
		return -1
	}
	in.pins.Add(1)
	fs.imu.Unlock()
	defer in.unpin()
	fd, err := fs.reopen(in.fd, hflags&^unix.O_NOFOLLOW)
	if err != nil {
		return -1
	}
	return fd
}

// fileHandle pins the file handle fh; EBADF for unknown or directory handles.
func (fs *FS) fileHandle(fh uint64) (*handle, unix.Errno) {
	h, eno := fs.getHandle(fh)
	if eno != 0 {
		return nil, eno
	}
	if h.dir != nil {
		h.unpin()
		return nil, unix.EBADF
	}
	return h, 0
}

func (fs *FS) opRead(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.ReadIn
	fuse.Parse(arg, &in)
	if in.Offset > fuse.OffsetMax {
		rep.Error(unix.EINVAL)
		return
	}
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	rep.ReadFile(h.fd, int64(in.Offset), int(in.Size), h) // unpins h when read
}

func (fs *FS) opWrite(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.WriteIn
	fuse.Parse(arg, &in)
	// Never more than the max_write we announced (the guest never sends
	// more; the data stays in guest RAM either way).
	if in.Offset > fuse.OffsetMax || int(in.Size) != req.Data.Len() || in.Size > maxWrite {
		rep.Error(unix.EINVAL)
		return
	}
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	off := int64(in.Offset)
	data := req.Data
	skip := int64(0) // bytes of data a crashed run already appended
	if h.flags&unix.O_APPEND != 0 {
		off = -1 // append at the end, whatever the guest's idea of it
		// The append rule: pre = size before, length.
		var pre [journal.PreWords]uint64
		var st unix.Stat_t
		if err := unix.Fstat(h.fd, &st); err != nil {
			rep.Error(errno(err))
			return
		}
		pre[0], pre[1] = uint64(st.Size), uint64(in.Size)
		x.begin(&pre)
		if x.res != nil {
			k, done := fs.appendResume(&x, h.fd, req.Data, st.Size)
			switch {
			case done && k < 0:
				x.fail(rep, unix.EIO)
				return
			case done:
				out := fuse.WriteOut{Size: uint32(k)}
				x.ok(rep, fuse.Bytes(&out), nil)
				return
			case k > 0:
				// Complete a short write: the rest goes at the end.
				skip = k
				data = req.Data.Slice(nil, int(k), int(in.Size)-int(k))
			}
		}
	}
	s := fs.getScratch()
	n, iov, err := fuse.WriteFile(h.fd, data, off, s.iov)
	s.iov = iov[:0]
	fs.putScratch(s)
	crash(cpSyscall)
	if err != nil {
		if skip == 0 {
			x.fail(rep, errno(err))
			return
		}
		n = 0 // a short write, as the crash-free run's would have been
	}
	if in.WriteFlags&fuse.WriteKillSuidgid != 0 {
		if eno := fs.killSuidgid(h.fd); eno != 0 {
			x.fail(rep, eno)
			return
		}
	}
	out := fuse.WriteOut{Size: uint32(skip + int64(n))}
	x.ok(rep, fuse.Bytes(&out), nil)
}

// appendRefID marks the ref record of an O_APPEND WRITE completing a short
// write after a crash: Ref.Index = bytes of the data already in the file
// (contiguous from the begin record's pre-size), Ref.Pre = the offset where
// the rest is appended (the size when the completion started).
const appendRefID = 1<<63 | 0x415050454e44 // "APPEND"

// appendResume is the append rule for a resubmitted O_APPEND WRITE whose
// crashed run began; size is the file's size now. The state of the request
// is (k, at): the first k bytes of the data are in the file, the rest is to
// be appended at offset at. It starts as (0, pre) (the begin record) or
// comes from a completion ref record (appendRefID), and compares the file
// against it:
//
//   - size == at: nothing more landed. k == 0: (0, false), re-execute.
//     Else (k, false): append the rest (the ref record already says so).
//   - size == at+rest: the (rest of the) write landed: (len, true).
//   - at < size < at+rest: a short write landed (the kernel's write stopped,
//     at a page boundary say, when the worker was killed); when those bytes
//     are the next bytes of the data, k grows by them, the new state is
//     journaled in the ref record before anything is written, and (k,
//     false) asks for the rest to be appended. Otherwise (-1, true).
//   - size > at+rest: later appends by others; the write landed iff our
//     bytes are at at: (len, true), else (-1, true).
//   - size < at: truncated meanwhile; (-1, true).
//
// (-1, true) answers EIO: never write twice. The journaled state makes a
// crash during a completion resolve the same way (the bytes it appended
// are checked from at).
func (fs *FS) appendResume(x *txn, fd int, data fuse.Scatter, size int64) (int64, bool) {
	r := x.res
	pre, n := int64(r.Pre[0]), int64(r.Pre[1])
	if n != int64(data.Len()) || pre < 0 {
		return -1, true
	}
	k, at := int64(0), pre
	if r.RefValid && r.Ref.ID == appendRefID {
		k, at = int64(r.Ref.Index), int64(r.Ref.Pre)
		if k <= 0 || k >= n || at < pre+k {
			return -1, true
		}
	}
	rest := n - k
	switch {
	case size == at:
		return k, false
	case size == at+rest:
		return n, true
	case size < at:
		return -1, true
	}
	m := min(size-at, rest)
	got := make([]byte, m)
	// The handle may be write-only: read through a description of our own.
	rfd, err := fs.reopen(fd, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOATIME)
	if err == unix.EPERM {
		rfd, err = fs.reopen(fd, unix.O_RDONLY|unix.O_CLOEXEC)
	}
	if err != nil {
		return -1, true
	}
	c, err := unix.Pread(rfd, got, at)
	unix.Close(rfd)
	if err != nil || int64(c) != m {
		return -1, true
	}
	want := make([]byte, m)
	data.CopyOutAt(int(k), want)
	if !bytes.Equal(got, want) {
		return -1, true
	}
	if m == rest {
		return n, true // landed; appends by others followed
	}
	k, at = k+m, size
	if x.begun {
		x.slot.SetRef(x.gen, &journal.Ref{ID: appendRefID, Pre: uint64(at), Index: uint64(k)})
		crash(cpRef)
	}
	return k, false
}

func (fs *FS) opFlush(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.FlushIn
	fuse.Parse(arg, &in)
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	// close(2) in the guest: POSIX drops the closing process's locks on
	// the file.
	fs.dropOwnerLock(h.nodeid, in.LockOwner)
	// close(dup(fd)) gives the host filesystem its flush-on-close (NFS).
	nfd, err := unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	if err := unix.Close(nfd); err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}

func (fs *FS) opRelease(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.release(&x, rep, arg, false)
}

func (fs *FS) opReleasedir(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.release(&x, rep, arg, true)
}

// release runs RELEASE/RELEASEDIR under the release rule.
func (fs *FS) release(x *txn, rep *fuse.Reply, arg []byte, dir bool) {
	var in fuse.ReleaseIn
	fuse.Parse(arg, &in)
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	h, eno := fs.getHandle(in.Fh)
	if eno != 0 {
		fs.removeHandle(in.Fh) // after a restart: a record whose fd is lost
		if x.res != nil {
			// Released before the crash; the store's copy may remain.
			if fs.store != nil {
				fs.sq.remove(fhName(in.Fh))
			}
			x.ok(rep, nil, nil)
			return
		}
		x.fail(rep, eno)
		return
	}
	isDir := h.dir != nil
	h.unpin()
	if isDir != dir {
		x.fail(rep, unix.EBADF)
		return
	}
	if h, eno = fs.removeHandle(in.Fh); eno != 0 {
		x.fail(rep, eno)
		return
	}
	if in.ReleaseFlags&fuse.ReleaseFlockUnlock != 0 {
		unix.Flock(h.fd, unix.LOCK_UN)
		fs.dropOwnerLock(h.nodeid, in.LockOwner)
	}
	h.unpin() // closes the fd once no other request uses it
	x.ok(rep, nil, nil)
}

func (fs *FS) opFsync(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.fsync(rep, arg, false)
}

func (fs *FS) opFsyncdir(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.fsync(rep, arg, true)
}

func (fs *FS) fsync(rep *fuse.Reply, arg []byte, dir bool) {
	var in fuse.FsyncIn
	fuse.Parse(arg, &in)
	h, eno := fs.getHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	if (h.dir != nil) != dir {
		rep.Error(unix.EBADF)
		return
	}
	var err error
	if in.FsyncFlags&fuse.FsyncFdatasync != 0 {
		err = unix.Fdatasync(h.fd)
	} else {
		err = unix.Fsync(h.fd)
	}
	if err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}

func (fs *FS) opFallocate(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.FallocateIn
	fuse.Parse(arg, &in)
	if in.Offset > fuse.OffsetMax || in.Length > fuse.OffsetMax {
		rep.Error(unix.EINVAL)
		return
	}
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	if in.Mode&(unix.FALLOC_FL_COLLAPSE_RANGE|unix.FALLOC_FL_INSERT_RANGE) != 0 {
		// The shift rule: pre = size before.
		var st unix.Stat_t
		if err := unix.Fstat(h.fd, &st); err != nil {
			rep.Error(errno(err))
			return
		}
		var pre [journal.PreWords]uint64
		pre[0] = uint64(st.Size)
		x.begin(&pre)
		if x.res != nil && st.Size != int64(pre[0]) {
			want := int64(pre[0]) + int64(in.Length)
			if in.Mode&unix.FALLOC_FL_COLLAPSE_RANGE != 0 {
				want = int64(pre[0]) - int64(in.Length)
			}
			if st.Size == want {
				x.ok(rep, nil, nil)
			} else {
				x.fail(rep, unix.EIO) // changed by others too: never shift twice
			}
			return
		}
	}
	err := unix.Fallocate(h.fd, in.Mode, int64(in.Offset), int64(in.Length))
	crash(cpSyscall)
	if err != nil {
		x.fail(rep, errno(err))
		return
	}
	x.ok(rep, nil, nil)
}

func (fs *FS) opLseek(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.LseekIn
	fuse.Parse(arg, &in)
	if in.Offset > fuse.OffsetMax || in.Whence > unix.SEEK_HOLE {
		rep.Error(unix.EINVAL)
		return
	}
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	off, err := unix.Seek(h.fd, int64(in.Offset), int(in.Whence))
	if err != nil {
		rep.Error(errno(err))
		return
	}
	out := fuse.LseekOut{Offset: uint64(off)}
	rep.Ok(fuse.Bytes(&out))
}

// maxCopy bounds one COPY_FILE_RANGE: the reply's size field is 32 bits.
const maxCopy = 1 << 30

func (fs *FS) opCopyFileRange(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.CopyFileRangeIn
	fuse.Parse(arg, &in)
	if in.OffIn > fuse.OffsetMax || in.OffOut > fuse.OffsetMax || in.Flags != 0 {
		rep.Error(unix.EINVAL)
		return
	}
	src, eno := fs.fileHandle(in.FhIn)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer src.unpin()
	dst, eno := fs.fileHandle(in.FhOut)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer dst.unpin()
	offIn, offOut := int64(in.OffIn), int64(in.OffOut)
	n, err := unix.CopyFileRange(src.fd, &offIn, dst.fd, &offOut, int(min(in.Len, maxCopy)), 0)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	out := fuse.WriteOut{Size: uint32(n)}
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opSyncfs(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	in, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	fd, err := openat(in.fd, dotName[:1], unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	err = unix.Syncfs(fd)
	unix.Close(fd)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}

func (fs *FS) opOpendir(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	in, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	if fh, ok := fs.resumedHandle(&x, req); ok {
		out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.dirFlags}
		x.ok(rep, fuse.Bytes(&out), nil)
		return
	}
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	fd, err := openat(in.fd, dotName[:1], flags, 0)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	fh, eno := fs.newHandle(handleKey(&x, req.Queue, req.Head), fd, in, flags, true)
	if eno != 0 {
		x.fail(rep, eno)
		return
	}
	out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.dirFlags}
	x.ok(rep, fuse.Bytes(&out), nil)
}

func (fs *FS) opReaddir(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.readdir(&x, rep, arg, false)
}

func (fs *FS) opReaddirplus(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.readdir(&x, rep, arg, true)
}

// readdir answers READDIR(PLUS). Offsets are the host's getdents d_off
// cookies: each call seeks to the guest's offset and reads from there, so a
// reply that ends early loses nothing. READDIRPLUS looks each emitted entry
// up (one guest reference each), except "." and "..", which carry nodeid 0
// (no reference, the guest does not instantiate them); an entry that
// vanished between getdents and lookup also goes out with nodeid 0.
func (fs *FS) readdir(x *txn, rep *fuse.Reply, arg []byte, plus bool) {
	var in fuse.ReadIn
	fuse.Parse(arg, &in)
	if in.Offset > fuse.OffsetMax {
		rep.Error(unix.EINVAL)
		return
	}
	h, eno := fs.getHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	if h.dir == nil {
		rep.Error(unix.EBADF)
		return
	}
	size := min(int(in.Size), rep.PayloadRoom(), maxReaddir)
	s := fs.getScratch()
	defer fs.putScratch(s)
	if cap(s.out) < maxReaddir {
		s.out = make([]byte, maxReaddir)
	}
	out := s.out[:size]
	dents := s.buf[:getdentsBuf]

	h.dir.mu.Lock()
	defer h.dir.mu.Unlock()
	// Continue from what the last request left (the guest asks for the
	// offset where that reply stopped), else seek.
	var pending []byte
	if d := h.dir; len(d.rest) > 0 && d.next == in.Offset {
		pending = d.rest
	} else {
		fs.setDirCache(d, nil, 0)
		if _, err := unix.Seek(h.fd, int64(in.Offset), unix.SEEK_SET); err != nil {
			rep.Error(errno(err))
			return
		}
	}
	last := in.Offset
	n := 0
	full := false
	for !full {
		if len(pending) == 0 {
			m, err := unix.Getdents(h.fd, dents)
			if err != nil {
				if n == 0 {
					rep.Error(errno(err))
					return
				}
				break
			}
			if m <= 0 {
				break
			}
			pending = dents[:m]
		}
		for len(pending) > 0 {
			ino, off, typ, name, reclen, ok := parseDirent64(pending)
			if !ok {
				full = true // a record we cannot parse: stop here
				break
			}
			var w int
			if plus {
				if n+fuse.DirentplusLen(len(name)) > size {
					full = true
					break
				}
				var e fuse.EntryOut
				if isDots(name) || fs.lookupAt(x, h.fd, name, &e) != 0 {
					e = fuse.EntryOut{Attr: fuse.Attr{Ino: ino, Mode: uint32(typ) << 12}}
				}
				w = fuse.PutDirentplus(out[n:], &e, off, uint32(typ), name)
			} else {
				w = fuse.PutDirent(out[n:], ino, off, uint32(typ), name)
			}
			if w == 0 {
				full = true
				break
			}
			n += w
			last = off
			pending = pending[reclen:]
		}
	}
	if h.dead.Load() {
		pending = nil // released meanwhile: keep nothing
	}
	fs.setDirCache(h.dir, pending, last)
	rep.Ok(out[:n])
}

// parseDirent64 decodes one struct linux_dirent64 at the start of b. name is
// followed by its NUL in b (usable as a C string).
func parseDirent64(b []byte) (ino, off uint64, typ uint8, name []byte, reclen int, ok bool) {
	const hdr = 19 // d_ino, d_off, d_reclen, d_type
	if len(b) < hdr+1 {
		return
	}
	reclen = int(binary.LittleEndian.Uint16(b[16:]))
	if reclen < hdr+1 || reclen > len(b) {
		return
	}
	name, _, ok = fuse.CString(b[hdr:reclen])
	if !ok || len(name) == 0 {
		return 0, 0, 0, nil, 0, false
	}
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:]), b[18], name, reclen, true
}
