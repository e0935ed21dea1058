package fuseclient

import (
	"context"
	"fmt"
	"strings"

	"vfsd/engine/fuse"
)

// call runs r and returns the payload, or the reply's errno as error.
func (c *Client) call(ctx context.Context, r *Req, buf []byte) ([]byte, error) {
	rep, err := c.Do(ctx, r, buf)
	if err != nil {
		return nil, err
	}
	if err := rep.Err(); err != nil {
		return nil, err
	}
	return rep.Payload, nil
}

// exact decodes a payload that must be exactly n bytes (or at least min and
// at most n, for structs that grew over protocol versions).
func exact(op string, p []byte, min, n int) (*dec, error) {
	if len(p) < min || len(p) > n {
		return nil, fmt.Errorf("%w: %s reply has %d bytes, want %d", ErrProtocol, op, len(p), n)
	}
	return &dec{b: p}, nil
}

func (c *Client) entryCall(ctx context.Context, op string, r *Req) (EntryOut, error) {
	r.Out = EntryOutSize
	p, err := c.call(ctx, r, nil)
	if err != nil {
		return EntryOut{}, err
	}
	d, err := exact(op, p, EntryOutSize, EntryOutSize)
	if err != nil {
		return EntryOut{}, err
	}
	return d.entry(), d.err
}

func (c *Client) emptyCall(ctx context.Context, op string, r *Req) error {
	p, err := c.call(ctx, r, nil)
	if err != nil {
		return err
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %s reply has %d payload bytes, want 0", ErrProtocol, op, len(p))
	}
	return nil
}

// secctx returns the security-context extension (or extra argument) a Linux
// guest without an LSM sends with create-like requests once the backend
// accepted FUSE_SECURITY_CTX: a fuse_secctx_header with nr_secctx 0.
func (c *Client) secctx(r *Req) {
	s := c.Session()
	if s == nil || s.Flags&InitSecurityCtx == 0 {
		return
	}
	h := enc(nil).u32(8).u32(0)
	if s.Minor >= 38 {
		r.Ext = h
	} else {
		r.Args = append(r.Args, h)
	}
}

// Init sends FUSE_INIT as a Linux 6.1 guest does (7.38 framing, 128 KiB
// readahead) with the given flags (Linux61Flags if 0) and records the reply.
func (c *Client) Init(ctx context.Context, flags uint64) (InitOut, error) {
	if flags == 0 {
		flags = Linux61Flags
	}
	in := enc(nil).u32(7).u32(38).u32(128 << 10).u32(uint32(flags)).u32(uint32(flags >> 32))
	in = append(in, make([]byte, 11*4)...)
	p, err := c.call(ctx, &Req{Op: fuse.OpInit, Args: [][]byte{in}, Out: InitOutSize}, nil)
	if err != nil {
		return InitOut{}, err
	}
	if len(p) < 8 {
		return InitOut{}, fmt.Errorf("%w: INIT reply has %d bytes", ErrProtocol, len(p))
	}
	full := append(append([]byte(nil), p...), make([]byte, InitOutSize)...)
	d := dec{b: full}
	var o InitOut
	o.Major, o.Minor, o.MaxReadahead = d.u32(), d.u32(), d.u32()
	f1 := d.u32()
	o.MaxBackground, o.CongestionThreshold = d.u16(), d.u16()
	o.MaxWrite, o.TimeGran = d.u32(), d.u32()
	o.MaxPages, o.MapAlignment = d.u16(), d.u16()
	f2 := d.u32()
	o.Flags = uint64(f1)
	if f1&InitInitExt != 0 {
		o.Flags |= uint64(f2) << 32
	}
	if o.Major != 7 {
		return o, fmt.Errorf("%w: INIT major %d", ErrProtocol, o.Major)
	}
	if o.Minor > 38 {
		o.Minor = 38
	}
	c.core.mu.Lock()
	c.core.init = &o
	c.core.mu.Unlock()
	return o, nil
}

// Destroy sends FUSE_DESTROY.
func (c *Client) Destroy(ctx context.Context) error {
	return c.emptyCall(ctx, "DESTROY", &Req{Op: fuse.OpDestroy, NodeID: 0})
}

