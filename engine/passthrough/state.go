package passthrough

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"vfsd/engine/crashpoint"
	"vfsd/engine/fuse"
	"vfsd/engine/journal"
	"vfsd/maptable"
)

// Persistence across worker restarts.
//
// What survives, and where (see DESIGN.md §2):
//   - the inode and handle maps: maptable memfds, fd store names
//     InodesFDName and HandlesFDName;
//   - the request journal and, in its header, the negotiated session:
//     journal.FDName;
//   - open file descriptions of handles (OPEN, CREATE, OPENDIR, TMPFILE):
//     stored as "fh.<id>" (id in hex) when the handle is created, before its
//     fh is answered, removed at RELEASE/RELEASEDIR;
//   - lock owners' open file descriptions (lock.go): "lk.<nodeid>.<owner>"
//     (hex), stored when an owner first locks an inode, before the lock,
//     removed at that owner's FLUSH, FORGET of the inode and DESTROY; a
//     resumed FS takes them all back in New, each checked against its
//     inode record (O(lock fds), not O(inodes));
//   - O_PATH fds of inodes a file handle cannot reopen: no handle, another
//     mount than the root's, or no link left (unlinked or TMPFILE while the
//     guest can reach it: keepIfLastLink): "ino.<id>", stored before the
//     unlink that drops the last link (or at first reference), removed when
//     FORGET frees the inode.
//
// All other inode fds are re-derived lazily: a restarted FS maps the tables
// (maptable.Open repairs at most one torn operation, O(1)), and an inode or
// handle is loaded from its record on first use (open_by_handle_at on the
// root's mount for inodes, the store's fd for handles), so restart cost does
// not depend on the number of inodes or handles. With deferOpen a loaded
// inode is opened only when a request needs its fd, as in a run without
// restart (a FORGET or a LOOKUP of it opens nothing).

// Fd store names of the FS's state memfds.
const (
	InodesFDName  = "vfsd.inodes"
	HandlesFDName = "vfsd.handles"
)

// FDStore keeps fds across worker restarts: *fdstore.Client implements it
// (a nil client is a no-op store). Store must return only once the fds are
// durable in the store (sendmsg returned).
type FDStore interface {
	Store(name string, fds ...int) error
	Remove(name string) error
}

func inoName(id uint64) string { return storeName("ino.", id) }
func fhName(id uint64) string  { return storeName("fh.", id) }

// storeName is prefix followed by id in hex, built with one allocation
// (the string); appendStoreName builds it in the caller's buffer.
func storeName(prefix string, id uint64) string {
	var b [24]byte
	return string(appendStoreName(b[:0], prefix, id))
}

func appendStoreName(b []byte, prefix string, id uint64) []byte {
	return strconv.AppendUint(append(b, prefix...), id, 16)
}

// storeFD hands fd to the store under name, durable on return. The crash
// point mid-fd-handover comes first: the fd exists (and its handle or
// inode record may), the store does not have it.
func (fs *FS) storeFD(name string, fd int) error {
	crashpoint.Hit(crashpoint.MidFDHandover)
	return fs.sq.storeNow(name, fd)
}

// storeLazy queues h's fd for the store under its fh name (storeQueue);
// the caller pinned h for the queue under fs.hmu. Failures are counted.
func (fs *FS) storeLazy(h *handle) {
	crashpoint.Hit(crashpoint.MidFDHandover)
	if fs.sq.store(fhName(uint64(h.id)), &h.fdRef) != nil {
		fs.storeErrs.Add(1)
	}
}

// StoreErrors is the number of fd store calls that failed (those fds would
// not survive a restart); for the worker to report.
func (fs *FS) StoreErrors() uint64 { return fs.storeErrs.Load() }

// takeFD takes the fd handed back under name (resume), or -1.
func (fs *FS) takeFD(name string) int {
	fs.rmu.Lock()
	defer fs.rmu.Unlock()
	fd, ok := fs.resumeFDs[name]
	if !ok {
		return -1
	}
	delete(fs.resumeFDs, name)
	return fd
}

// keep puts in's O_PATH fd in the store (once; a deferred inode is opened
// for it) and marks its record.
func (fs *FS) keep(in *inode) {
	if fs.store == nil || in == fs.root {
		return
	}
	fs.imu.Lock()
	done := in.flags&recKept != 0 || in.dead.Load() || fs.openDeferredLocked(in) != 0
	if !done {
		in.pins.Add(1)
	}
	fs.imu.Unlock()
	if done {
		return
	}
	defer in.unpin()
	if err := fs.storeFD(inoName(uint64(in.tid)), in.fd); err != nil {
		fs.storeErrs.Add(1)
		return
	}
	crash(cpStore)
	fs.imu.Lock()
	if !in.dead.Load() {
		in.flags |= recKept
		fs.inodes.Update(in.tid, in)
	}
	fs.imu.Unlock()
}

