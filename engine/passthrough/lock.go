package passthrough

import (
	"encoding/binary"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/maptable"
)

// Locks.
//
// POSIX locks (fcntl F_SETLK and friends in the guest) belong to a lock
// owner, which Linux sends as fuse_lk_in.owner: one per files_struct, so
// processes sharing an open file after fork are different owners and their
// locks conflict, while one process's locks through two opens of a file are
// one owner's. As in the C virtiofsd, each (inode, owner) that takes a lock
// gets its own host open file description, a re-open of the inode through
// /proc/self/fd (O_RDWR, or the handle's access mode where the host refuses
// write access), and the lock is an OFD lock (F_OFD_*) on that fd: the host
// kernel does the conflict checks, merging and splitting. GETLK asks through
// the owner's fd (its own locks never conflict), or through the handle's fd
// for an owner without one (it holds no POSIX locks). An unlock by an owner
// without an fd has nothing to drop and opens nothing.
//
// FLUSH (a close(2) in the guest) closes the flushing owner's fd of the
// file: POSIX drops a process's locks on a file when it closes any fd of it.
// RELEASE with FUSE_RELEASE_FLOCK_UNLOCK drops the flock and that owner's
// lock fd; FORGET of the inode and DESTROY drop all of its lock fds. There are
// at most Options.MaxLockFDs lock fds (a new owner past that answers ENOLCK):
// a guest cannot make the worker open fds without bound.
//
// The lock fds carry lock state, so they survive a worker crash: each goes
// to the fd store as "lk.<nodeid>.<owner>" (both hex) before any lock is
// taken on it and is removed when it is closed; a resumed FS takes them all
// back in New (checked against the inode records) and re-locking on the same
// open file description is idempotent.
//
// flock(2) requests (FUSE_LK_FLOCK) lock the handle's own open file, as
// flock does. SETLKW never blocks in the kernel: it retries the
// non-blocking form with growing sleeps until it succeeds, the guest
// INTERRUPTs that request, the handle or the owner's lock fd goes away,
// DESTROY ends the session, or CancelWaits (frontend disconnect) ends every
// wait. It also ends, with EINTR, after lockWaitSlice without the lock:
// Linux's virtiofs driver never sends INTERRUPT, so a guest process killed
// while it waits in F_SETLKW would otherwise stay in D state until the lock
// is freed — forever when the holder is its own parent waiting for it to
// exit (stress-ng --lockf does exactly that at its timeout). EINTR is what
// F_SETLKW answers when a signal arrives; callers that want the lock retry,
// callers that were killed can finally exit.

// plock is the open file description of one (inode, owner): POSIX locks
// are OFD locks on it. fd is set by the creator before it unlocks ready;
// users and removers wait for ready (lock, unlock) before touching fd.
type plock struct {
	fdRef
	ready sync.Mutex
	err   unix.Errno // creation failed (fd -1); set before ready is unlocked
}

type plockKey struct{ nodeid, owner uint64 }

// plocks holds the lock fds. Lock order: a leaf (no other lock is taken
// under mu; syscalls are made outside it).
type plocks struct {
	mu sync.Mutex
	// +checklocks:mu
	byInode map[uint64]map[uint64]*plock
	// +checklocks:mu
	n int
}

func lkName(nodeid, owner uint64) string {
	return "lk." + strconv.FormatUint(nodeid, 16) + "." + strconv.FormatUint(owner, 16)
}

func parseLkName(name string) (nodeid, owner uint64, ok bool) {
	rest, ok := strings.CutPrefix(name, "lk.")
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(rest, ".")
	if !ok {
		return 0, 0, false
	}
	n, err1 := strconv.ParseUint(a, 16, 64)
	o, err2 := strconv.ParseUint(b, 16, 64)
	return n, o, err1 == nil && err2 == nil
}

// insertLocked adds p under k.
// Precondition: l.mu held.
func (l *plocks) insertLocked(k plockKey, p *plock) {
	m := l.byInode[k.nodeid]
	if m == nil {
		m = make(map[uint64]*plock)
		l.byInode[k.nodeid] = m
	}
	m[k.owner] = p
	l.n++
}