// Lookup looks name up in directory parent.
func (c *Client) Lookup(ctx context.Context, parent uint64, name string) (EntryOut, error) {
	return c.entryCall(ctx, "LOOKUP", &Req{Op: fuse.OpLookup, NodeID: parent, Args: [][]byte{cstr(name)}})
}

// Forget drops nlookup references to node (hiprio queue, no reply).
func (c *Client) Forget(ctx context.Context, node, nlookup uint64) error {
	_, err := c.Do(ctx, &Req{Op: fuse.OpForget, NodeID: node, Args: [][]byte{enc(nil).u64(nlookup)}, NoReply: true}, nil)
	return err
}

// BatchForget drops references to several nodes (hiprio queue, no reply).
func (c *Client) BatchForget(ctx context.Context, f []ForgetOne) error {
	e := enc(nil).u32(uint32(len(f))).u32(0)
	for _, x := range f {
		e = e.u64(x.NodeID).u64(x.Nlookup)
	}
	_, err := c.Do(ctx, &Req{Op: fuse.OpBatchForget, Args: [][]byte{e}, NoReply: true}, nil)
	return err
}

// Getattr returns node's attributes; with fh != nil it asks for the open
// file's (FUSE_GETATTR_FH).
func (c *Client) Getattr(ctx context.Context, node uint64, fh *uint64) (AttrOut, error) {
	e := enc(nil)
	if fh != nil {
		e = e.u32(GetattrFH).u32(0).u64(*fh)
	} else {
		e = e.u32(0).u32(0).u64(0)
	}
	p, err := c.call(ctx, &Req{Op: fuse.OpGetattr, NodeID: node, Args: [][]byte{e}, Out: AttrOutSize}, nil)
	if err != nil {
		return AttrOut{}, err
	}
	d, err := exact("GETATTR", p, AttrOutSize, AttrOutSize)
	if err != nil {
		return AttrOut{}, err
	}
	return d.attrOut(), d.err
}

// Setattr changes node's attributes.
func (c *Client) Setattr(ctx context.Context, node uint64, s SetattrIn) (AttrOut, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpSetattr, NodeID: node, Args: [][]byte{encodeSetattr(s)}, Out: AttrOutSize}, nil)
	if err != nil {
		return AttrOut{}, err
	}
	d, err := exact("SETATTR", p, AttrOutSize, AttrOutSize)
	if err != nil {
		return AttrOut{}, err
	}
	return d.attrOut(), d.err
}

// Statx returns extended attributes of node (FUSE 7.39).
func (c *Client) Statx(ctx context.Context, node uint64, fh *uint64, sxFlags, mask uint32) (StatxOut, error) {
	e := enc(nil)
	if fh != nil {
		e = e.u32(GetattrFH).u32(0).u64(*fh)
	} else {
		e = e.u32(0).u32(0).u64(0)
	}
	e = e.u32(sxFlags).u32(mask)
	p, err := c.call(ctx, &Req{Op: fuse.OpStatx, NodeID: node, Args: [][]byte{e}, Out: StatxOutSize}, nil)
	if err != nil {
		return StatxOut{}, err
	}
	d, err := exact("STATX", p, StatxOutSize, StatxOutSize)
	if err != nil {
		return StatxOut{}, err
	}
	var o StatxOut
	o.AttrValid, o.AttrValidNsec, o.Flags = d.u64(), d.u32(), d.u32()
	d.take(16)
	o.Stat = d.statx()
	return o, d.err
}

// Readlink returns a symlink's target.
func (c *Client) Readlink(ctx context.Context, node uint64) (string, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpReadlink, NodeID: node, Out: 4096}, nil)
	if err != nil {
		return "", err
	}
	return string(p), nil
}

// Symlink creates name in parent pointing at target.
func (c *Client) Symlink(ctx context.Context, parent uint64, name, target string) (EntryOut, error) {
	r := &Req{Op: fuse.OpSymlink, NodeID: parent, Args: [][]byte{cstr(name), cstr(target)}}
	c.secctx(r)
	return c.entryCall(ctx, "SYMLINK", r)
}

