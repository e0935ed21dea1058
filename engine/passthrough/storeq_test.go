package passthrough

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
	"vfsd/engine/fuse"
)

// batchLog records the messages a storeQueue sends.
type batchLog struct {
	msgs []string
}

func (l *batchLog) Store(name string, fds ...int) error { panic("Store on a batch store") }
func (l *batchLog) Remove(name string) error            { panic("Remove on a batch store") }
func (l *batchLog) SendBatch(removes, names []string, fds []int) error {
	if len(names) != len(fds) {
		return fmt.Errorf("%d names, %d fds", len(names), len(fds))
	}
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("fd %d of the batch is not open: %v", fd, err)
		}
	}
	l.msgs = append(l.msgs, "-"+strings.Join(removes, ",")+" +"+strings.Join(names, ","))
	return nil
}

// TestStoreQueueOrder: a queue sends nothing until flushed, then one
// message; a remove cancels a queued store of its name; a store after a
// remove of the same name stays after it (removes come first in a
// message); a queued fd stays open until it is sent, and the queue's pin
// is dropped once it is.
func TestStoreQueueOrder(t *testing.T) {
	l := &batchLog{}
	q := newStoreQueue(l)
	fd := func() int {
		f, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	a, b := fd(), fd()
	ra, rb := &fdRef{fd: a}, &fdRef{fd: b}
	ra.pins.Add(1)
	rb.pins.Add(1)
	q.store("fh.1", ra)
	q.store("fh.2", rb)
	ra.kill() // released: the queue's pin keeps the fd open
	q.remove("ino.9")
	q.remove("fh.2") // cancels the queued store
	if len(l.msgs) != 0 {
		t.Fatalf("sent before a flush: %v", l.msgs)
	}
	if rb.pins.Load() != 0 {
		t.Error("a cancelled store kept its pin")
	}
	if err := q.flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(a), unix.F_GETFD, 0); err == nil || ra.pins.Load() != 0 {
		t.Error("a sent store kept its pin (the released fd is still open)")
	}
	q.remove("lk.1.2")
	if err := q.storeNow("lk.1.2", b); err != nil {
		t.Fatal(err)
	}
	q.flush() // nothing queued: no message
	want := []string{"-ino.9,fh.2 +fh.1", "-lk.1.2 +lk.1.2"}
	if !slices.Equal(l.msgs, want) {
		t.Fatalf("messages %q, want %q", l.msgs, want)
	}
	unix.Close(b)
}

// TestStoreQueueLimits: a queue never builds a message over the
// protocol's limits (fds per message, datagram text), and bounds the
// removes it holds back.
func TestStoreQueueLimits(t *testing.T) {
	l := &batchLog{}
	q := newStoreQueue(l)
	f, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(f)
	r := &fdRef{fd: f}
	for i := range 600 {
		r.pins.Add(1)
		if err := q.store(fhName(uint64(1<<32|i)), r); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		q.remove(inoName(uint64(1<<32 | i)))
	}
	q.flush()
	total := 0
	for _, m := range l.msgs {
		rm, st, _ := strings.Cut(m, " +")
		n := len(strings.Split(st, ","))
		if st == "" {
			n = 0
		}
		total += n
		if n > fdstore.MaxFDsPerMessage {
			t.Errorf("message with %d fds", n)
		}
		if r := len(strings.Split(strings.TrimPrefix(rm, "-"), ",")); r > maxQueuedRemoves+1 {
			t.Errorf("message with %d removes", r)
		}
		if len(m) > fdstore.MaxBatchText {
			t.Errorf("message of %d bytes", len(m))
		}
	}
	if total != 600 {
		t.Errorf("%d stores sent, want 600", total)
	}
	if n := r.pins.Load(); n != 0 {
		t.Errorf("%d pins left after every store was sent", n)
	}
}

