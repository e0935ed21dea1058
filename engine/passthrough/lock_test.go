package passthrough

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// hostConflict asks, from a fresh host open file description of p, which
// lock conflicts with a write lock on [start, start+length).
func hostConflict(t *testing.T, p string, start, length int64) unix.Flock_t {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	l := unix.Flock_t{Type: unix.F_WRLCK, Whence: unix.SEEK_SET, Start: start, Len: length}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

func (c *tfs) setlk(nodeid, fh, owner uint64, typ uint32, start, end uint64) unix.Errno {
	e, _ := c.call(fuse.OpSetlk, nodeid, b(fuse.LkIn{Fh: fh, Owner: owner,
		Lk: fuse.FileLock{Start: start, End: end, Type: typ, PID: 42}}))
	return e
}

func (c *tfs) getlk(nodeid, fh, owner uint64, typ uint32, start, end uint64) fuse.FileLock {
	c.t.Helper()
	e, p := c.call(fuse.OpGetlk, nodeid, b(fuse.LkIn{Fh: fh, Owner: owner,
		Lk: fuse.FileLock{Start: start, End: end, Type: typ}}))
	if e != 0 {
		c.t.Fatalf("GETLK: %v", e)
	}
	return parse[fuse.LkOut](c.t, p).Lk
}

func (fs *FS) lockFDs() int {
	fs.plk.mu.Lock()
	defer fs.plk.mu.Unlock()
	return fs.plk.n
}

// TestPosixLockOwners: POSIX locks belong to (inode, lock owner), not to
// the fh: two owners sharing one fh (processes after fork) conflict, one
// owner through two fhs does not; FLUSH drops the flushing owner's locks
// only; unlocking opens nothing.
func TestPosixLockOwners(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), make([]byte, 100), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	fhRO := c.open(f.NodeID, unix.O_RDONLY)
	const a, bb, cc = 0xa, 0xb, 0xc

	wantErr(t, "unlock by an owner without locks", c.setlk(f.NodeID, fh, a, unix.F_UNLCK, 0, fuse.OffsetMax), 0)
	if n := c.fs.lockFDs(); n != 0 {
		t.Fatalf("an unlock opened %d lock fds", n)
	}
	wantErr(t, "A write [0,9]", c.setlk(f.NodeID, fh, a, unix.F_WRLCK, 0, 9), 0)
	wantErr(t, "B read [5,5] on the same fh", c.setlk(f.NodeID, fh, bb, unix.F_RDLCK, 5, 5), unix.EAGAIN)
	if lk := c.getlk(f.NodeID, fh, bb, unix.F_RDLCK, 0, 0); lk.Type != unix.F_WRLCK || lk.Start != 0 || lk.End != 9 {
		t.Errorf("GETLK B: %+v, want A's write lock [0,9]", lk)
	}
	if lk := c.getlk(f.NodeID, fh, a, unix.F_WRLCK, 0, fuse.OffsetMax); lk.Type != unix.F_UNLCK {
		t.Errorf("GETLK A sees its own lock: %+v", lk)
	}
	if lk := c.getlk(f.NodeID, fh, cc, unix.F_WRLCK, 10, 20); lk.Type != unix.F_UNLCK {
		t.Errorf("GETLK of a free range: %+v", lk)
	}
	// One owner, another fh (read-only): its locks are the same owner's.
	wantErr(t, "A read [5,5] through a read-only fh", c.setlk(f.NodeID, fhRO, a, unix.F_RDLCK, 5, 5), 0)
	if l := hostConflict(t, c.path("f"), 0, 10); l.Type != unix.F_WRLCK || l.Start != 0 || l.Len != 5 {
		t.Errorf("host sees %+v, want A's write lock split at 5", l)
	}
	wantErr(t, "B write [20,29]", c.setlk(f.NodeID, fhRO, bb, unix.F_WRLCK, 20, 29), 0)
	if n := c.fs.lockFDs(); n != 2 {
		t.Errorf("%d lock fds, want 2 (one per owner)", n)
	}
	// close(2) by A: A's locks go, B's stay.
	if e, _ := c.call(fuse.OpFlush, f.NodeID, b(fuse.FlushIn{Fh: fh, LockOwner: a})); e != 0 {
		t.Fatalf("FLUSH: %v", e)
	}
	if l := hostConflict(t, c.path("f"), 0, 20); l.Type != unix.F_UNLCK {
		t.Errorf("A's locks survived its FLUSH: %+v", l)
	}
	if l := hostConflict(t, c.path("f"), 0, 0); l.Type != unix.F_WRLCK || l.Start != 20 {
		t.Errorf("B's lock after A's FLUSH: %+v", l)
	}
	wantErr(t, "C write [0,9] after A's FLUSH", c.setlk(f.NodeID, fh, cc, unix.F_WRLCK, 0, 9), 0)
	// RELEASE with FLOCK_UNLOCK drops that owner's fd as well.
	fh2 := c.open(f.NodeID, unix.O_RDWR)
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh2, ReleaseFlags: fuse.ReleaseFlockUnlock, LockOwner: cc}))
	if l := hostConflict(t, c.path("f"), 0, 10); l.Type != unix.F_UNLCK {
		t.Errorf("C's lock survived RELEASE with FLOCK_UNLOCK: %+v", l)
	}
	// FORGET of the inode drops every lock fd of it.
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fhRO}))
	c.call(fuse.OpForget, f.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if n := c.fs.lockFDs(); n != 0 {
		t.Errorf("%d lock fds after FORGET", n)
	}
	if l := hostConflict(t, c.path("f"), 0, 0); l.Type != unix.F_UNLCK {
		t.Errorf("locks survived FORGET: %+v", l)
	}
}