// mask applies the umask the way the Linux client does: itself, unless the
// backend took FUSE_DONT_MASK (then the backend applies the umask sent).
func (c *Client) mask(mode, umask uint32) uint32 {
	if s := c.Session(); s != nil && s.Flags&InitDontMask != 0 {
		return mode
	}
	return mode &^ umask
}

// Mknod creates a node (file, fifo, device, socket). umask is applied as
// the Linux client does (see mask).
func (c *Client) Mknod(ctx context.Context, parent uint64, name string, mode, rdev, umask uint32) (EntryOut, error) {
	mode = c.mask(mode, umask)
	r := &Req{Op: fuse.OpMknod, NodeID: parent, Args: [][]byte{enc(nil).u32(mode).u32(rdev).u32(umask).u32(0), cstr(name)}}
	c.secctx(r)
	return c.entryCall(ctx, "MKNOD", r)
}

// Mkdir creates a directory.
func (c *Client) Mkdir(ctx context.Context, parent uint64, name string, mode, umask uint32) (EntryOut, error) {
	mode = c.mask(mode, umask)
	r := &Req{Op: fuse.OpMkdir, NodeID: parent, Args: [][]byte{enc(nil).u32(mode).u32(umask), cstr(name)}}
	c.secctx(r)
	return c.entryCall(ctx, "MKDIR", r)
}

// Unlink removes a non-directory.
func (c *Client) Unlink(ctx context.Context, parent uint64, name string) error {
	return c.emptyCall(ctx, "UNLINK", &Req{Op: fuse.OpUnlink, NodeID: parent, Args: [][]byte{cstr(name)}})
}

// Rmdir removes a directory.
func (c *Client) Rmdir(ctx context.Context, parent uint64, name string) error {
	return c.emptyCall(ctx, "RMDIR", &Req{Op: fuse.OpRmdir, NodeID: parent, Args: [][]byte{cstr(name)}})
}

// Rename renames olddir/oldname to newdir/newname.
func (c *Client) Rename(ctx context.Context, olddir uint64, oldname string, newdir uint64, newname string) error {
	return c.emptyCall(ctx, "RENAME", &Req{Op: fuse.OpRename, NodeID: olddir,
		Args: [][]byte{enc(nil).u64(newdir), cstr(oldname), cstr(newname)}})
}

// Rename2 is Rename with renameat2 flags (RENAME_NOREPLACE, _EXCHANGE, _WHITEOUT).
func (c *Client) Rename2(ctx context.Context, olddir uint64, oldname string, newdir uint64, newname string, flags uint32) error {
	return c.emptyCall(ctx, "RENAME2", &Req{Op: fuse.OpRename2, NodeID: olddir,
		Args: [][]byte{enc(nil).u64(newdir).u32(flags).u32(0), cstr(oldname), cstr(newname)}})
}

// Link creates a hard link newparent/newname to node.
func (c *Client) Link(ctx context.Context, node, newparent uint64, newname string) (EntryOut, error) {
	return c.entryCall(ctx, "LINK", &Req{Op: fuse.OpLink, NodeID: newparent, Args: [][]byte{enc(nil).u64(node), cstr(newname)}})
}

func (c *Client) openCall(ctx context.Context, op uint32, node uint64, flags, openFlags uint32) (OpenOut, error) {
	p, err := c.call(ctx, &Req{Op: op, NodeID: node, Args: [][]byte{enc(nil).u32(flags).u32(openFlags)}, Out: OpenOutSize}, nil)
	if err != nil {
		return OpenOut{}, err
	}
	d, err := exact("OPEN", p, OpenOutSize, OpenOutSize)
	if err != nil {
		return OpenOut{}, err
	}
	return d.open(), d.err
}

// Open opens a file (flags: O_RDONLY, O_RDWR, O_TRUNC, ...).
func (c *Client) Open(ctx context.Context, node uint64, flags, openFlags uint32) (OpenOut, error) {
	return c.openCall(ctx, fuse.OpOpen, node, flags, openFlags)
}

