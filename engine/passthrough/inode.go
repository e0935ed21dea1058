package passthrough

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vfsd/engine/crashpoint"
	"vfsd/engine/fuse"
	"vfsd/engine/journal"
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

// Unpin is unpin, for fuse.Pin: a READ the queue reads at the end of its
// batch keeps its handle's fd open until then.
func (r *fdRef) Unpin() { r.unpin() }

func (r *fdRef) kill() {
	r.dead.Store(true)
	if r.pins.Load() == 0 {
		r.closeFd()
	}
}

func (r *fdRef) closeFd() {
	if r.closed.CompareAndSwap(false, true) && r.fd >= 0 {
		unix.Close(r.fd)
	}
}

// inode is a host inode the guest knows by a nodeid: an O_PATH|O_NOFOLLOW fd
// plus its persistent record in fs.inodes (keyed by dev, ino, mount id).
// With fs.deferOpen the fd is -1 until the inode's first use (the record's
// file handle opens it: openDeferredLocked); fd changes only under imu held
// for writing, and only from -1, so a reader that pinned the inode after
// seeing fd >= 0 under imu keeps a valid fd.
//
// Inode record layout (fs.irec = recCnt + 8*queues bytes, little-endian):
//
//	0    flags    u32  recKept: the O_PATH fd is in the fd store ("ino.<id>")
//	4    type     u32  S_IFMT bits
//	8    dev, ino, mnt  u64 x3 (also the key)
//	32   fh type  i32  name_to_handle_at handle type
//	36   fh len   u32  0 when no handle could be made
//	40   fh bytes [128]
//	168  nlookup  i64 x queues: references the guest holds, split per queue
//	                   (each changed only by its queue's thread; the total
//	                   is the sum; a hiprio FORGET makes queue 0's negative)
type inode struct {
	fdRef
	tid   maptable.ID // record ID = the nodeid (root: nodeid 1)
	key   maptable.Key
	typ   uint32   // S_IFMT bits; a type never changes
	cnt   []int64  // +checklocks:FS.imu; per-queue lookup counters (nil for the root)
	cnt0  [2]int64 // cnt's storage for up to 2 queues (hiprio + 1 request queue)
	total int64    // +checklocks:FS.imu; sum of cnt
	flags uint32   // +checklocks:FS.imu

	// Deferred keep of an unlinked regular file (keepIfLastLink): fresh
	// (set before install, then read-only) says this worker inserted the
	// record, so every handle on the inode was made by this worker and is
	// counted in opens. gone says an unlink or rename took (or was about
	// to take) its last link without keeping it; a handle made afterwards
	// keeps it (newHandle). opens is raised before gone is read, gone set
	// before opens is read: one of the two sides always sees the other.
	fresh bool
	opens atomic.Int32
	gone  atomic.Bool
}

const (
	maxHandleSize = 128

	recFlags  = 0
	recType   = 4
	recKey    = 8
	recFhType = 32
	recFhLen  = 36
	recFh     = 40
	recCnt    = 168

	recKept = 1 // flag: O_PATH fd in the fd store
)

// newInode returns an inode for the record layout of fs (counters zero).
// One allocation when the counters fit in cnt0: READDIRPLUS makes an inode
// per entry (with 2 queues, a listing of 10,000 entries lost 30,000
// allocations of the inode, its counters and a closure for UpdateValue).
func (fs *FS) newInode(k maptable.Key, typ uint32, fd int) *inode {
	in := &inode{key: k, typ: typ}
	if fs.nq <= len(in.cnt0) {
		in.cnt = in.cnt0[:fs.nq]
	} else {
		in.cnt = make([]int64, fs.nq)
	}
	in.fd = fd
	return in
}

// UpdateValue writes in's flags and counters into its record
// (maptable.Updater: fs.inodes.Update(in.tid, in)).
// Precondition: fs.imu held.
func (in *inode) UpdateValue(val []byte) {
	le := binary.LittleEndian
	le.PutUint32(val[recFlags:], in.flags)
	for i, c := range in.cnt {
		le.PutUint64(val[recCnt+8*i:], uint64(c))
	}
}