// keepIfLastLink keeps the fd of the inode with key k (if the guest knows
// it) when st says the coming unlink/rename drops its last link.
//
// Not a regular file without open handles: once its last link is gone, no
// program in the guest can reach it (no name, no open file; the guest
// kernel evicts it and sends FORGET), so a restarted worker never needs it.
// A request already in flight on its nodeid that finds it missing after a
// crash gets ESTALE, and the guest's VFS retries a path walk on ESTALE,
// which sees the name gone (the same answer as without the crash). Such an
// unlink sends nothing to the store. The handle count is exact only for
// inodes this worker inserted (fresh); others are always kept. A handle
// made after the unlink keeps the inode then (newHandle), before its fh
// is answered. Directories (a guest cwd) and other types (open fifos,
// devices: stat through the nodeid, no handle) are always kept.
func (fs *FS) keepIfLastLink(st *unix.Statx_t) {
	if fs.store == nil {
		return
	}
	if !(st.Nlink <= 1 || uint32(st.Mode)&unix.S_IFMT == unix.S_IFDIR && st.Nlink <= 2) {
		return
	}
	fs.imu.Lock()
	in, _ := fs.knownLocked(keyOf(st), -1, nil)
	fs.imu.Unlock()
	if in == nil {
		return
	}
	if in.fresh && in.typ == unix.S_IFREG {
		in.gone.Store(true)
		if in.opens.Load() == 0 {
			return
		}
	}
	fs.keep(in)
}

// parseInodeRec checks a record read from the (untrusted) map and reads
// it into in and fh (hasFh: the record has a handle).
func (fs *FS) parseInodeRec(rec []byte, in *inode, fh *fileHandle) (hasFh bool, ok bool) {
	le := binary.LittleEndian
	in.flags = le.Uint32(rec[recFlags:])
	in.typ = le.Uint32(rec[recType:])
	switch in.typ {
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFLNK, unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFCHR, unix.S_IFBLK:
	default:
		return false, false
	}
	in.key = maptable.Key{le.Uint64(rec[recKey:]), le.Uint64(rec[recKey+8:]), le.Uint64(rec[recKey+16:])}
	in.total = 0
	for i := range in.cnt {
		in.cnt[i] = int64(le.Uint64(rec[recCnt+8*i:]))
		in.total += in.cnt[i]
	}
	return decodeRecHandle(rec, fh)
}

// recordOnlyLocked returns an inode for record id with counters but no fd
// (fd -1), not installed: FORGET of an inode that can no longer be opened.
// Precondition: fs.imu held for writing.
func (fs *FS) recordOnlyLocked(id maptable.ID) *inode {
	var buf [recMax]byte
	rec := fs.recScratch(&buf)
	if fs.inodes.Get(id, rec) != nil {
		return nil
	}
	in := fs.newInode(maptable.Key{}, 0, -1)
	in.tid = id
	var fh fileHandle
	if _, ok := fs.parseInodeRec(rec, in, &fh); !ok {
		return nil
	}
	return in
}