// Opendir opens a directory.
func (c *Client) Opendir(ctx context.Context, node uint64, flags uint32) (OpenOut, error) {
	return c.openCall(ctx, fuse.OpOpendir, node, flags, 0)
}

func (c *Client) createCall(ctx context.Context, op uint32, name string, parent uint64, flags, mode, umask uint32) (EntryOut, OpenOut, error) {
	mode = c.mask(mode, umask)
	r := &Req{Op: op, NodeID: parent, Args: [][]byte{enc(nil).u32(flags).u32(mode).u32(umask).u32(0), cstr(name)},
		Out: EntryOutSize + OpenOutSize}
	c.secctx(r)
	p, err := c.call(ctx, r, nil)
	if err != nil {
		return EntryOut{}, OpenOut{}, err
	}
	d, err := exact("CREATE", p, EntryOutSize+OpenOutSize, EntryOutSize+OpenOutSize)
	if err != nil {
		return EntryOut{}, OpenOut{}, err
	}
	e := d.entry()
	o := d.open()
	return e, o, d.err
}

// Create creates and opens a file.
func (c *Client) Create(ctx context.Context, parent uint64, name string, flags, mode, umask uint32) (EntryOut, OpenOut, error) {
	return c.createCall(ctx, fuse.OpCreate, name, parent, flags, mode, umask)
}

// Tmpfile creates an unnamed file in parent (O_TMPFILE); the guest's VFS
// names the dentry "/", and so does this.
func (c *Client) Tmpfile(ctx context.Context, parent uint64, flags, mode, umask uint32) (EntryOut, OpenOut, error) {
	return c.createCall(ctx, fuse.OpTmpfile, "/", parent, flags, mode, umask)
}

func readIn(fh, off uint64, size, readFlags uint32, lockOwner uint64, flags uint32) []byte {
	return enc(nil).u64(fh).u64(off).u32(size).u32(readFlags).u64(lockOwner).u32(flags).u32(0)
}

// Read reads up to len(buf) bytes at off into buf and returns the count.
func (c *Client) Read(ctx context.Context, node, fh, off uint64, buf []byte) (int, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpRead, NodeID: node, Args: [][]byte{readIn(fh, off, uint32(len(buf)), 0, 0, 0)}, Out: len(buf)}, buf)
	if err != nil {
		return 0, err
	}
	if len(p) > len(buf) {
		return 0, fmt.Errorf("%w: READ returned %d bytes for %d", ErrProtocol, len(p), len(buf))
	}
	return len(p), nil
}

// Write writes data at off (writeFlags: WriteCache, WriteLockowner,
// WriteKillSuidgid) and returns the count the backend reports.
func (c *Client) Write(ctx context.Context, node, fh, off uint64, data []byte, writeFlags uint32) (uint32, error) {
	in := enc(nil).u64(fh).u64(off).u32(uint32(len(data))).u32(writeFlags).u64(0).u32(0).u32(0)
	p, err := c.call(ctx, &Req{Op: fuse.OpWrite, NodeID: node, Args: [][]byte{in}, Data: data, Out: 8}, nil)
	if err != nil {
		return 0, err
	}
	d, err := exact("WRITE", p, 8, 8)
	if err != nil {
		return 0, err
	}
	n := d.u32()
	if int(n) > len(data) {
		return n, fmt.Errorf("%w: WRITE of %d bytes reports %d", ErrProtocol, len(data), n)
	}
	return n, d.err
}

// Flush is sent on every close of a file descriptor.
func (c *Client) Flush(ctx context.Context, node, fh, lockOwner uint64) error {
	return c.emptyCall(ctx, "FLUSH", &Req{Op: fuse.OpFlush, NodeID: node, Args: [][]byte{enc(nil).u64(fh).u32(0).u32(0).u64(lockOwner)}})
}

// Release closes an open file.
func (c *Client) Release(ctx context.Context, node, fh uint64, flags, releaseFlags uint32, lockOwner uint64) error {
	return c.emptyCall(ctx, "RELEASE", &Req{Op: fuse.OpRelease, NodeID: node, Args: [][]byte{enc(nil).u64(fh).u32(flags).u32(releaseFlags).u64(lockOwner)}})
}

