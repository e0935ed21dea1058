package passthrough

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// Locks. POSIX locks are OFD locks (F_OFD_*) on the handle's open file
// description: a guest fh is one host open, so they follow the guest's open
// file, not a host pid. flock(2) requests (FUSE_LK_FLOCK) use flock on the
// same fd. SETLKW never blocks in the kernel: it retries the non-blocking
// form with growing sleeps until it succeeds, the guest INTERRUPTs that
// request, the handle is released, or DESTROY ends the session.

// lockState tracks SETLKW waiters by request unique.
type lockState struct {
	mu sync.Mutex
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

// cancelAll ends every wait (DESTROY, Close).
func (l *lockState) cancelAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for u, ch := range l.waiters {
		delete(l.waiters, u)
		close(ch)
	}
	l.early = [16]uint64{}
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
	if err := unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_GETLK, &fl); err != nil {
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
		return unix.FcntlFlock(uintptr(h.fd), unix.F_OFD_SETLK, &fl)
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
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ch:
			rep.Error(unix.EINTR)
			return
		case <-t.C:
		}
		if h.dead.Load() {
			// Released under us; at DESTROY (which cancels before it
			// closes) the answer is EINTR like any cancelled wait.
			select {
			case <-ch:
				rep.Error(unix.EINTR)
			default:
				rep.Error(unix.EBADF)
			}
			return
		}
		err := try()
		if err == nil {
			rep.Ok()
			return
		}
		if !contended(err) {
			rep.Error(errno(err))
			return
		}
		delay = min(2*delay, lockRetryMax)
		t.Reset(delay)
	}
}

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
