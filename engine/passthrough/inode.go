package passthrough

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/maptable"
)

// fdRef is an fd shared by concurrent requests. Requests pin it while they
// use the fd; removal (FORGET to zero, RELEASE) marks it dead, and whoever
// drops the last pin of a dead fdRef closes the fd, so an fd number is never
// used after it was closed (and possibly reused for something else).
//
// Pins are taken only under the owning table's lock while the object is
// still in the table; kill runs after removal under that lock. Either kill
// sees no pins or the last unpin sees dead (sequentially consistent atomics);
// closed makes the close happen once when both do.
type fdRef struct {
	fd     int
	pins   atomic.Int32
	dead   atomic.Bool
	closed atomic.Bool
}

func (r *fdRef) unpin() {
	if r.pins.Add(-1) == 0 && r.dead.Load() {
		r.closeFd()
	}
}

func (r *fdRef) kill() {
	r.dead.Store(true)
	if r.pins.Load() == 0 {
		r.closeFd()
	}
}

func (r *fdRef) closeFd() {
	if r.closed.CompareAndSwap(false, true) {
		unix.Close(r.fd)
	}
}

// inode is a host inode the guest knows by a nodeid: an O_PATH|O_NOFOLLOW fd
// plus its persistent record in fs.inodes (keyed by dev, ino, mount id).
//
// Inode record layout (inodeRecSize bytes, little-endian):
//
//	0   nlookup   u64  references the guest holds (LOOKUP-like replies minus FORGETs)
//	8   dev, ino, mnt  u64 x3 (also the key)
//	32  fh type   i32  name_to_handle_at handle type
//	36  fh len    u32  0 when no handle could be made
//	40  fh bytes  [128]
type inode struct {
	fdRef
	tid     maptable.ID // record ID = the nodeid (root: nodeid 1)
	key     maptable.Key
	typ     uint32 // S_IFMT bits; a type never changes
	nlookup uint64 // +checklocks:FS.imu
	persist func(val []byte)
}

const maxHandleSize = 128

func (fs *FS) encodeInodeRec(b []byte, in *inode) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], in.nlookup)
	le.PutUint64(b[8:], in.key[0])
	le.PutUint64(b[16:], in.key[1])
	le.PutUint64(b[24:], in.key[2])
	fh, _, err := unix.NameToHandleAt(in.fd, "", unix.AT_EMPTY_PATH)
	if err != nil || fh.Size() > maxHandleSize {
		return // best effort: recovery falls back to the fd store
	}
	le.PutUint32(b[32:], uint32(fh.Type()))
	le.PutUint32(b[36:], uint32(fh.Size()))
	copy(b[40:40+maxHandleSize], fh.Bytes())
}

func statxFd(fd int, st *unix.Statx_t) error {
	return statxAt(fd, nil, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, statxMask, st)
}

const statxMask = unix.STATX_BASIC_STATS | unix.STATX_MNT_ID

func keyOf(st *unix.Statx_t) maptable.Key {
	mnt := uint64(0)
	if st.Mask&unix.STATX_MNT_ID != 0 {
		mnt = st.Mnt_id
	}
	return maptable.Key{unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino, mnt}
}

// getInode pins the inode nodeid names. ESTALE for a nodeid that is not (or
// no longer) live. The caller unpins.
func (fs *FS) getInode(nodeid uint64) (*inode, unix.Errno) {
	if nodeid == fuse.RootID {
		fs.root.pins.Add(1)
		return fs.root, 0
	}
	slot := uint32(nodeid)
	fs.imu.RLock()
	if int(slot) < len(fs.islots) {
		if in := fs.islots[slot]; in != nil && uint64(in.tid) == nodeid {
			in.pins.Add(1)
			fs.imu.RUnlock()
			return in, 0
		}
	}
	fs.imu.RUnlock()
	return nil, unix.ESTALE
}

// getDir is getInode for a nodeid that must be a directory.
func (fs *FS) getDir(nodeid uint64) (*inode, unix.Errno) {
	in, e := fs.getInode(nodeid)
	if e != 0 {
		return nil, e
	}
	if in.typ != unix.S_IFDIR {
		in.unpin()
		return nil, unix.ENOTDIR
	}
	return in, 0
}

func (fs *FS) nodeidOf(in *inode) uint64 {
	if in == fs.root {
		return fuse.RootID
	}
	return uint64(in.tid)
}

// refLocked adds n guest references to in and persists the count.
// Precondition: fs.imu held for writing.
func (fs *FS) refLocked(in *inode, n uint64) {
	if in == fs.root {
		return
	}
	in.nlookup += n
	fs.inodes.Update(in.tid, in.persist)
}