// Releasedir closes an open directory.
func (c *Client) Releasedir(ctx context.Context, node, fh uint64) error {
	return c.emptyCall(ctx, "RELEASEDIR", &Req{Op: fuse.OpReleasedir, NodeID: node, Args: [][]byte{enc(nil).u64(fh).u32(0).u32(0).u64(0)}})
}

// Fsync flushes an open file (datasync: fdatasync).
func (c *Client) Fsync(ctx context.Context, node, fh uint64, datasync bool) error {
	return c.fsync(ctx, fuse.OpFsync, "FSYNC", node, fh, datasync)
}

// Fsyncdir flushes an open directory.
func (c *Client) Fsyncdir(ctx context.Context, node, fh uint64, datasync bool) error {
	return c.fsync(ctx, fuse.OpFsyncdir, "FSYNCDIR", node, fh, datasync)
}

func (c *Client) fsync(ctx context.Context, op uint32, name string, node, fh uint64, datasync bool) error {
	var f uint32
	if datasync {
		f = FsyncFdatasync
	}
	return c.emptyCall(ctx, name, &Req{Op: op, NodeID: node, Args: [][]byte{enc(nil).u64(fh).u32(f).u32(0)}})
}

// Readdir reads directory entries from offset off (size bytes of room).
func (c *Client) Readdir(ctx context.Context, node, fh, off uint64, size int) ([]Dirent, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpReaddir, NodeID: node, Args: [][]byte{readIn(fh, off, uint32(size), 0, 0, 0)}, Out: size}, nil)
	if err != nil {
		return nil, err
	}
	return ParseDirents(p)
}

// Readdirplus reads directory entries with their attributes; every entry
// except "." and ".." (nodeid 0) is a LOOKUP reference the caller owns.
func (c *Client) Readdirplus(ctx context.Context, node, fh, off uint64, size int) ([]Direntplus, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpReaddirplus, NodeID: node, Args: [][]byte{readIn(fh, off, uint32(size), 0, 0, 0)}, Out: size}, nil)
	if err != nil {
		return nil, err
	}
	return ParseDirentsplus(p)
}

// ReaddirplusAll reads a whole directory with READDIRPLUS in chunks of size
// bytes, continuing from the last entry's offset.
func (c *Client) ReaddirplusAll(ctx context.Context, node, fh uint64, size int) ([]Direntplus, error) {
	var all []Direntplus
	off := uint64(0)
	for {
		ents, err := c.Readdirplus(ctx, node, fh, off, size)
		if err != nil {
			return all, err
		}
		if len(ents) == 0 {
			return all, nil
		}
		all = append(all, ents...)
		off = ents[len(ents)-1].Off
		if len(all) > 1<<20 {
			return all, fmt.Errorf("%w: READDIRPLUS does not end", ErrProtocol)
		}
	}
}

// ReaddirAll reads a whole directory with READDIR.
func (c *Client) ReaddirAll(ctx context.Context, node, fh uint64, size int) ([]Dirent, error) {
	var all []Dirent
	off := uint64(0)
	for {
		ents, err := c.Readdir(ctx, node, fh, off, size)
		if err != nil {
			return all, err
		}
		if len(ents) == 0 {
			return all, nil
		}
		all = append(all, ents...)
		off = ents[len(ents)-1].Off
		if len(all) > 1<<20 {
			return all, fmt.Errorf("%w: READDIR does not end", ErrProtocol)
		}
	}
}

// Statfs returns file system statistics.
func (c *Client) Statfs(ctx context.Context, node uint64) (Kstatfs, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpStatfs, NodeID: node, Out: KstatfsSize}, nil)
	if err != nil {
		return Kstatfs{}, err
	}
	d, err := exact("STATFS", p, KstatfsSize, KstatfsSize)
	if err != nil {
		return Kstatfs{}, err
	}
	var s Kstatfs
	s.Blocks, s.Bfree, s.Bavail, s.Files, s.Ffree = d.u64(), d.u64(), d.u64(), d.u64(), d.u64()
	s.Bsize, s.Namelen, s.Frsize = d.u32(), d.u32(), d.u32()
	return s, d.err
}