// removeLocked unlinks p if it is still k's.
// Precondition: l.mu held.
func (l *plocks) removeLocked(k plockKey, p *plock) bool {
	m := l.byInode[k.nodeid]
	if m == nil || m[k.owner] != p {
		return false
	}
	delete(m, k.owner)
	if len(m) == 0 {
		delete(l.byInode, k.nodeid)
	}
	l.n--
	return true
}

// resumeLocks takes back the lock fds a previous worker stored: each must
// be a regular file whose inode is the one the nodeid's record names; any
// other is closed and removed from the store.
func (fs *FS) resumeLocks() {
	fs.rmu.Lock()
	var names []string
	for name := range fs.resumeFDs {
		if strings.HasPrefix(name, "lk.") {
			names = append(names, name)
		}
	}
	fs.rmu.Unlock()
	rec := make([]byte, fs.irec)
	for _, name := range names {
		fd := fs.takeFD(name)
		nodeid, owner, ok := parseLkName(name)
		if ok && name == lkName(nodeid, owner) && fs.inodes.Get(maptable.ID(nodeid), rec) == nil {
			le := binary.LittleEndian
			k := maptable.Key{le.Uint64(rec[recKey:]), le.Uint64(rec[recKey+8:]), le.Uint64(rec[recKey+16:])}
			var st unix.Statx_t
			ok = statxFd(fd, &st) == nil && keyOf(&st) == k && uint32(st.Mode)&unix.S_IFMT == unix.S_IFREG
		} else {
			ok = false
		}
		if !ok {
			unix.Close(fd)
			if fs.store != nil {
				fs.sq.remove(name)
			}
			continue
		}
		p := &plock{}
		p.fd = fd
		fs.plk.mu.Lock()
		fs.plk.insertLocked(plockKey{nodeid, owner}, p)
		fs.plk.mu.Unlock()
	}
}

// ownerLock pins the lock fd of (h's inode, owner). Without one: nil when
// create is false; else it is opened, stored and installed. The caller
// unpins.
func (fs *FS) ownerLock(h *handle, owner uint64, create bool) (*plock, unix.Errno) {
	k := plockKey{h.nodeid, owner}
	fs.plk.mu.Lock()
	p := fs.plk.byInode[k.nodeid][k.owner]
	if p != nil {
		p.pins.Add(1)
		fs.plk.mu.Unlock()
		p.ready.Lock()
		e := p.err
		p.ready.Unlock()
		if e != 0 {
			p.unpin()
			return nil, e
		}
		return p, 0
	}
	if !create {
		fs.plk.mu.Unlock()
		return nil, 0
	}
	if fs.plk.n >= fs.opts.MaxLockFDs {
		fs.plk.mu.Unlock()
		return nil, unix.ENOLCK
	}
	p = &plock{}
	p.fd = -1
	p.pins.Add(1)
	p.ready.Lock()
	fs.plk.insertLocked(k, p)
	fs.plk.mu.Unlock()

	fd, e := fs.openLockFD(h)
	stored := false
	if e == 0 && fs.store != nil {
		// Durable before any lock is taken on it.
		if err := fs.storeFD(lkName(k.nodeid, k.owner), fd); err != nil {
			fs.storeErrs.Add(1)
		}
		stored = true
	}
	if e != 0 {
		p.err = e
		fs.plk.mu.Lock()
		fs.plk.removeLocked(k, p)
		fs.plk.mu.Unlock()
		p.ready.Unlock()
		p.kill()
		p.unpin()
		return nil, e
	}
	p.fd = fd
	p.ready.Unlock()
	if stored {
		crash(cpStore)
	}
	return p, 0
}