// ref adds one guest reference to a pinned inode. It fails with ESTALE when
// the inode was forgotten meanwhile.
func (fs *FS) ref(in *inode) unix.Errno {
	fs.imu.Lock()
	defer fs.imu.Unlock()
	if in != fs.root && in.dead.Load() {
		return unix.ESTALE
	}
	fs.refLocked(in, 1)
	return 0
}

// adopt takes ownership of fd (an O_PATH|O_NOFOLLOW fd whose statx is st),
// counts one guest reference to its inode and returns the inode's nodeid.
// An inode already known keeps its fd and fd is closed.
func (fs *FS) adopt(fd int, st *unix.Statx_t) (uint64, unix.Errno) {
	k := keyOf(st)
	fs.imu.Lock()
	if in := fs.byKey[k]; in != nil {
		fs.refLocked(in, 1)
		id := fs.nodeidOf(in)
		fs.imu.Unlock()
		unix.Close(fd)
		return id, 0
	}
	fs.imu.Unlock()

	in := &inode{key: k, typ: uint32(st.Mode) & unix.S_IFMT, nlookup: 1}
	in.fd = fd
	in.persist = func(val []byte) { binary.LittleEndian.PutUint64(val, in.nlookup) }
	var rec [inodeRecSize]byte
	fs.encodeInodeRec(rec[:], in) // name_to_handle_at outside the lock

	fs.imu.Lock()
	defer fs.imu.Unlock()
	if old := fs.byKey[k]; old != nil { // raced with another lookup
		fs.refLocked(old, 1)
		unix.Close(fd)
		return fs.nodeidOf(old), 0
	}
	id, err := fs.inodes.Insert(k, rec[:])
	if err != nil {
		unix.Close(fd)
		return 0, errno(err)
	}
	in.tid = id
	slot := int(id.Slot())
	if slot >= len(fs.islots) {
		fs.islots = append(fs.islots, make([]*inode, slot+1-len(fs.islots)+len(fs.islots)/2)...)
	}
	fs.islots[slot] = in
	fs.byKey[k] = in
	return uint64(id), 0
}

// forget drops n guest references to nodeid; at zero the inode's record goes
// and its fd is closed once no request uses it. Unknown nodeids are ignored.
func (fs *FS) forget(nodeid, n uint64) {
	if nodeid == fuse.RootID {
		return
	}
	slot := uint32(nodeid)
	fs.imu.Lock()
	if int(slot) >= len(fs.islots) {
		fs.imu.Unlock()
		return
	}
	in := fs.islots[slot]
	if in == nil || uint64(in.tid) != nodeid {
		fs.imu.Unlock()
		return
	}
	if n < in.nlookup {
		in.nlookup -= n
		fs.inodes.Update(in.tid, in.persist)
		fs.imu.Unlock()
		return
	}
	fs.islots[slot] = nil
	delete(fs.byKey, in.key)
	fs.inodes.Delete(in.tid)
	fs.imu.Unlock()
	in.kill()
}

// lookupAt resolves one name in directory dirfd without following symlinks,
// counts a guest reference and fills e. A known inode costs one statx.
func (fs *FS) lookupAt(dirfd int, name []byte, e *fuse.EntryOut) unix.Errno {
	var st unix.Statx_t
	if err := statxAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, statxMask, &st); err != nil {
		return errno(err)
	}
	k := keyOf(&st)
	fs.imu.Lock()
	if in := fs.byKey[k]; in != nil {
		fs.refLocked(in, 1)
		id := fs.nodeidOf(in)
		fs.imu.Unlock()
		fs.fillEntry(e, id, &st)
		return 0
	}
	fs.imu.Unlock()
	fd, err := openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return errno(err)
	}
	if err := statxFd(fd, &st); err != nil {
		unix.Close(fd)
		return errno(err)
	}
	id, eno := fs.adopt(fd, &st)
	if eno != 0 {
		return eno
	}
	fs.fillEntry(e, id, &st)
	return 0
}

// entryOf counts a reference to the pinned inode in and fills e with its
// current attributes.
func (fs *FS) entryOf(in *inode, e *fuse.EntryOut) unix.Errno {
	var st unix.Statx_t
	if err := statxFd(in.fd, &st); err != nil {
		return errno(err)
	}
	if eno := fs.ref(in); eno != 0 {
		return eno
	}
	fs.fillEntry(e, fs.nodeidOf(in), &st)
	return 0
}

// adoptOpen turns a freshly opened (non-O_PATH) fd into a guest reference:
// it re-opens its inode O_PATH through procfs (the same inode, whatever
// happened to the name meanwhile) and fills e.
func (fs *FS) adoptOpen(fd int, e *fuse.EntryOut) unix.Errno {
	pfd, err := fs.reopen(fd, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return errno(err)
	}
	var st unix.Statx_t
	if err := statxFd(pfd, &st); err != nil {
		unix.Close(pfd)
		return errno(err)
	}
	id, eno := fs.adopt(pfd, &st)
	if eno != 0 {
		return eno
	}
	fs.fillEntry(e, id, &st)
	return 0
}