// Access checks permission mask (R_OK|W_OK|X_OK or F_OK) for the caller.
func (c *Client) Access(ctx context.Context, node uint64, mask uint32) error {
	return c.emptyCall(ctx, "ACCESS", &Req{Op: fuse.OpAccess, NodeID: node, Args: [][]byte{enc(nil).u32(mask).u32(0)}})
}

// Fallocate allocates or punches space (mode: FALLOC_FL_*).
func (c *Client) Fallocate(ctx context.Context, node, fh, off, length uint64, mode uint32) error {
	return c.emptyCall(ctx, "FALLOCATE", &Req{Op: fuse.OpFallocate, NodeID: node, Args: [][]byte{enc(nil).u64(fh).u64(off).u64(length).u32(mode).u32(0)}})
}

// Lseek implements SEEK_DATA/SEEK_HOLE (and SEEK_SET/CUR/END).
func (c *Client) Lseek(ctx context.Context, node, fh, off uint64, whence uint32) (uint64, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpLseek, NodeID: node, Args: [][]byte{enc(nil).u64(fh).u64(off).u32(whence).u32(0)}, Out: 8}, nil)
	if err != nil {
		return 0, err
	}
	d, err := exact("LSEEK", p, 8, 8)
	if err != nil {
		return 0, err
	}
	return d.u64(), d.err
}

// CopyFileRange copies length bytes between open files and returns the
// count copied.
func (c *Client) CopyFileRange(ctx context.Context, nodeIn, fhIn, offIn, nodeOut, fhOut, offOut, length, flags uint64) (uint32, error) {
	in := enc(nil).u64(fhIn).u64(offIn).u64(nodeOut).u64(fhOut).u64(offOut).u64(length).u64(flags)
	p, err := c.call(ctx, &Req{Op: fuse.OpCopyFileRange, NodeID: nodeIn, Args: [][]byte{in}, Out: 8}, nil)
	if err != nil {
		return 0, err
	}
	d, err := exact("COPY_FILE_RANGE", p, 8, 8)
	if err != nil {
		return 0, err
	}
	return d.u32(), d.err
}

// Syncfs flushes the whole file system.
func (c *Client) Syncfs(ctx context.Context, node uint64) error {
	return c.emptyCall(ctx, "SYNCFS", &Req{Op: fuse.OpSyncfs, NodeID: node, Args: [][]byte{enc(nil).u64(0)}})
}

// Setxattr sets an extended attribute (flags: XATTR_CREATE/XATTR_REPLACE).
func (c *Client) Setxattr(ctx context.Context, node uint64, name string, value []byte, flags uint32) error {
	in := enc(nil).u32(uint32(len(value))).u32(flags)
	if s := c.Session(); s != nil && s.Flags&InitSetxattrExt != 0 {
		in = in.u32(0).u32(0)
	}
	return c.emptyCall(ctx, "SETXATTR", &Req{Op: fuse.OpSetxattr, NodeID: node, Args: [][]byte{in, cstr(name), value}})
}

// Getxattr reads an extended attribute with a buffer of size bytes; size 0
// asks for the value's length, returned as n with a nil value.
func (c *Client) Getxattr(ctx context.Context, node uint64, name string, size uint32) (value []byte, n uint32, err error) {
	out := int(size)
	if size == 0 {
		out = 8
	}
	p, err := c.call(ctx, &Req{Op: fuse.OpGetxattr, NodeID: node, Args: [][]byte{enc(nil).u32(size).u32(0), cstr(name)}, Out: out}, nil)
	if err != nil {
		return nil, 0, err
	}
	return xattrReply("GETXATTR", p, size)
}