// TestQueuedStoreLostInCrash: the worker dies after a CREATE and an OPEN
// were answered in the journal but before the batch's flush (their fds
// never reached the store). The resubmitted requests answer the same fhs,
// which work: the handles are re-opened from their inodes, without
// O_TRUNC, and go to the store for the next restart.
func TestQueuedStoreLostInCrash(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("old"), []byte("keep me"), 0o644)
	old := r.mustLookup("old")
	r.c.noFlush = true
	r.c.queue, r.c.head = 1, 3
	e, p := r.c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o644}), name("new"))
	if e != 0 {
		t.Fatalf("CREATE: %v", e)
	}
	createUnique := r.c.unique
	r.c.head = 4
	e2, p2 := r.c.call(fuse.OpOpen, old.NodeID, b(fuse.OpenIn{Flags: unix.O_RDWR | unix.O_TRUNC}))
	if e2 != 0 {
		t.Fatalf("OPEN: %v", e2)
	}
	openUnique := r.c.unique
	r.c.noFlush = false
	if got := r.store.names("fh."); len(got) != 0 {
		t.Fatalf("fds in the store before any flush: %v", got)
	}
	os.WriteFile(r.c.path("old"), []byte("written after the open"), 0o644)
	r.restart()

	resubmit := func(head uint16, unique uint64, op uint32, nodeid uint64, args ...[]byte) (unix.Errno, []byte) {
		r.c.queue, r.c.head, r.c.resumed, r.c.unique = 1, head, true, unique-1
		defer func() { r.c.resumed, r.c.head = false, 100 }()
		return r.c.call(op, nodeid, args...)
	}
	e, q := resubmit(3, createUnique, fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o644}), name("new"))
	if e != 0 || string(q) != string(p) {
		t.Fatalf("resubmitted CREATE: %v %x, want the first answer %x", e, q, p)
	}
	var ce fuse.EntryOut
	rest, _ := fuse.Parse(q, &ce)
	fh := parse[fuse.OpenOut](t, rest).Fh
	e2, q2 := resubmit(4, openUnique, fuse.OpOpen, old.NodeID, b(fuse.OpenIn{Flags: unix.O_RDWR | unix.O_TRUNC}))
	if e2 != 0 || string(q2) != string(p2) {
		t.Fatalf("resubmitted OPEN: %v %x, want %x", e2, q2, p2)
	}
	ofh := parse[fuse.OpenOut](t, q2).Fh
	if _, e := r.c.write(ce.NodeID, fh, 0, []byte("data"), 0); e != 0 {
		t.Fatalf("WRITE through the re-opened CREATE handle: %v", e)
	}
	if got, _ := os.ReadFile(r.c.path("new")); string(got) != "data" {
		t.Errorf("new holds %q", got)
	}
	if p, e := r.c.read(old.NodeID, ofh, 0, 100); e != 0 || string(p) != "written after the open" {
		t.Errorf("READ through the re-opened OPEN handle: %q %v (the re-open must not truncate)", p, e)
	}
	if got := r.store.names("fh."); len(got) != 2 {
		t.Errorf("store holds %v after the re-opens, want both handles", got)
	}
	r.restart()
	if p, e := r.c.read(old.NodeID, ofh, 0, 7); e != 0 || string(p) != "written" {
		t.Errorf("READ after a second restart: %q %v", p, e)
	}
	r.c.call(fuse.OpRelease, ce.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	r.c.call(fuse.OpRelease, old.NodeID, b(fuse.ReleaseIn{Fh: ofh}))
	r.wantHandles(0)
	if got := r.store.names("fh."); len(got) != 0 {
		t.Errorf("store holds %v after RELEASE", got)
	}
}