// recMax is the size of an inode record with journal.MaxQueues counters.
const recMax = recCnt + 8*journal.MaxQueues

// recScratch returns fs.irec bytes for a record: buf's when they fit.
func (fs *FS) recScratch(buf *[recMax]byte) []byte {
	if fs.irec <= len(buf) {
		return buf[:fs.irec]
	}
	return make([]byte, fs.irec)
}

// encodeInodeRec fills a new record for in with file handle fh (nil: none);
// it reports whether the record has a handle (without one, a restarted
// worker needs the fd store).
func (fs *FS) encodeInodeRec(b []byte, in *inode, fh *fileHandle) bool {
	le := binary.LittleEndian
	le.PutUint32(b[recFlags:], in.flags)
	le.PutUint32(b[recType:], in.typ)
	le.PutUint64(b[recKey:], in.key[0])
	le.PutUint64(b[recKey+8:], in.key[1])
	le.PutUint64(b[recKey+16:], in.key[2])
	for i, c := range in.cnt {
		le.PutUint64(b[recCnt+8*i:], uint64(c))
	}
	if fh == nil || fh.bytes > maxHandleSize {
		return false
	}
	le.PutUint32(b[recFhType:], uint32(fh.typ))
	le.PutUint32(b[recFhLen:], fh.bytes)
	copy(b[recFh:recFh+maxHandleSize], fh.f[:fh.bytes])
	return true
}