// reopen opens the inode behind fd (often O_PATH) with flags via
// /proc/self/fd, like virtiofsd. The caller refuses symlinks first.
func (fs *FS) reopen(fd int, flags int) (int, error) {
	var b [24]byte
	return openat(fs.procfd, fdName(b[:], fd), flags, 0)
}

// fdName writes fd's decimal digits and a NUL into b and returns the digits.
func fdName(b []byte, fd int) []byte {
	i := len(b) - 1
	b[i] = 0
	u := uint64(fd)
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	return b[i : len(b)-1]
}

func (fs *FS) fillEntry(e *fuse.EntryOut, nodeid uint64, st *unix.Statx_t) {
	ttl := fs.policy.ttl
	*e = fuse.EntryOut{NodeID: nodeid, EntryValid: ttl, AttrValid: ttl}
	fillAttr(&e.Attr, st)
}

func fillAttr(a *fuse.Attr, st *unix.Statx_t) {
	*a = fuse.Attr{
		Ino:       st.Ino,
		Size:      st.Size,
		Blocks:    st.Blocks,
		Atime:     uint64(st.Atime.Sec),
		Mtime:     uint64(st.Mtime.Sec),
		Ctime:     uint64(st.Ctime.Sec),
		Atimensec: st.Atime.Nsec,
		Mtimensec: st.Mtime.Nsec,
		Ctimensec: st.Ctime.Nsec,
		Mode:      uint32(st.Mode),
		Nlink:     st.Nlink,
		UID:       st.Uid,
		GID:       st.Gid,
		Rdev:      fuse.EncodeDev(st.Rdev_major, st.Rdev_minor),
		Blksize:   st.Blksize,
	}
}

// handle is an open file or directory the guest knows by an fh.
//
// Handle record layout (handleRecSize bytes): nodeid u64, host open flags
// u32, kind u32 (1 file, 2 directory).
type handle struct {
	fdRef
	id     maptable.ID
	nodeid uint64
	flags  int
	dir    *dirState // nil for files
}

const (
	kindFile = 1
	kindDir  = 2
)

// dirState serialises READDIR on one directory handle (seek + getdents).
type dirState struct{ mu sync.Mutex }

// newHandle takes ownership of fd and returns the fh naming it.
func (fs *FS) newHandle(fd int, nodeid uint64, flags int, dir bool) (uint64, unix.Errno) {
	var rec [handleRecSize]byte
	binary.LittleEndian.PutUint64(rec[0:], nodeid)
	binary.LittleEndian.PutUint32(rec[8:], uint32(flags))
	h := &handle{nodeid: nodeid, flags: flags}
	h.fd = fd
	binary.LittleEndian.PutUint32(rec[12:], kindFile)
	if dir {
		h.dir = &dirState{}
		binary.LittleEndian.PutUint32(rec[12:], kindDir)
	}
	fs.hmu.Lock()
	defer fs.hmu.Unlock()
	id, err := fs.handles.Insert(maptable.Key{}, rec[:])
	if err != nil {
		unix.Close(fd)
		return 0, errno(err)
	}
	h.id = id
	slot := int(id.Slot())
	if slot >= len(fs.hslots) {
		fs.hslots = append(fs.hslots, make([]*handle, slot+1-len(fs.hslots)+len(fs.hslots)/2)...)
	}
	fs.hslots[slot] = h
	return uint64(id), 0
}

// getHandle pins the handle fh names; EBADF when there is none.
func (fs *FS) getHandle(fh uint64) (*handle, unix.Errno) {
	slot := uint32(fh)
	fs.hmu.RLock()
	if int(slot) < len(fs.hslots) {
		if h := fs.hslots[slot]; h != nil && uint64(h.id) == fh {
			h.pins.Add(1)
			fs.hmu.RUnlock()
			return h, 0
		}
	}
	fs.hmu.RUnlock()
	return nil, unix.EBADF
}

// removeHandle unlinks fh from the table and returns it pinned (the caller
// unpins, which closes the fd once other users are done).
func (fs *FS) removeHandle(fh uint64) (*handle, unix.Errno) {
	slot := uint32(fh)
	fs.hmu.Lock()
	defer fs.hmu.Unlock()
	if int(slot) < len(fs.hslots) {
		if h := fs.hslots[slot]; h != nil && uint64(h.id) == fh {
			fs.hslots[slot] = nil
			fs.handles.Delete(h.id)
			h.pins.Add(1)
			h.dead.Store(true)
			return h, 0
		}
	}
	return nil, unix.EBADF
}