// TestSweepOrphans: handed-back "fh." and "ino." fds whose records are
// gone (a remove lost in a crash) are closed and removed from the store on
// resume; live ones stay.
func TestSweepOrphans(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("f"), []byte("x"), 0o644)
	f := r.mustLookup("f")
	fh := r.c.open(f.NodeID, unix.O_RDONLY)
	junk, err := unix.Open(r.c.path("f"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{fhName(fh + 1<<40), inoName(f.NodeID + 1<<40), "fh.zz", "fh.0" + fhName(fh)[3:]} {
		r.store.Store(n, junk)
	}
	unix.Close(junk)
	r.restart()
	if got := r.store.names("fh."); !slices.Equal(got, []string{fhName(fh)}) {
		t.Errorf("fh names after resume: %v, want [%s]", got, fhName(fh))
	}
	if got := r.store.names("ino."); len(got) != 0 {
		t.Errorf("ino names after resume: %v", got)
	}
	if p, e := r.c.read(f.NodeID, fh, 0, 1); e != 0 || string(p) != "x" {
		t.Errorf("READ through the live handle: %q %v", p, e)
	}
}

// plainStore is a fakeStore without SendBatch: an fd store that takes one
// message per store and remove (a supervisor older than the batches).
type plainStore struct{ s *fakeStore }

func (p plainStore) Store(name string, fds ...int) error { return p.s.Store(name, fds...) }
func (p plainStore) Remove(name string) error            { return p.s.Remove(name) }

// TestStoreWithoutBatches: with a store that cannot take batches, every
// store and remove reaches it at once, without any flush.
func TestStoreWithoutBatches(t *testing.T) {
	dir := t.TempDir()
	st := newFakeStore(t)
	c := newTFS(t, Options{Root: dir, FDStore: plainStore{st}})
	c.queue = 1
	c.noFlush = true
	os.WriteFile(c.path("f"), []byte("x"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDONLY)
	if got := st.names("fh."); !slices.Equal(got, []string{fhName(fh)}) {
		t.Fatalf("store holds %v right after OPEN, want [%s]", got, fhName(fh))
	}
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	if got := st.names("fh."); len(got) != 0 {
		t.Fatalf("store holds %v right after RELEASE", got)
	}
}

// storeLog is a fakeStore that also records the names each batch stored.
type storeLog struct {
	*fakeStore
	stored, removed []string
}

func (l *storeLog) SendBatch(removes, names []string, fds []int) error {
	l.stored = append(l.stored, names...)
	l.removed = append(l.removed, removes...)
	return l.fakeStore.SendBatch(removes, names, fds)
}

// lazyStoreRig is an FS with a logging fd store in lazy mode (skips where
// open_by_handle_at does not work), lazyMax an hour (no wait runs out
// unless the test says so) until the test ends, nothing published after a
// request, and a file "f".
func lazyStoreRig(t *testing.T) (*tfs, *storeLog) {
	t.Helper()
	st := &storeLog{fakeStore: newFakeStore(t)}
	c := openTFS(t, Options{Root: t.TempDir(), FDStore: st}, true)
	if !c.fs.sq.lazy {
		t.Skip("open_by_handle_at does not work here: handle stores are eager")
	}
	saved := lazyMax
	t.Cleanup(func() { lazyMax = saved })
	lazyMax = time.Hour
	c.queue = 1
	c.noFlush = true
	os.WriteFile(c.path("f"), []byte("data"), 0o644)
	return c, st
}

// TestLazyHandleStores: where handles can be re-opened (open_by_handle_at
// works, as for root on the host), a handle's fd is not sent before its
// OPEN is answered, nor when the queue sleeps: an OPEN and its RELEASE send
// nothing at all. A flock makes the handle's fd durable before the lock, and
// a crash with the store still queued leaves a handle that re-opens and
// has its data.
func TestLazyHandleStores(t *testing.T) {
	c, st := lazyStoreRig(t)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	c.fs.Flush() // the publish of the OPEN's reply
	if got := st.names("fh."); len(got) != 0 {
		t.Fatalf("handle stored at publish: %v", got)
	}
	if w := c.fs.Idle(); w <= 0 || len(st.names("fh.")) != 0 {
		t.Fatalf("queue going to sleep: handle stored %v, wake-up after %v (want > 0)", st.names("fh."), w)
	}
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	if w := c.fs.Idle(); w != 0 {
		t.Errorf("Idle asks for a wake-up after %v with nothing queued", w)
	}
	if slices.ContainsFunc(st.stored, func(n string) bool { return strings.HasPrefix(n, "fh.") }) || len(st.removed) != 0 {
		t.Fatalf("an OPEN+RELEASE sent stores %v, removes %v", st.stored, st.removed)
	}
	fh = c.open(f.NodeID, unix.O_RDWR)
	wr := fuse.FileLock{Type: unix.F_WRLCK, End: fuse.OffsetMax}
	if e, _ := c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: fh, Owner: 1, Lk: wr, LkFlags: fuse.LkFlock})); e != 0 {
		t.Fatalf("flock: %v", e)
	}
	if got := st.names("fh."); !slices.Equal(got, []string{fhName(fh)}) {
		t.Fatalf("store holds %v after a flock, want the handle", got)
	}
	// A handle store that has waited lazyMax goes with the next publish.
	g := c.mustLookup(fuse.RootID, "f")
	gh := c.open(g.NodeID, unix.O_RDONLY)
	c.fs.Flush()
	if slices.Contains(st.names("fh."), fhName(gh)) {
		t.Fatal("handle stored before its wait ran out")
	}
	lazyMax = 0
	c.fs.Flush()
	if !slices.Contains(st.names("fh."), fhName(gh)) {
		t.Fatalf("handle not stored at the publish after its wait: %v", st.names("fh."))
	}
	// And with the queue asleep: Idle sends it once it is due.
	lazyMax = time.Hour
	hh := c.open(g.NodeID, unix.O_RDONLY)
	if c.fs.Idle() <= 0 || slices.Contains(st.names("fh."), fhName(hh)) {
		t.Fatal("handle stored at Idle before its wait ran out")
	}
	lazyMax = 0
	if w := c.fs.Idle(); w != 0 || !slices.Contains(st.names("fh."), fhName(hh)) {
		t.Fatalf("handle not stored by Idle after its wait (wake-up %v): %v", w, st.names("fh."))
	}
	// A release after that removes it.
	c.call(fuse.OpRelease, g.NodeID, b(fuse.ReleaseIn{Fh: hh}))
	c.fs.Idle()
	if slices.Contains(st.names("fh."), fhName(hh)) {
		t.Fatal("stored handle not removed at its RELEASE")
	}
}