// decodeRecHandle reads the file handle of record rec into fh: has is
// false when the record has none, ok false when its length is impossible
// (the map is not trusted).
func decodeRecHandle(rec []byte, fh *fileHandle) (has, ok bool) {
	le := binary.LittleEndian
	n := le.Uint32(rec[recFhLen:])
	if n > maxHandleSize {
		return false, false
	}
	*fh = fileHandle{bytes: n, typ: int32(le.Uint32(rec[recFhType:]))}
	copy(fh.f[:], rec[recFh:recFh+int(n)])
	return n > 0, true
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

// getInode pins the inode nodeid names, with its fd open. ESTALE for a
// nodeid that is not (or no longer) live. The caller unpins. After a
// restart, an inode is loaded from its record on first use; a deferred
// inode is opened on first use.
func (fs *FS) getInode(nodeid uint64) (*inode, unix.Errno) {
	if nodeid == fuse.RootID {
		fs.root.pins.Add(1)
		return fs.root, 0
	}
	slot := uint32(nodeid)
	fs.imu.RLock()
	in := fs.islots.get(slot)
	if in != nil && uint64(in.tid) == nodeid && in.fd >= 0 {
		in.pins.Add(1)
		fs.imu.RUnlock()
		return in, 0
	}
	fs.imu.RUnlock()
	if in == nil && (!fs.lazy || nodeid>>32 == 0) {
		return nil, unix.ESTALE
	}
	fs.imu.Lock()
	defer fs.imu.Unlock()
	var eno unix.Errno
	if in = fs.islots.get(slot); in == nil || uint64(in.tid) != nodeid {
		if !fs.lazy || nodeid>>32 == 0 {
			return nil, unix.ESTALE
		}
		if in, eno = fs.materializeLocked(maptable.ID(nodeid), -1, nil); eno != 0 {
			return nil, eno
		}
	}
	if eno = fs.openDeferredLocked(in); eno != 0 {
		return nil, eno
	}
	in.pins.Add(1)
	return in, 0
}

// openDeferredLocked opens the O_PATH fd of in if it has none yet (see
// inode): by the file handle in its record, checked against its key. An
// inode that is gone (deleted on the host while nothing held it open), or
// that never was the one its name resolved to (a rename between the
// lookup's statx and name_to_handle_at), loses its record like a stale one
// after a restart: ESTALE now and later, its FORGET ignored, and the next
// lookup of the name makes a new nodeid.
// Precondition: fs.imu held for writing.
func (fs *FS) openDeferredLocked(in *inode) unix.Errno {
	if in.fd >= 0 || in == fs.root {
		return 0
	}
	if in.dead.Load() || fs.islots.get(in.tid.Slot()) != in {
		return unix.ESTALE
	}
	var fh fileHandle
	if !fs.recordHandleLocked(in, &fh) {
		return unix.ESTALE // never deferred without one
	}
	fd, err := openByHandle(fs.mountfd, &fh, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		if err == unix.ESTALE || err == unix.ENOENT {
			fs.dropStaleLocked(in)
			return unix.ESTALE
		}
		return errno(err)
	}
	var st unix.Statx_t
	if err := statxFd(fd, &st); err != nil {
		unix.Close(fd)
		return errno(err)
	}
	if keyOf(&st) != in.key || uint32(st.Mode)&unix.S_IFMT != in.typ {
		unix.Close(fd)
		fs.dropStaleLocked(in)
		return unix.ESTALE
	}
	in.fd = fd
	if st.Nlink == 0 && in.flags&recKept == 0 && fs.store != nil && !in.fresh {
		// Reachable now (something on the host holds it), not after a
		// restart; as materializeLocked. (A fresh one was left unkept on
		// purpose: keepIfLastLink.)
		if fs.storeFD(inoName(uint64(in.tid)), fd) == nil {
			in.flags |= recKept
			fs.inodes.Update(in.tid, in)
		}
	}
	return 0
}

// sameInodeLocked reports whether deferred inode in is the inode whose
// handle is cur (or else fd's); true when neither tells.
// Precondition: fs.imu held for writing.
func (fs *FS) sameInodeLocked(in *inode, fd int, cur *fileHandle) bool {
	var own, rh fileHandle
	if cur == nil {
		if fd < 0 || nameToHandle(fd, &own) != nil {
			return true
		}
		cur = &own
	}
	if !fs.recordHandleLocked(in, &rh) {
		return true
	}
	return rh.equal(cur)
}

// recordHandleLocked reads the file handle in in's record into fh; false
// when the record has none.
// Precondition: fs.imu held.
func (fs *FS) recordHandleLocked(in *inode, fh *fileHandle) bool {
	var buf [recMax]byte
	rec := fs.recScratch(&buf)
	if fs.inodes.Get(in.tid, rec) != nil {
		return false
	}
	has, _ := decodeRecHandle(rec, fh)
	return has
}

// dropStaleLocked removes in (installed, no fd, nothing kept in the store)
// and its record.
// Precondition: fs.imu held for writing.
func (fs *FS) dropStaleLocked(in *inode) {
	fs.islots.clear(in.tid.Slot())
	if fs.byKey[in.key] == in {
		delete(fs.byKey, in.key)
	}
	fs.inodes.Delete(in.tid)
	in.kill()
	crash(cpMaptable)
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

// countLocked adds one guest reference of x's queue to in, unless the
// crashed run of this resubmitted request already did (ref rule); the ref
// record is written before the counter changes.
// Precondition: fs.imu held for writing; in is live.
func (fs *FS) countLocked(x *txn, in *inode) {
	if in == fs.root || x.counted(in, in.key) {
		return
	}
	x.setRef(uint64(in.tid), in.cnt[x.q], in.key, 0)
	in.cnt[x.q]++
	in.total++
	fs.inodes.Update(in.tid, in)
	crash(cpMaptable)
}

// ref adds one guest reference to a pinned inode. It fails with ESTALE when
// the inode was forgotten meanwhile.
func (fs *FS) ref(x *txn, in *inode) unix.Errno {
	fs.imu.Lock()
	defer fs.imu.Unlock()
	if in != fs.root && in.dead.Load() {
		return unix.ESTALE
	}
	fs.countLocked(x, in)
	return 0
}

// knownLocked returns the live inode with key k: in memory, or (after a
// restart) loaded from its record, taking over fd (an O_PATH fd of the same
// inode) when it is >= 0. cur, when not nil, is the file handle of the
// caller's inode with key k (a record with another handle is stale). nil
// when the FS has no inode with that key.
//
// A deferred inode (no fd) does not keep its inode alive: once that is
// deleted its number can come back as another inode, with the same key.
// The caller's handle (cur, or fd's) tells them apart; the stale one is
// dropped (dropStaleLocked). Without either, its first use checks it.
// Precondition: fs.imu held for writing.
func (fs *FS) knownLocked(k maptable.Key, fd int, cur *fileHandle) (*inode, bool) {
	if in := fs.byKey[k]; in != nil {
		if in.fd >= 0 || in == fs.root || fs.sameInodeLocked(in, fd, cur) {
			return in, false
		}
		fs.dropStaleLocked(in)
	}
	if !fs.lazy {
		return nil, false
	}
	id, ok := fs.inodes.Lookup(k)
	if !ok {
		return nil, false
	}
	in, eno := fs.materializeLocked(id, fd, cur)
	if eno != 0 {
		return nil, false
	}
	return in, fd >= 0
}

// adopt takes ownership of fd (an O_PATH|O_NOFOLLOW fd whose statx is st),
// counts one guest reference to its inode and returns the inode's nodeid
// and the inode (not pinned: the guest's new reference keeps it). An inode
// already known keeps its fd and fd is closed. With fd -1, fh is the file
// handle of the inode st describes, and a new inode is recorded without an
// fd (deferOpen).
func (fs *FS) adopt(x *txn, fd int, fh *fileHandle, st *unix.Statx_t) (uint64, *inode, unix.Errno) {
	k := keyOf(st)
	fs.imu.Lock()
	if in, took := fs.knownLocked(k, fd, fh); in != nil {
		fs.countLocked(x, in)
		id := fs.nodeidOf(in)
		fs.imu.Unlock()
		if !took {
			closeFd(fd)
		}
		return id, in, 0
	}
	fs.imu.Unlock()

	in := fs.newInode(k, uint32(st.Mode)&unix.S_IFMT, fd)
	in.cnt[x.q], in.total = 1, 1
	var fhb fileHandle
	if fh == nil && nameToHandle(fd, &fhb) == nil { // outside the lock
		fh = &fhb
	}
	var buf [recMax]byte
	rec := fs.recScratch(&buf)
	hasHandle := fs.encodeInodeRec(rec, in, fh)

	fs.imu.Lock()
	if old, _ := fs.knownLocked(k, -1, fh); old != nil { // raced with another lookup
		fs.countLocked(x, old)
		fs.imu.Unlock()
		closeFd(fd)
		return fs.nodeidOf(old), old, 0
	}
	x.setRef(0, 0, k, 0)
	id, err := fs.inodes.Insert(k, rec)
	if err != nil {
		fs.imu.Unlock()
		closeFd(fd)
		return 0, nil, errno(err)
	}
	crashpoint.Hit(crashpoint.MidMaptableInsert) // inserted, counted; not installed, not journaled done
	in.tid = id
	in.fresh = true
	fs.installLocked(in)
	fs.imu.Unlock()
	crash(cpMaptable)
	if !hasHandle || st.Nlink == 0 || k[2] != fs.root.key[2] {
		// A restarted worker could not reopen it by handle.
		fs.keep(in)
	}
	return uint64(id), in, 0
}

// closeFd closes fd unless it is -1.
func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// installLocked makes in reachable by nodeid and key.
// Precondition: fs.imu held for writing.
func (fs *FS) installLocked(in *inode) {
	fs.islots.set(in.tid.Slot(), in)
	fs.byKey[in.key] = in
}

// forget drops n guest references of x's queue to nodeid; at a total of
// zero the inode's record goes and its fd is closed once no request uses
// it. Unknown nodeids are ignored. index is the entry's position in a
// BATCH_FORGET (0 for FORGET). A resubmitted request skips a drop its
// crashed run made (forget rule).
func (fs *FS) forget(x *txn, nodeid, n uint64, index uint32) {
	if nodeid == fuse.RootID || nodeid>>32 == 0 {
		return
	}
	if r := x.res; r != nil {
		if r.ProgressValid && index < r.Progress {
			return
		}
	}
	slot := uint32(nodeid)
	fs.imu.Lock()
	var in *inode
	if c := fs.islots.get(slot); c != nil && uint64(c.tid) == nodeid {
		in = c
	}
	if in == nil && fs.lazy {
		in, _ = fs.materializeLocked(maptable.ID(nodeid), -1, nil)
		if in == nil {
			in = fs.recordOnlyLocked(maptable.ID(nodeid))
		}
	}
	if r := x.res; r != nil && r.RefValid && r.Ref.Index == uint64(index) && r.Ref.ID == nodeid {
		if in == nil || in.cnt[x.q] == int64(r.Ref.Pre)-int64(n) {
			fs.imu.Unlock()
			if in == nil {
				if fs.store != nil {
					fs.sq.remove(inoName(nodeid)) // the crash may have come before
				}
				fs.dropInodeLocks(nodeid)
			}
			return // applied before the crash
		}
	}
	if in == nil {
		fs.imu.Unlock()
		return
	}
	x.setRef(nodeid, in.cnt[x.q], in.key, index)
	in.cnt[x.q] -= int64(n)
	in.total -= int64(n)
	if in.total > 0 {
		fs.inodes.Update(in.tid, in)
		fs.imu.Unlock()
		crash(cpMaptable)
		return
	}
	if fs.islots.get(slot) == in {
		fs.islots.clear(slot)
		delete(fs.byKey, in.key)
	}
	fs.inodes.Delete(in.tid)
	kept := in.flags&recKept != 0
	fs.imu.Unlock()
	crash(cpMaptable)
	if kept && fs.store != nil {
		fs.sq.remove(inoName(nodeid))
		crash(cpStore)
	}
	in.kill()
	fs.dropInodeLocks(nodeid)
}

// lookupAt resolves one name in directory dirfd without following symlinks,
// counts a guest reference and fills e. A known inode costs one statx.
//
// A new inode costs statx and name_to_handle_at by name with deferOpen (no
// fd until first use; many READDIRPLUS entries never get one). Otherwise it
// needs an fd now, and two orders are chosen by the recent hit rate
// (lookupScore): statx by name first costs 1 syscall when the inode is
// known and 4 when it is new (statx, openat, statx of what was opened,
// name_to_handle_at); open first costs 3 when known (openat, statx, close)
// and 3 when new. Open-first wins below a 1/3 hit rate: a READDIRPLUS of a
// directory the guest has not seen, a tree walk.
func (fs *FS) lookupAt(x *txn, dirfd int, name []byte, e *fuse.EntryOut) unix.Errno {
	var st unix.Statx_t
	fd := -1
	if fs.deferOpen || fs.lookupScore.Load() >= 0 {
		if err := statxAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, statxMask, &st); err != nil {
			return errno(err)
		}
	} else {
		var eno unix.Errno
		if fd, eno = openPathStat(dirfd, name, &st); eno != 0 {
			return eno
		}
	}
	k := keyOf(&st)
	fs.imu.Lock()
	// A known inode with its fd open is the one st describes: the fd keeps
	// its number from being reused. A deferred one is opened now, which
	// checks it (its handle still opens an inode with key k, so k is still
	// its: keys are unique among live inodes) and makes the next hits one
	// statx; a stale one is dropped and the name looked up as new.
	if in := fs.byKey[k]; in != nil && fs.openDeferredLocked(in) == 0 {
		fs.countLocked(x, in)
		id := fs.nodeidOf(in)
		fs.imu.Unlock()
		fs.scoreLookup(true)
		closeFd(fd)
		fs.fillEntry(e, id, &st)
		return 0
	}
	fs.imu.Unlock()
	fs.scoreLookup(false)
	var fh *fileHandle
	var fhb fileHandle
	if fd < 0 && fs.deferrable(&st) && nameToHandleAt(dirfd, name, 0, &fhb) == nil {
		fh = &fhb
	}
	if fd < 0 && fh == nil {
		var eno unix.Errno
		if fd, eno = openPathStat(dirfd, name, &st); eno != 0 {
			return eno
		}
	}
	id, _, eno := fs.adopt(x, fd, fh, &st)
	if eno != 0 {
		return eno
	}
	fs.fillEntry(e, id, &st)
	return 0
}

// deferrable reports whether a new inode with statx st may be recorded
// without an fd: one a file handle on the root's mount reopens, and that
// has a link (adopt keeps the fd of one without).
func (fs *FS) deferrable(st *unix.Statx_t) bool {
	return fs.deferOpen && st.Nlink > 0 && keyOf(st)[2] == fs.root.key[2]
}

// openPathStat opens name under dirfd O_PATH (never following a symlink)
// and fills st from what it opened.
func openPathStat(dirfd int, name []byte, st *unix.Statx_t) (int, unix.Errno) {
	fd, err := openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, errno(err)
	}
	if err := statxFd(fd, st); err != nil {
		unix.Close(fd)
		return -1, errno(err)
	}
	return fd, 0
}

