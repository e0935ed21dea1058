package passthrough

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
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

func (fs *FS) opOpen(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	switch in.typ {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		rep.Error(unix.EISDIR)
		return
	case unix.S_IFLNK:
		rep.Error(unix.ELOOP) // never open a symlink's target
		return
	default:
		// Devices and fifos are opened by the guest kernel itself; a guest
		// asking us to open one on the host is refused.
		rep.Error(unix.ENXIO)
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
	fh, eno := fs.newHandle(fd, req.NodeID, flags, false)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.fileFlags}
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opCreate(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	fs.createFile(req, rep, name, flags|unix.O_CREAT, createMode(unix.S_IFREG|c.Mode&07777, c.Umask))
}

// opTmpfile creates an unnamed file in the directory (O_TMPFILE). The name
// the guest sends is a placeholder and ignored.
func (fs *FS) opTmpfile(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	fs.createFile(req, rep, dotName[:1], flags|unix.O_TMPFILE, createMode(c.Mode&07777, c.Umask))
}

var dotName = [2]byte{'.', 0}

func (fs *FS) createFile(req *fuse.Request, rep *fuse.Reply, name []byte, flags int, mode uint32) {
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
	fd, err := openat(p.fd, name, flags, mode&07777)
	fs.asSelf()
	if err != nil {
		rep.Error(errno(err))
		return
	}
	var e fuse.EntryOut
	if eno := fs.adoptOpen(fd, &e); eno != 0 {
		unix.Close(fd)
		rep.Error(eno)
		return
	}
	fh, eno := fs.newHandle(fd, e.NodeID, flags&^(unix.O_CREAT|unix.O_TMPFILE|unix.O_EXCL|unix.O_TRUNC), false)
	if eno != 0 {
		fs.forget(e.NodeID, 1) // the guest never learns of this reference
		rep.Error(eno)
		return
	}
	out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.fileFlags}
	rep.Ok(fuse.Bytes(&e), fuse.Bytes(&out))
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

func (fs *FS) opRead(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	rep.ReadFile(h.fd, int64(in.Offset), int(in.Size))
	h.unpin()
}

func (fs *FS) opWrite(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.WriteIn
	fuse.Parse(arg, &in)
	if in.Offset > fuse.OffsetMax || int(in.Size) != req.Data.Len() {
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
	if h.flags&unix.O_APPEND != 0 {
		off = -1 // append at the end, whatever the guest's idea of it
	}
	s := fs.getScratch()
	n, iov, err := fuse.WriteFile(h.fd, req.Data, off, s.iov)
	s.iov = iov[:0]
	fs.putScratch(s)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	if in.WriteFlags&fuse.WriteKillSuidgid != 0 {
		if eno := fs.killSuidgid(h.fd); eno != 0 {
			rep.Error(eno)
			return
		}
	}
	out := fuse.WriteOut{Size: uint32(n)}
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opFlush(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.FlushIn
	fuse.Parse(arg, &in)
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
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

func (fs *FS) opRelease(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.release(rep, arg, false)
}

func (fs *FS) opReleasedir(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.release(rep, arg, true)
}

func (fs *FS) release(rep *fuse.Reply, arg []byte, dir bool) {
	var in fuse.ReleaseIn
	fuse.Parse(arg, &in)
	h, eno := fs.getHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	isDir := h.dir != nil
	h.unpin()
	if isDir != dir {
		rep.Error(unix.EBADF)
		return
	}
	if h, eno = fs.removeHandle(in.Fh); eno != 0 {
		rep.Error(eno)
		return
	}
	if in.ReleaseFlags&fuse.ReleaseFlockUnlock != 0 {
		unix.Flock(h.fd, unix.LOCK_UN)
	}
	h.unpin() // closes the fd once no other request uses it
	rep.Ok()
}

func (fs *FS) opFsync(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.fsync(rep, arg, false)
}

func (fs *FS) opFsyncdir(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opFallocate(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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
	if err := unix.Fallocate(h.fd, in.Mode, int64(in.Offset), int64(in.Length)); err != nil {
		rep.Error(errno(err))
		return
	}
	rep.Ok()
}

func (fs *FS) opLseek(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opCopyFileRange(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opSyncfs(req *fuse.Request, rep *fuse.Reply, arg []byte) {
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

func (fs *FS) opOpendir(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	in, eno := fs.getDir(req.NodeID)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer in.unpin()
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	fd, err := openat(in.fd, dotName[:1], flags, 0)
	if err != nil {
		rep.Error(errno(err))
		return
	}
	fh, eno := fs.newHandle(fd, req.NodeID, flags, true)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	out := fuse.OpenOut{Fh: fh, OpenFlags: fs.policy.dirFlags}
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opReaddir(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.readdir(rep, arg, false)
}

func (fs *FS) opReaddirplus(req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.readdir(rep, arg, true)
}

// readdir answers READDIR(PLUS). Offsets are the host's getdents d_off
// cookies: each call seeks to the guest's offset and reads from there, so a
// reply that ends early loses nothing. READDIRPLUS looks each emitted entry
// up (one guest reference each), except "." and "..", which carry nodeid 0
// (no reference, the guest does not instantiate them); an entry that
// vanished between getdents and lookup also goes out with nodeid 0.
func (fs *FS) readdir(rep *fuse.Reply, arg []byte, plus bool) {
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
	if _, err := unix.Seek(h.fd, int64(in.Offset), unix.SEEK_SET); err != nil {
		rep.Error(errno(err))
		return
	}
	n := 0
	full := false
	for !full {
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
		for p := 0; p < m; {
			ino, off, typ, name, reclen, ok := parseDirent64(dents[p:m])
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
				if isDots(name) || fs.lookupAt(h.fd, name, &e) != 0 {
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
			p += reclen
		}
	}
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