// TestLazyStoresDueOnly: when the oldest queued handle store falls due,
// the publish sends it and the removes, not the younger stores, which a
// RELEASE can still cancel (at depth 32 a CREATE's handle is released a
// millisecond after it is queued).
func TestLazyStoresDueOnly(t *testing.T) {
	c, st := lazyStoreRig(t)
	f := c.mustLookup(fuse.RootID, "f")
	old := c.open(f.NodeID, unix.O_RDWR)
	young := c.open(f.NodeID, unix.O_RDONLY)
	q := c.fs.sq
	q.mu.Lock()
	q.times[0] -= int64(2 * time.Hour) // old has waited its time
	q.since.Store(q.times[0])
	q.mu.Unlock()
	c.fs.Flush()
	if got := st.names("fh."); !slices.Equal(got, []string{fhName(old)}) {
		t.Fatalf("store holds %v after the publish, want only the due handle %s", got, fhName(old))
	}
	if w := c.fs.Idle(); w <= 0 || w > time.Hour {
		t.Errorf("Idle with the young store queued: wake-up after %v, want within lazyMax", w)
	}
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: young}))
	if w := c.fs.Idle(); w != 0 {
		t.Errorf("Idle asks for a wake-up after %v with nothing queued", w)
	}
	if got := st.names("fh."); !slices.Equal(got, []string{fhName(old)}) || slices.Contains(st.stored, fhName(young)) {
		t.Fatalf("the young handle reached the store (stored %v, now %v)", st.stored, got)
	}
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: old}))
	c.fs.Idle()
	if got := st.names("fh."); len(got) != 0 {
		t.Fatalf("store holds %v after both RELEASEs", got)
	}
}