// scoreLookup moves lookupScore: +2 for a known inode, -1 for a new one,
// within ±32, so it drifts up exactly when more than a third of lookups
// hit. Racy updates between queue threads only blur the estimate.
func (fs *FS) scoreLookup(hit bool) {
	v := fs.lookupScore.Load()
	if hit {
		v = min(v+2, 32)
	} else {
		v = max(v-1, -32)
	}
	fs.lookupScore.Store(v)
}

// entryOf counts a reference to the pinned inode in and fills e with its
// current attributes.
func (fs *FS) entryOf(x *txn, in *inode, e *fuse.EntryOut) unix.Errno {
	var st unix.Statx_t
	if err := statxFd(in.fd, &st); err != nil {
		return errno(err)
	}
	if eno := fs.ref(x, in); eno != 0 {
		return eno
	}
	fs.fillEntry(e, fs.nodeidOf(in), &st)
	return 0
}

// adoptOpen turns a freshly opened (non-O_PATH) fd into a guest reference:
// it takes the inode's file handle from fd (deferOpen), or re-opens it
// O_PATH through procfs (the same inode, whatever happened to the name
// meanwhile), fills e and returns the inode (as adopt).
func (fs *FS) adoptOpen(x *txn, fd int, e *fuse.EntryOut) (*inode, unix.Errno) {
	if fs.deferOpen {
		var st unix.Statx_t
		if err := statxFd(fd, &st); err != nil {
			return nil, errno(err)
		}
		var fh fileHandle
		if fs.deferrable(&st) && nameToHandle(fd, &fh) == nil {
			id, in, eno := fs.adopt(x, -1, &fh, &st)
			if eno != 0 {
				return nil, eno
			}
			fs.fillEntry(e, id, &st)
			return in, 0
		}
	}
	pfd, err := fs.reopen(fd, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return nil, errno(err)
	}
	var st unix.Statx_t
	if err := statxFd(pfd, &st); err != nil {
		unix.Close(pfd)
		return nil, errno(err)
	}
	id, in, eno := fs.adopt(x, pfd, nil, &st)
	if eno != 0 {
		return nil, eno
	}
	fs.fillEntry(e, id, &st)
	return in, 0
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
// u32, kind u32 (1 file, 2 directory). Records of journaled opens are keyed
// by the creating request (handleKey), so that a resubmitted open finds the
// handle its crashed run made; the fd is in the fd store as "fh.<id>".
type handle struct {
	fdRef
	id     maptable.ID
	nodeid uint64
	flags  int
	dir    *dirState // nil for files
	ino    *inode    // counted in ino.opens; nil for handles loaded after a restart
}

const (
	kindFile = 1
	kindDir  = 2
)

// dirState serialises READDIR on one directory handle (seek + getdents) and
// keeps what getdents returned beyond the last reply: the guest reads a
// directory in small requests, each from where the last one stopped, and
// re-reading from a seek per request made every request pay for a whole
// getdents buffer (and, on ext4, a refill of its hash-order tree).
type dirState struct {
	mu sync.Mutex
	// +checklocks:mu
	rest []byte // linux_dirent64 records after the last one answered
	// +checklocks:mu
	next uint64 // the offset rest continues (d_off of the last answered)
}

// maxDirCache bounds the bytes all directory handles keep in dirState.rest
// (a guest may hold 64Ki open directories); past it, requests re-read.
const maxDirCache = 16 << 20

// uncacheDir drops h's readdir cache (h is going away).
func (fs *FS) uncacheDir(h *handle) {
	if h.dir == nil {
		return
	}
	h.dir.mu.Lock()
	fs.setDirCache(h.dir, nil, 0)
	h.dir.mu.Unlock()
}

// setDirCache replaces d.rest by a copy of b (nil: none), within the budget.
// Precondition: d.mu held.
func (fs *FS) setDirCache(d *dirState, b []byte, next uint64) {
	old := int64(cap(d.rest))
	if len(b) == 0 {
		if old > 0 {
			fs.dirCache.Add(-old)
		}
		d.rest = nil
		return
	}
	if int64(len(b)) <= old {
		d.rest = append(d.rest[:0], b...) // may overlap: a memmove
		d.next = next
		return
	}
	if fs.dirCache.Add(int64(len(b))-old) > maxDirCache {
		fs.dirCache.Add(-int64(len(b)))
		d.rest = nil
		return
	}
	d.rest = append([]byte(nil), b...)
	if c := int64(cap(d.rest)); c != int64(len(b)) {
		fs.dirCache.Add(c - int64(len(b)))
	}
	d.next = next
}

// handleKey is the key of the handle record a journaled request creates:
// (queue, head), its journal generation and unique. The zero Key (no index
// entry) when the request has no journal slot.
func handleKey(x *txn, q int, head uint16) maptable.Key {
	if !x.on {
		return maptable.Key{}
	}
	return maptable.Key{1<<63 | uint64(q)<<16 | uint64(head), uint64(x.gen), x.unique}
}

// newHandle takes ownership of fd and returns the fh naming it; the fd goes
// to the fd store before the fh is answered. in is the handle's inode, the
// caller's (pinned or referenced).
func (fs *FS) newHandle(k maptable.Key, fd int, in *inode, flags int, dir bool) (uint64, unix.Errno) {
	nodeid := fs.nodeidOf(in)
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
	id, err := fs.handles.Insert(k, rec[:])
	if err != nil {
		fs.hmu.Unlock()
		unix.Close(fd)
		if errors.Is(err, maptable.ErrExists) {
			return 0, unix.EIO
		}
		return 0, errno(err)
	}
	crashpoint.Hit(crashpoint.MidMaptableInsert) // record inserted, its fd not yet stored
	h.id = id
	fs.installHandleLocked(h)
	if fs.store != nil {
		h.pins.Add(1) // the store queue's (storeLazy)
	}
	fs.hmu.Unlock()
	crash(cpMaptable)
	if fs.store != nil {
		h.ino = in
		in.opens.Add(1)
		if in.gone.Load() {
			// Its last link went while no handle was open (or is going
			// now): this handle makes it reachable again, keep it.
			fs.keep(in)
		}
		fs.storeLazy(h)
		crash(cpStore)
	}
	return uint64(id), 0
}

// installHandleLocked makes h reachable by its fh.
// Precondition: fs.hmu held for writing.
func (fs *FS) installHandleLocked(h *handle) {
	fs.hslots.set(h.id.Slot(), h)
}

// getHandle pins the handle fh names; EBADF when there is none. After a
// restart a handle is loaded from its record and the fd store on first use.
func (fs *FS) getHandle(fh uint64) (*handle, unix.Errno) {
	slot := uint32(fh)
	fs.hmu.RLock()
	if h := fs.hslots.get(slot); h != nil && uint64(h.id) == fh {
		h.pins.Add(1)
		fs.hmu.RUnlock()
		return h, 0
	}
	fs.hmu.RUnlock()
	if !fs.lazy || fh>>32 == 0 {
		return nil, unix.EBADF
	}
	fs.hmu.Lock()
	h, eno := fs.materializeHandleLocked(maptable.ID(fh), -1)
	if eno == errNoStoredFD {
		// The record is there, its fd never reached the store (storeQueue:
		// the worker died between the journal's done record and the
		// flush). Re-open it from its inode, outside hmu (the inode may
		// have to be loaded: imu).
		fs.hmu.Unlock()
		fd, eno2 := fs.reopenHandle(maptable.ID(fh))
		if eno2 != 0 {
			return nil, eno2
		}
		fs.hmu.Lock()
		h, eno = fs.materializeHandleLocked(maptable.ID(fh), fd)
	}
	defer fs.hmu.Unlock()
	if eno != 0 {
		return nil, eno
	}
	h.pins.Add(1)
	return h, 0
}

// errNoStoredFD: materializeHandleLocked found the record but no fd.
const errNoStoredFD = unix.Errno(^uintptr(0))

// reopenHandle opens the file or directory of handle record id again, with
// the record's flags (those that only matter at creation removed), through
// its inode. Only regular files and directories: opening anything else
// could block or have side effects.
func (fs *FS) reopenHandle(id maptable.ID) (int, unix.Errno) {
	var rec [handleRecSize]byte
	fs.hmu.RLock()
	err := fs.handles.Get(id, rec[:])
	fs.hmu.RUnlock()
	if err != nil {
		return -1, unix.EBADF
	}
	le := binary.LittleEndian
	nodeid, flags, kind := le.Uint64(rec[0:]), int(le.Uint32(rec[8:])), le.Uint32(rec[12:])
	in, eno := fs.getInode(nodeid)
	if eno != 0 {
		return -1, eno
	}
	defer in.unpin()
	var fd int
	switch {
	case kind == kindFile && in.typ == unix.S_IFREG:
		flags &^= unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_NOCTTY | unix.O_NOFOLLOW | (unix.O_TMPFILE &^ unix.O_DIRECTORY)
		fd, err = fs.reopen(in.fd, flags|unix.O_CLOEXEC)
	case kind == kindDir && in.typ == unix.S_IFDIR:
		fd, err = openat(in.fd, dotName[:1], unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	default:
		return -1, unix.EBADF
	}
	if err != nil {
		return -1, errno(err)
	}
	return fd, 0
}

// removeHandle unlinks fh from the table and the fd store and returns it
// pinned (the caller unpins, which closes the fd once other users are
// done). A record whose fd is lost (a crash before it reached the store) is
// deleted too, and answers EBADF.
func (fs *FS) removeHandle(fh uint64) (*handle, unix.Errno) {
	h, eno := fs.getHandle(fh)
	if eno != 0 {
		if fs.lazy && fh>>32 != 0 {
			fs.hmu.Lock()
			fs.handles.Delete(maptable.ID(fh))
			fs.hmu.Unlock()
		}
		return nil, eno
	}
	h.unpin()
	slot := uint32(fh)
	fs.hmu.Lock()
	if fs.hslots.get(slot) == h {
		fs.hslots.clear(slot)
		fs.handles.Delete(h.id)
		h.pins.Add(1)
		h.dead.Store(true)
		fs.hmu.Unlock()
		if h.ino != nil {
			h.ino.opens.Add(-1)
		}
		fs.uncacheDir(h)
		crash(cpMaptable)
		if fs.store != nil {
			fs.sq.dropHandle(fh)
			crash(cpStore)
		}
		return h, 0
	}
	fs.hmu.Unlock()
	return nil, unix.EBADF
}