// TestLockFDCap: a guest cannot make the FS open lock fds without bound.
func TestLockFDCap(t *testing.T) {
	c := newTFS(t, Options{MaxLockFDs: 3})
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	for o := uint64(1); o <= 3; o++ {
		wantErr(t, "SETLK", c.setlk(f.NodeID, fh, o, unix.F_RDLCK, 0, 0), 0)
	}
	wantErr(t, "SETLK of a 4th owner", c.setlk(f.NodeID, fh, 4, unix.F_RDLCK, 0, 0), unix.ENOLCK)
	wantErr(t, "SETLK of an owner that has an fd", c.setlk(f.NodeID, fh, 2, unix.F_WRLCK, 5, 5), 0)
	c.call(fuse.OpFlush, f.NodeID, b(fuse.FlushIn{Fh: fh, LockOwner: 1}))
	wantErr(t, "SETLK of a 4th owner after a FLUSH", c.setlk(f.NodeID, fh, 4, unix.F_RDLCK, 0, 0), 0)
	c.call(fuse.OpDestroy, fuse.RootID)
	if n := c.fs.lockFDs(); n != 0 {
		t.Errorf("%d lock fds after DESTROY", n)
	}
	if l := hostConflict(t, c.path("f"), 0, 0); l.Type != unix.F_UNLCK {
		t.Errorf("locks survived DESTROY: %+v", l)
	}
}