// openLockFD opens a new open file description of h's inode: read-write
// when the host allows it (a lock of either type), else h's access mode.
func (fs *FS) openLockFD(h *handle) (int, unix.Errno) {
	in, eno := fs.getInode(h.nodeid)
	if eno != 0 {
		return -1, eno
	}
	defer in.unpin()
	if in.typ != unix.S_IFREG {
		return -1, unix.EBADF
	}
	const flags = unix.O_CLOEXEC | unix.O_LARGEFILE | unix.O_NOCTTY
	fd, err := fs.reopen(in.fd, unix.O_RDWR|flags)
	switch err {
	case nil:
		return fd, 0
	case unix.EACCES, unix.EPERM, unix.EROFS, unix.ETXTBSY:
		if acc := h.flags & unix.O_ACCMODE; acc != unix.O_RDWR {
			if fd, err = fs.reopen(in.fd, acc|flags); err == nil {
				return fd, 0
			}
		}
	}
	return -1, errno(err)
}

// dropOwnerLock closes (nodeid, owner)'s lock fd, dropping its locks, and
// removes it from the store.
func (fs *FS) dropOwnerLock(nodeid, owner uint64) {
	k := plockKey{nodeid, owner}
	fs.plk.mu.Lock()
	p := fs.plk.byInode[nodeid][owner]
	if p == nil || !fs.plk.removeLocked(k, p) {
		fs.plk.mu.Unlock()
		return
	}
	fs.plk.mu.Unlock()
	fs.killPlock(k, p)
}

// dropInodeLocks closes every lock fd of nodeid (FORGET freed it).
func (fs *FS) dropInodeLocks(nodeid uint64) {
	fs.plk.mu.Lock()
	m := fs.plk.byInode[nodeid]
	if m == nil {
		fs.plk.mu.Unlock()
		return
	}
	delete(fs.plk.byInode, nodeid)
	fs.plk.n -= len(m)
	fs.plk.mu.Unlock()
	for owner, p := range m {
		fs.killPlock(plockKey{nodeid, owner}, p)
	}
}

// dropAllLocks closes every lock fd; store says whether the store's copies
// go too (DESTROY) or stay for a successor (Close).
func (fs *FS) dropAllLocks(store bool) {
	fs.plk.mu.Lock()
	all := fs.plk.byInode
	fs.plk.byInode = make(map[uint64]map[uint64]*plock)
	fs.plk.n = 0
	fs.plk.mu.Unlock()
	for nodeid, m := range all {
		for owner, p := range m {
			if store {
				fs.killPlock(plockKey{nodeid, owner}, p)
			} else {
				p.ready.Lock()
				p.ready.Unlock()
				p.kill()
			}
		}
	}
}

// killPlock closes an unlinked plock once its users are done, after
// removing its stored copy (a crash in between leaves a stored fd that the
// next worker takes back: FLUSH and FORGET re-executed drop it again).
//
// The owner's locks are dropped explicitly first: the store's copy keeps
// the open file description, and with it the OFD locks, alive until the
// supervisor reads the remove (up to its coalescing delay later), and the
// guest may take a conflicting lock as soon as FLUSH is answered.
func (fs *FS) killPlock(k plockKey, p *plock) {
	p.ready.Lock()
	failed := p.err != 0
	p.ready.Unlock()
	if !failed {
		un := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: 0, Len: 0}
		unix.FcntlFlock(uintptr(p.fd), unix.F_OFD_SETLK, &un)
	}
	if !failed && fs.store != nil {
		fs.sq.remove(lkName(k.nodeid, k.owner))
		crash(cpStore)
	}
	p.kill()
}

// lockState tracks SETLKW waiters by request unique.
type lockState struct {
	// gate orders retries against cancelAll: a waiter retries holding it
	// shared, after checking that it was not cancelled; cancelAll, after
	// closing every waiter's channel, takes it exclusively once. So when
	// cancelAll returns no waiter is trying and none will try again, and
	// DESTROY can close the handles: a lock they held can no longer go to
	// a cancelled waiter (which then answers EINTR, never success).
	gate sync.RWMutex
	mu   sync.Mutex
	// +checklocks:mu
	waiters map[uint64]chan struct{}
	// early holds INTERRUPTs that arrived before their SETLKW started (the
	// helper goroutine may not have run yet); uniques never repeat within a
	// session, and DESTROY clears it.
	// +checklocks:mu
	early [16]uint64
	// +checklocks:mu
	next int
}