func xattrReply(op string, p []byte, size uint32) ([]byte, uint32, error) {
	if size == 0 {
		d, err := exact(op, p, 8, 8)
		if err != nil {
			return nil, 0, err
		}
		return nil, d.u32(), d.err
	}
	if len(p) > int(size) {
		return nil, 0, fmt.Errorf("%w: %s returned %d bytes for %d", ErrProtocol, op, len(p), size)
	}
	return p, uint32(len(p)), nil
}

// Listxattr lists extended attribute names with a buffer of size bytes;
// size 0 asks for the list's length (n).
func (c *Client) Listxattr(ctx context.Context, node uint64, size uint32) (names []string, n uint32, err error) {
	out := int(size)
	if size == 0 {
		out = 8
	}
	p, err := c.call(ctx, &Req{Op: fuse.OpListxattr, NodeID: node, Args: [][]byte{enc(nil).u32(size).u32(0)}, Out: out}, nil)
	if err != nil {
		return nil, 0, err
	}
	v, n, err := xattrReply("LISTXATTR", p, size)
	if err != nil || v == nil {
		return nil, n, err
	}
	if len(v) > 0 && v[len(v)-1] != 0 {
		return nil, n, fmt.Errorf("%w: LISTXATTR list not NUL-terminated", ErrProtocol)
	}
	if s := strings.TrimSuffix(string(v), "\x00"); s != "" {
		names = strings.Split(s, "\x00")
	}
	return names, n, nil
}

// Removexattr removes an extended attribute.
func (c *Client) Removexattr(ctx context.Context, node uint64, name string) error {
	return c.emptyCall(ctx, "REMOVEXATTR", &Req{Op: fuse.OpRemovexattr, NodeID: node, Args: [][]byte{cstr(name)}})
}

func lkIn(fh, owner uint64, l FileLock, lkFlags uint32) []byte {
	return encodeLock(enc(nil).u64(fh).u64(owner), l).u32(lkFlags).u32(0)
}

// Getlk tests for a conflicting POSIX lock (lkFlags: LkFlock for flock
// semantics, which Linux never sends for GETLK). Type F_UNLCK in the answer
// means no conflict.
func (c *Client) Getlk(ctx context.Context, node, fh, owner uint64, l FileLock, lkFlags uint32) (FileLock, error) {
	p, err := c.call(ctx, &Req{Op: fuse.OpGetlk, NodeID: node, Args: [][]byte{lkIn(fh, owner, l, lkFlags)}, Out: FileLockSize}, nil)
	if err != nil {
		return FileLock{}, err
	}
	d, err := exact("GETLK", p, FileLockSize, FileLockSize)
	if err != nil {
		return FileLock{}, err
	}
	return d.lock(), d.err
}

// Setlk takes or releases a lock without waiting (EAGAIN on conflict);
// lkFlags LkFlock makes it a flock(2) lock of the open file.
func (c *Client) Setlk(ctx context.Context, node, fh, owner uint64, l FileLock, lkFlags uint32) error {
	return c.emptyCall(ctx, "SETLK", &Req{Op: fuse.OpSetlk, NodeID: node, Args: [][]byte{lkIn(fh, owner, l, lkFlags)}})
}

// Setlkw is Setlk that waits for a conflicting lock to go away. unique, if
// nonzero, is the request id to use (so that a test can Interrupt it).
func (c *Client) Setlkw(ctx context.Context, node, fh, owner uint64, l FileLock, lkFlags uint32, unique uint64) error {
	return c.emptyCall(ctx, "SETLKW", &Req{Op: fuse.OpSetlkw, NodeID: node, Unique: unique, Args: [][]byte{lkIn(fh, owner, l, lkFlags)}})
}

// Interrupt asks the backend to interrupt request unique. The backend may
// answer (EAGAIN: retry later) or, commonly, return the chain with no reply;
// replied reports which, and err carries the errno of an answer.
func (c *Client) Interrupt(ctx context.Context, unique uint64) (replied bool, err error) {
	rep, err := c.Do(ctx, &Req{Op: fuse.OpInterrupt, Unique: unique | 1, Args: [][]byte{enc(nil).u64(unique)}, ReplyOptional: true}, nil)
	if err != nil || rep.Written == 0 {
		return false, err
	}
	return true, rep.Err()
}