// materializeLocked loads the inode of record id after a restart and
// installs it. Its fd is fd when >= 0 (taken over only on success), else
// the store's "ino.<id>", else open_by_handle_at on the root's mount, at
// once or (deferOpen) on first use. The fd's inode must match the record's
// key (else ESTALE). cur, when not nil, is the file handle of the inode the
// caller found with the record's key: another handle makes the record stale.
// Precondition: fs.imu held for writing.
func (fs *FS) materializeLocked(id maptable.ID, fd int, cur *fileHandle) (*inode, unix.Errno) {
	if in := fs.islots.get(id.Slot()); in != nil && in.tid == id {
		return in, 0
	}
	var buf [recMax]byte
	rec := fs.recScratch(&buf)
	if err := fs.inodes.Get(id, rec); err != nil {
		return nil, unix.ESTALE
	}
	in := fs.newInode(maptable.Key{}, 0, -1)
	in.tid = id
	var fh fileHandle
	hasFh, ok := fs.parseInodeRec(rec, in, &fh)
	if !ok || in.key == fs.root.key {
		return nil, unix.ESTALE
	}
	own := fd < 0
	// Also without recKept: a crash may have come between the store and
	// the flag.
	if sfd := fs.takeFD(inoName(uint64(id))); sfd >= 0 {
		in.flags |= recKept
		if own {
			fd = sfd
		} else {
			unix.Close(sfd)
		}
	} else if hasFh && (cur != nil && !cur.equal(&fh) || cur == nil && !own && !sameInode(fd, &fh)) {
		// The caller's fd has the record's key but is another inode: the
		// record's inode is gone (deleted while no fd kept it: a file
		// unlinked without open handles, or deleted on the host, then a
		// restart) and the filesystem reused its number. The guest may
		// still FORGET the old nodeid (ignored from now on: there is
		// nothing left to release) but can no longer use it; the caller
		// makes a record for the new inode.
		fs.inodes.Delete(id)
		crash(cpMaptable)
		return nil, unix.ESTALE
	}
	if fd < 0 && hasFh && fs.deferOpen {
		fs.installLocked(in) // opened and checked on first use
		return in, 0
	}
	if fd < 0 && hasFh {
		var err error
		fd, err = openByHandle(fs.mountfd, &fh, unix.O_PATH|unix.O_CLOEXEC)
		if err != nil {
			fd = -1
		}
	}
	if fd < 0 {
		return nil, unix.ESTALE
	}
	var st unix.Statx_t
	if err := statxFd(fd, &st); err != nil || keyOf(&st) != in.key || uint32(st.Mode)&unix.S_IFMT != in.typ {
		if own {
			unix.Close(fd)
		}
		return nil, unix.ESTALE
	}
	in.fd = fd
	if in.flags&recKept == 0 && fs.store != nil && (st.Nlink == 0 || !hasFh) {
		// Reachable now (an fd kept it alive), not after the next restart.
		if fs.storeFD(inoName(uint64(id)), fd) == nil {
			in.flags |= recKept
		}
	}
	if in.flags&recKept != 0 {
		fs.inodes.Update(in.tid, in)
	}
	fs.installLocked(in)
	return in, 0
}

// materializeHandleLocked loads the handle of record id after a restart,
// with fd (which it owns) or else the fd the store handed back as
// "fh.<id>". EBADF when the record is missing or disagrees with the fd;
// errNoStoredFD when there is no fd (the caller may re-open the handle).
// Precondition: fs.hmu held for writing.
func (fs *FS) materializeHandleLocked(id maptable.ID, fd int) (*handle, unix.Errno) {
	reopened, installed := fd >= 0, false
	defer func() {
		if !installed && fd >= 0 {
			unix.Close(fd) // refused, or loaded meanwhile by another request
		}
	}()
	if h := fs.hslots.get(id.Slot()); h != nil && h.id == id {
		return h, 0
	}
	var rec [handleRecSize]byte
	if fs.handles.Get(id, rec[:]) != nil {
		return nil, unix.EBADF
	}
	le := binary.LittleEndian
	h := &handle{id: id, nodeid: le.Uint64(rec[0:]), flags: int(le.Uint32(rec[8:]))}
	kind := le.Uint32(rec[12:])
	if kind != kindFile && kind != kindDir {
		return nil, unix.EBADF
	}
	if fd < 0 {
		if fd = fs.takeFD(fhName(uint64(id))); fd < 0 {
			return nil, errNoStoredFD
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || (st.Mode&unix.S_IFMT == unix.S_IFDIR) != (kind == kindDir) {
		return nil, unix.EBADF
	}
	h.fd = fd
	if kind == kindDir {
		h.dir = &dirState{}
	}
	fs.installHandleLocked(h)
	installed = true
	if reopened && fs.store != nil {
		h.pins.Add(1) // the store queue's
		fs.storeLazy(h)
	}
	return h, 0
}

// Session record in the journal header (little-endian).
const sessionRecSize = 32

func encodeSession(b []byte, s *fuse.Session) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], s.Major)
	le.PutUint32(b[4:], s.Minor)
	le.PutUint64(b[8:], s.Flags)
	le.PutUint32(b[16:], s.MaxReadahead)
	le.PutUint32(b[20:], s.MaxWrite)
	le.PutUint16(b[24:], s.MaxPages)
	if s.Initialized {
		b[26] = 1
	}
}