func (l *lockState) init() { l.waiters = make(map[uint64]chan struct{}) }

// add registers a waiter; false when the request was already interrupted.
func (l *lockState) add(unique uint64) (chan struct{}, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, u := range l.early {
		if u == unique && u != 0 {
			l.early[i] = 0
			return nil, false
		}
	}
	ch := make(chan struct{})
	l.waiters[unique] = ch
	return ch, true
}

func (l *lockState) remove(unique uint64, ch chan struct{}) {
	l.mu.Lock()
	if l.waiters[unique] == ch {
		delete(l.waiters, unique)
	}
	l.mu.Unlock()
}

// interrupt cancels the waiter for unique, or remembers the interrupt.
func (l *lockState) interrupt(unique uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ch, ok := l.waiters[unique]; ok {
		delete(l.waiters, unique)
		close(ch)
		return
	}
	l.early[l.next] = unique
	l.next = (l.next + 1) % len(l.early)
}

// cancelAll ends every wait (DESTROY, Close) and returns once no
// cancelled waiter is still retrying (gate).
func (l *lockState) cancelAll() {
	l.mu.Lock()
	for u, ch := range l.waiters {
		delete(l.waiters, u)
		close(ch)
	}
	l.early = [16]uint64{}
	l.mu.Unlock()
	l.gate.Lock()
	l.gate.Unlock()
}

// retry runs one retry of the waiter whose channel is ch, unless it was
// cancelled: then it answers EINTR. attempt reports the answer and whether
// the wait is over.
func (l *lockState) retry(ch chan struct{}, attempt func() (unix.Errno, bool)) (unix.Errno, bool) {
	l.gate.RLock()
	defer l.gate.RUnlock()
	select {
	case <-ch:
		return unix.EINTR, true
	default:
	}
	return attempt()
}

// Retry schedule of SETLKW; variables so tests can shorten them.
var (
	lockRetryMin = time.Millisecond
	lockRetryMax = 50 * time.Millisecond
)

// toFlock converts a FUSE lock range (inclusive end, OFFSET_MAX = to EOF).
func toFlock(lk *fuse.FileLock, fl *unix.Flock_t) unix.Errno {
	switch lk.Type {
	case unix.F_RDLCK, unix.F_WRLCK, unix.F_UNLCK:
	default:
		return unix.EINVAL
	}
	if lk.Start > fuse.OffsetMax || lk.End < lk.Start {
		return unix.EINVAL
	}
	*fl = unix.Flock_t{Type: int16(lk.Type), Whence: unix.SEEK_SET, Start: int64(lk.Start)}
	if lk.End < fuse.OffsetMax {
		fl.Len = int64(lk.End-lk.Start) + 1
	}
	return 0
}

// CancelWaits ends every pending SETLKW: each answers EINTR (an interrupted
// system call in the guest, which restarts or reports it). The worker calls
// it when the frontend disconnects, before it stops the queues, so that
// stopping never waits for a lock some other host process holds. It does
// not stop later SETLKWs from waiting; the locks already granted stay.
// Safe to call from any goroutine, any number of times.
func (fs *FS) CancelWaits() { fs.locks.cancelAll() }

func (fs *FS) opGetlk(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.LkIn
	fuse.Parse(arg, &in)
	if in.LkFlags&fuse.LkFlock != 0 {
		rep.Error(unix.EINVAL)
		return
	}
	var fl unix.Flock_t
	if eno := toFlock(&in.Lk, &fl); eno != 0 {
		rep.Error(eno)
		return
	}
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	// Through the owner's own open file description its own locks do not
	// conflict; an owner without one holds none, and the handle's fd holds
	// no POSIX locks.
	fd := h.fd
	p, eno := fs.ownerLock(h, in.Owner, false)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	if p != nil {
		defer p.unpin()
		fd = p.fd
	}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
		rep.Error(errno(err))
		return
	}
	out := fuse.LkOut{Lk: in.Lk}
	out.Lk.PID = 0
	if fl.Type != unix.F_UNLCK {
		out.Lk.Type = uint32(fl.Type)
		out.Lk.Start = uint64(fl.Start)
		out.Lk.End = fuse.OffsetMax
		if fl.Len > 0 {
			out.Lk.End = uint64(fl.Start + fl.Len - 1)
		}
	} else {
		out.Lk.Type = unix.F_UNLCK
	}
	rep.Ok(fuse.Bytes(&out))
}