// TestLockFDsSurviveRestart: owners' lock fds are in the store and taken
// back by a resumed FS, with their locks; FLUSH and DESTROY remove them.
func TestLockFDsSurviveRestart(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("f"), make([]byte, 10), 0o644)
	f := r.mustLookup("f")
	fh := r.c.open(f.NodeID, unix.O_RDWR)
	wantErr(t, "A write", r.c.setlk(f.NodeID, fh, 0xa, unix.F_WRLCK, 0, 4), 0)
	wantErr(t, "B write", r.c.setlk(f.NodeID, fh, 0xb, unix.F_WRLCK, 5, 9), 0)
	want := []string{lkName(f.NodeID, 0xa), lkName(f.NodeID, 0xb)}
	if got := r.store.names("lk."); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("store holds %v, want %v", got, want)
	}
	// A stored lock fd that names no inode record is dropped on resume.
	junk, err := unix.Open(r.c.path("f"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.store.Store(lkName(f.NodeID^1<<40, 7), junk)
	r.store.Store("lk.zz", junk)
	unix.Close(junk)
	r.restart()
	if got := r.store.names("lk."); len(got) != 2 {
		t.Errorf("store after resume holds %v, want %v", got, want)
	}
	if n := r.c.fs.lockFDs(); n != 2 {
		t.Errorf("resumed FS has %d lock fds, want 2", n)
	}
	if l := hostConflict(t, r.c.path("f"), 0, 0); l.Type != unix.F_WRLCK {
		t.Fatalf("locks lost in the restart: %+v", l)
	}
	wantErr(t, "B over A's range", r.c.setlk(f.NodeID, fh, 0xb, unix.F_WRLCK, 0, 0), unix.EAGAIN)
	wantErr(t, "A re-locks its range", r.c.setlk(f.NodeID, fh, 0xa, unix.F_WRLCK, 0, 4), 0)
	wantErr(t, "A over B's range", r.c.setlk(f.NodeID, fh, 0xa, unix.F_RDLCK, 9, 9), unix.EAGAIN)
	r.c.call(fuse.OpFlush, f.NodeID, b(fuse.FlushIn{Fh: fh, LockOwner: 0xa}))
	if got := r.store.names("lk."); len(got) != 1 || got[0] != want[1] {
		t.Errorf("store after A's FLUSH holds %v", got)
	}
	if l := hostConflict(t, r.c.path("f"), 0, 5); l.Type != unix.F_UNLCK {
		t.Errorf("A's lock survived FLUSH after a restart: %+v", l)
	}
	r.c.call(fuse.OpDestroy, fuse.RootID)
	if got := r.store.names("lk."); len(got) != 0 {
		t.Errorf("store after DESTROY holds %v", got)
	}
	if l := hostConflict(t, r.c.path("f"), 0, 0); l.Type != unix.F_UNLCK {
		t.Errorf("locks survived DESTROY: %+v", l)
	}
}

// TestCancelWaits ends pending SETLKWs with EINTR and leaves granted
// locks alone.
func TestCancelWaits(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	wantErr(t, "A write", c.setlk(f.NodeID, fh, 1, unix.F_WRLCK, 0, fuse.OffsetMax), 0)
	var dones []chan unix.Errno
	for i := range 3 {
		lk := fuse.LkIn{Fh: fh, Owner: uint64(2 + i), Lk: fuse.FileLock{End: fuse.OffsetMax, Type: unix.F_WRLCK}}
		if i == 2 {
			lk.LkFlags, lk.Owner = fuse.LkFlock, 1 // a flock wait ends too
			hfd := openHost(t, c.path("f"))
			if err := unix.Flock(hfd, unix.LOCK_EX); err != nil {
				t.Fatal(err)
			}
		}
		dones = append(dones, blockingCall(t, c.fs, fuse.OpSetlkw, uint64(7000+i), f.NodeID, fuse.Bytes(&lk)))
	}
	waitWaiters(t, c.fs, 3)
	for _, d := range dones {
		select {
		case e := <-d:
			t.Fatalf("SETLKW returned %v while the lock is held", e)
		default:
		}
	}
	c.fs.CancelWaits()
	for i, d := range dones {
		select {
		case e := <-d:
			wantErr(t, "SETLKW after CancelWaits", e, unix.EINTR)
		case <-time.After(5 * time.Second):
			t.Fatalf("SETLKW %d still waits after CancelWaits", i)
		}
	}
	if l := hostConflict(t, c.path("f"), 0, 0); l.Type != unix.F_WRLCK {
		t.Errorf("the granted lock went with CancelWaits: %+v", l)
	}
}

// waitWaiters waits until n SETLKWs wait on fs's locks (registered, so a
// cancel reaches them), instead of sleeping for "long enough".
func waitWaiters(t *testing.T, fs *FS, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		fs.locks.mu.Lock()
		got := len(fs.locks.waiters)
		fs.locks.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d SETLKWs waiting after 5 s, want %d", got, n)
		}
	}
}