func decodeSession(b []byte) (fuse.Session, bool) {
	if len(b) != sessionRecSize || b[26] > 1 {
		return fuse.Session{}, false
	}
	le := binary.LittleEndian
	s := fuse.Session{Major: le.Uint32(b[0:]), Minor: le.Uint32(b[4:]), Flags: le.Uint64(b[8:]),
		MaxReadahead: le.Uint32(b[16:]), MaxWrite: le.Uint32(b[20:]), MaxPages: le.Uint16(b[24:]),
		Initialized: b[26] == 1}
	if s.Initialized && (s.Major != fuse.KernelVersion || s.Minor < minMinor || s.MaxWrite == 0 || s.MaxWrite > maxWrite) {
		return fuse.Session{}, false
	}
	return s, true
}

// stateNames are the fd store names of the FS's state memfds.
var stateNames = [...]string{InodesFDName, HandlesFDName, journal.FDName}

// ownName reports whether name is one the FS stores.
func ownName(name string) bool {
	for _, p := range [...]string{"fh.", "ino.", "lk."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return slices.Contains(stateNames[:], name)
}

// dropStale starts afresh from a resume map that lacks some of the state
// memfds: a predecessor killed between the worker's stores and the FS's
// (storeState) never served a request, so nothing is lost. Every fd is
// closed and the FS's names are removed from the store (a stale "fh.<id>"
// must not shadow a new handle's fd after the next restart).
func (fs *FS) dropStale(o *Options, missing []string) {
	var names []string
	for name, fd := range o.Resume {
		unix.Close(fd)
		if ownName(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if fs.store != nil {
		for _, name := range names {
			if !slices.Contains(stateNames[:], name) { // storeState replaces those
				fs.store.Remove(name)
			}
		}
	}
	o.Logger.Warn("passthrough: resume without this filesystem's state; starting afresh (the previous worker died before it served a request)",
		"missing", missing, "dropped", names)
	o.Resume = nil
	fs.opts.Resume = nil
}

// openState creates (fresh) or maps (resume) the state memfds.
func (fs *FS) openState(o *Options) error {
	if o.Resume != nil {
		var missing []string
		for _, name := range stateNames {
			if _, ok := o.Resume[name]; !ok {
				missing = append(missing, name)
			}
		}
		if missing != nil {
			fs.dropStale(o, missing)
		}
	}
	if o.Resume == nil {
		var err error
		if fs.inodes, err = maptable.Create("vfsd-inodes", o.MaxInodes, fs.irec); err != nil {
			return fmt.Errorf("inode map: %w", err)
		}
		if fs.handles, err = maptable.Create("vfsd-handles", o.MaxHandles, handleRecSize); err != nil {
			return fmt.Errorf("handle map: %w", err)
		}
		if fs.journal, err = journal.Create(o.Queues, o.QueueSize); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		return nil
	}
	fs.resumeFDs = o.Resume
	get := func(name string) (int, error) {
		fd := fs.takeFD(name)
		if fd < 0 {
			return -1, fmt.Errorf("resume: no fd %q handed back", name)
		}
		return fd, nil
	}
	open := func(name string, vsize int) (*maptable.Table, error) {
		fd, err := get(name)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		t, err := maptable.Open(fd)
		if err != nil {
			return nil, fmt.Errorf("resume %s: %w", name, err)
		}
		if t.ValueSize() != vsize {
			t.Close()
			return nil, fmt.Errorf("resume %s: record size %d, want %d: %w", name, t.ValueSize(), vsize, maptable.ErrCorrupt)
		}
		return t, nil
	}
	fd, err := get(journal.FDName)
	if err != nil {
		return err
	}
	fs.journal, err = journal.Map(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("resume journal: %w", err)
	}
	// The journal's geometry is the previous worker's; records carry one
	// counter per queue it had.
	fs.nq = fs.journal.Queues()
	fs.irec = recCnt + 8*fs.nq
	if fs.inodes, err = open(InodesFDName, fs.irec); err != nil {
		return err
	}
	if fs.handles, err = open(HandlesFDName, handleRecSize); err != nil {
		return err
	}
	fs.lazy = true
	return nil
}

// storeState hands the new state memfds to the store (fresh start). Each
// name is removed first: a worker that starts afresh while a predecessor's
// memfds are stored must replace them, never add a second fd of that name
// (which the next worker could be handed instead of the live one).
func (fs *FS) storeState() error {
	if fs.store == nil {
		return nil
	}
	var errs []error
	for i, fd := range [...]int{fs.inodes.FD(), fs.handles.FD(), fs.journal.FD()} {
		fs.store.Remove(stateNames[i]) // removing an absent name is a no-op
		errs = append(errs, fs.store.Store(stateNames[i], fd))
	}
	return errors.Join(errs...)
}