func (fs *FS) opSetlk(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.setlk(req, rep, arg, false)
}

func (fs *FS) opSetlkw(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.setlk(req, rep, arg, true)
}

func (fs *FS) setlk(req *fuse.Request, rep *fuse.Reply, arg []byte, wait bool) {
	var in fuse.LkIn
	fuse.Parse(arg, &in)
	var fl unix.Flock_t
	if eno := toFlock(&in.Lk, &fl); eno != 0 {
		rep.Error(eno)
		return
	}
	h, eno := fs.fileHandle(in.Fh)
	if eno != 0 {
		rep.Error(eno)
		return
	}
	defer h.unpin()
	flock := in.LkFlags&fuse.LkFlock != 0
	if flock && fl.Type != unix.F_UNLCK && fs.sq != nil {
		// The flock lives on the handle's open file description: its fd
		// must be in the store before the lock is taken (a lazily queued
		// handle store would otherwise be re-opened, lockless, after a
		// crash).
		if err := fs.sq.flush(); err != nil {
			fs.storeErrs.Add(1)
		}
	}
	var p *plock
	if !flock {
		// An unlock by an owner without a lock fd has nothing to drop.
		p, eno = fs.ownerLock(h, in.Owner, fl.Type != unix.F_UNLCK)
		if eno != 0 {
			rep.Error(eno)
			return
		}
		if p == nil {
			rep.Ok()
			return
		}
		defer p.unpin()
	}
	try := func() error {
		if flock {
			how := unix.LOCK_UN
			switch fl.Type {
			case unix.F_RDLCK:
				how = unix.LOCK_SH
			case unix.F_WRLCK:
				how = unix.LOCK_EX
			}
			return unix.Flock(h.fd, how|unix.LOCK_NB)
		}
		err := unix.FcntlFlock(uintptr(p.fd), unix.F_OFD_SETLK, &fl)
		crash(cpSyscall)
		return err
	}
	err := try()
	if err == nil {
		rep.Ok()
		return
	}
	if !wait || !contended(err) {
		rep.Error(errno(err))
		return
	}
	ch, ok := fs.locks.add(req.Unique)
	if !ok {
		rep.Error(unix.EINTR)
		return
	}
	defer fs.locks.remove(req.Unique, ch)
	delay := lockRetryMin
	deadline := time.Now().Add(lockWaitSlice)
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ch:
			rep.Error(unix.EINTR)
			return
		case <-t.C:
		}
		eno, done := fs.locks.retry(ch, func() (unix.Errno, bool) {
			if h.dead.Load() || p != nil && p.dead.Load() {
				return unix.EBADF, true // released (or the owner's lock fd flushed) under us
			}
			switch err := try(); {
			case err == nil:
				return 0, true
			case !contended(err):
				return errno(err), true
			}
			return 0, false
		})
		switch {
		case done && eno == 0:
			rep.Ok()
			return
		case done:
			rep.Error(eno)
			return
		}
		if time.Now().After(deadline) {
			rep.Error(unix.EINTR)
			return
		}
		delay = min(2*delay, lockRetryMax)
		t.Reset(delay)
	}
}

// lockWaitSlice bounds one SETLKW wait (see the package comment); a
// variable so tests can shorten it.
var lockWaitSlice = 10 * time.Second

func contended(err error) bool {
	return err == unix.EAGAIN || err == unix.EACCES
}

// opInterrupt cancels a pending SETLKW with that unique; other requests
// finish on their own. No reply.
func (fs *FS) opInterrupt(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.InterruptIn
	fuse.Parse(arg, &in)
	fs.locks.interrupt(in.Unique)
	rep.NoReply()
}