// blockingCall runs a request as the dataplane runs Blocking opcodes: on
// another goroutine, with a cloned request and its own reply.
func blockingCall(t *testing.T, fs *FS, op uint32, unique, nodeid uint64, arg []byte) chan unix.Errno {
	t.Helper()
	done := make(chan unix.Errno, 1)
	buf := make([]byte, fuse.InHeaderSize+len(arg))
	hdr := fuse.InHeader{Len: uint32(len(buf)), Opcode: op, Unique: unique, NodeID: nodeid}
	copy(buf, fuse.Bytes(&hdr))
	copy(buf[fuse.InHeaderSize:], arg)
	var req fuse.Request
	if err := req.Decode(fuse.Scatter{buf}); err != nil {
		t.Fatal(err)
	}
	r := req.Clone()
	go func() {
		out := make([]byte, 64)
		var rep fuse.Reply
		rep.Reset(fuse.Scatter{out}, unique)
		fs.Handle(r, &rep)
		var oh fuse.OutHeader
		fuse.Parse(out, &oh)
		done <- unix.Errno(-oh.Error)
	}()
	return done
}

// TestSetlkwWaitSlice: a SETLKW that does not get its lock within
// lockWaitSlice answers EINTR (the guest cannot INTERRUPT it), and one
// that does gets it.
func TestSetlkwWaitSlice(t *testing.T) {
	old := lockWaitSlice
	lockWaitSlice = 200 * time.Millisecond
	defer func() { lockWaitSlice = old }()
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	wantErr(t, "A write", c.setlk(f.NodeID, fh, 1, unix.F_WRLCK, 0, fuse.OffsetMax), 0)
	lk := fuse.LkIn{Fh: fh, Owner: 2, Lk: fuse.FileLock{End: fuse.OffsetMax, Type: unix.F_WRLCK}}
	start := time.Now()
	select {
	case e := <-blockingCall(t, c.fs, fuse.OpSetlkw, 7100, f.NodeID, fuse.Bytes(&lk)):
		wantErr(t, "SETLKW past the slice", e, unix.EINTR)
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Errorf("SETLKW gave up after %v, before the slice", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SETLKW still waits long after the slice")
	}
	// Freed within the slice: granted.
	d := blockingCall(t, c.fs, fuse.OpSetlkw, 7101, f.NodeID, fuse.Bytes(&lk))
	waitWaiters(t, c.fs, 1)
	wantErr(t, "A unlock", c.setlk(f.NodeID, fh, 1, unix.F_UNLCK, 0, fuse.OffsetMax), 0)
	select {
	case e := <-d:
		wantErr(t, "SETLKW after the unlock", e, 0)
	case <-time.After(5 * time.Second):
		t.Fatal("SETLKW not granted after the unlock")
	}
}

// TestCancelAllWaitsForRetries: cancelAll returns only once a retry in
// progress has finished, and a retry after it answers EINTR without
// trying: DESTROY closes the handles after cancelAll, so a lock they held
// cannot go to a waiter it cancelled (seen once as TestLocks' "SETLKW at
// DESTROY" answering success: the waiter's timer and the cancel were ready
// together and the timer won).
func TestCancelAllWaitsForRetries(t *testing.T) {
	var l lockState
	l.init()
	ch, ok := l.add(7)
	if !ok {
		t.Fatal("add refused")
	}
	inTry, release := make(chan struct{}), make(chan struct{})
	retried := make(chan unix.Errno)
	go func() {
		eno, _ := l.retry(ch, func() (unix.Errno, bool) {
			close(inTry)
			<-release
			return 0, true
		})
		retried <- eno
	}()
	<-inTry
	canceled := make(chan struct{})
	go func() { l.cancelAll(); close(canceled) }()
	select {
	case <-canceled:
		t.Fatal("cancelAll returned while a retry was trying")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if eno := <-retried; eno != 0 {
		t.Fatalf("the retry in progress answered %v", eno)
	}
	<-canceled
	eno, done := l.retry(ch, func() (unix.Errno, bool) {
		t.Error("a cancelled waiter tried again")
		return 0, true
	})
	if eno != unix.EINTR || !done {
		t.Fatalf("retry after cancelAll: %v %v, want EINTR", eno, done)
	}
}
