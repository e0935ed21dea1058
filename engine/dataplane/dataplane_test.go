package dataplane

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/vring/mem"
)

func TestGetattrAnswered(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		h := newHarness(t, &fakeFS{}, 16, eventIdx)
		h.start(1)
		for i := 0; i < 40; i++ { // wraps the 16-entry ring
			rd, wr := h.request(fuse.OpGetattr, uint64(100+i), make([]byte, 16), fuse.OutHeaderSize+attrOut)
			head := h.add(rd, wr)
			u := h.waitUsed(1, 5*time.Second)
			if u[0].head != head || u[0].written != fuse.OutHeaderSize+attrOut {
				t.Fatalf("eventIdx=%v: used %+v, want head %d written %d", eventIdx, u[0], head, fuse.OutHeaderSize+attrOut)
			}
			n, e, unique := h.outHeader(wr[0][0])
			if n != fuse.OutHeaderSize+attrOut || e != 0 || unique != uint64(100+i) {
				t.Fatalf("out header len %d err %d unique %d", n, e, unique)
			}
			h.arena.Free(rd[0][0])
			h.arena.Free(wr[0][0])
		}
		last, err := h.dp.StopQueue(1)
		if err != nil || last != 40 {
			t.Fatalf("StopQueue = %d, %v; want 40", last, err)
		}
	}
}

func TestErrorsAnswered(t *testing.T) {
	h := newHarness(t, &fakeFS{}, 16, true)
	h.start(0)

	// Header readable, length larger than the buffer: EINVAL.
	rd, wr := h.request(fuse.OpGetattr, 7, nil, 64)
	b := h.bytes(rd[0][0], 4)
	b[0] = 200
	h.add(rd, wr)
	if u := h.waitUsed(1, 5*time.Second); u[0].written != fuse.OutHeaderSize {
		t.Fatalf("bad length: written %d", u[0].written)
	}
	if _, e, unique := h.outHeader(wr[0][0]); e != -int32(unix.EINVAL) || unique != 7 {
		t.Fatalf("bad length: errno %d unique %d", e, unique)
	}

	// Fewer bytes than an in header: returned with 0 bytes.
	short, _ := h.arena.Alloc(16)
	out, _ := h.arena.Alloc(64)
	h.add([][2]uint64{{short, 16}}, [][2]uint64{{out, 64}})
	if u := h.waitUsed(1, 5*time.Second); u[0].written != 0 {
		t.Fatalf("short header: written %d", u[0].written)
	}

	// Descriptor outside guest RAM: bad chain, 0 bytes.
	h.add([][2]uint64{{1 << 40, 64}}, [][2]uint64{{out, 64}})
	if u := h.waitUsed(1, 5*time.Second); u[0].written != 0 {
		t.Fatalf("bad chain: written %d", u[0].written)
	}

	// Handler panic and missing answer: EIO, the queue goes on.
	for _, op := range []uint32{opPanic, opSilent} {
		rd, wr := h.request(op, 9, nil, 64)
		h.add(rd, wr)
		if u := h.waitUsed(1, 5*time.Second); u[0].written != fuse.OutHeaderSize {
			t.Fatalf("op %d: written %d", op, u[0].written)
		}
		if _, e, _ := h.outHeader(wr[0][0]); e != -int32(unix.EIO) {
			t.Fatalf("op %d: errno %d, want EIO", op, e)
		}
	}
	rd, wr = h.request(fuse.OpGetattr, 10, make([]byte, 16), 200)
	h.add(rd, wr)
	if u := h.waitUsed(1, 5*time.Second); u[0].written != fuse.OutHeaderSize+attrOut {
		t.Fatalf("after errors: written %d", u[0].written)
	}
}

func TestBlockingOutOfOrder(t *testing.T) {
	fs := &fakeFS{gate: make(chan struct{}), started: make(chan uint64, 1)}
	h := newHarness(t, fs, 64, true)
	h.start(1)
	rd, wr := h.request(fuse.OpFsync, 1, make([]byte, 16), 64)
	fsyncHead := h.add(rd, wr)
	if u := <-fs.started; u != 1 {
		t.Fatalf("fsync unique %d", u)
	}
	// The queue keeps serving while FSYNC blocks.
	for i := 0; i < 10; i++ {
		rd, wr := h.request(fuse.OpGetattr, uint64(10+i), make([]byte, 16), 200)
		h.add(rd, wr)
	}
	got := h.waitUsed(10, 5*time.Second)
	for _, u := range got {
		if u.head == fsyncHead {
			t.Fatal("blocked FSYNC completed early")
		}
	}
	fs.gate <- struct{}{}
	u := h.waitUsed(1, 5*time.Second)
	if u[0].head != fsyncHead || u[0].written != fuse.OutHeaderSize {
		t.Fatalf("fsync used %+v, want head %d", u[0], fsyncHead)
	}
	if _, e, unique := h.outHeader(wr[0][0]); e != 0 || unique != 1 {
		t.Fatalf("fsync reply errno %d unique %d", e, unique)
	}
}

// StopQueue must wait for outstanding blocking requests and push them.
func TestStopWaitsForBlocking(t *testing.T) {
	fs := &fakeFS{gate: make(chan struct{}), started: make(chan uint64, 1)}
	h := newHarness(t, fs, 8, false)
	h.start(1)
	rd, wr := h.request(fuse.OpFsync, 1, make([]byte, 16), 64)
	head := h.add(rd, wr)
	<-fs.started
	type res struct {
		last uint16
		err  error
	}
	done := make(chan res, 1)
	go func() { l, err := h.dp.StopQueue(1); done <- res{l, err} }()
	select {
	case r := <-done:
		t.Fatalf("StopQueue returned %v with a request outstanding", r)
	case <-time.After(50 * time.Millisecond):
	}
	fs.gate <- struct{}{}
	r := <-done
	if r.err != nil || r.last != 1 {
		t.Fatalf("StopQueue = %d, %v", r.last, r.err)
	}
	u := h.waitUsed(1, time.Second)
	if u[0].head != head {
		t.Fatalf("used %+v", u)
	}
	// Restart at the base the stop reported.
	h.cfg.LastAvail = r.last
	h.start(1)
	rd, wr = h.request(fuse.OpGetattr, 2, make([]byte, 16), 200)
	h.add(rd, wr)
	h.waitUsed(1, 5*time.Second)
}

// SetMem returns only once requests popped under the old table completed.
func TestSetMemWaitsForOldRequests(t *testing.T) {
	fs := &fakeFS{gate: make(chan struct{}), started: make(chan uint64, 1)}
	h := newHarness(t, fs, 8, true)
	h.start(1)
	rd, wr := h.request(fuse.OpFsync, 1, make([]byte, 16), 64)
	h.add(rd, wr)
	<-fs.started
	tab2, err := mem.NewTable(h.tab.Regions())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.dp.SetMem(tab2) }()
	select {
	case err := <-done:
		t.Fatalf("SetMem returned (%v) with an old request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	fs.gate <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.waitUsed(1, 5*time.Second)
	// The queue works on the new table.
	rd, wr = h.request(fuse.OpGetattr, 2, make([]byte, 16), 200)
	h.add(rd, wr)
	h.waitUsed(1, 5*time.Second)
}

// A table without the rings breaks the queue: err eventfd signalled, stop
// still works.
func TestSetMemWithoutRingsBreaksQueue(t *testing.T) {
	h := newHarness(t, &fakeFS{}, 8, true)
	h.start(1)
	fd, err := mem.NewMemfd("other", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	mp, err := mem.Map(fd, mem.Region{GuestAddr: 1 << 32, Size: 1 << 20, UserAddr: 1 << 44})
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Unmap()
	tab2, _ := mem.NewTable([]mem.Mapped{mp})
	if err := h.dp.SetMem(tab2); err == nil {
		t.Fatal("SetMem without the rings succeeded")
	}
	waitReadable(t, h.errFD)
	if _, err := h.dp.StopQueue(1); err != nil {
		t.Fatal(err)
	}
}

// A broken avail index stops processing and signals the err eventfd.
func TestBrokenRing(t *testing.T) {
	h := newHarness(t, &fakeFS{}, 8, false)
	h.start(1)
	h.ring.SetAvailIdx(100)
	signal(h.kick)
	waitReadable(t, h.errFD)
	if _, err := h.dp.StopQueue(1); err != nil {
		t.Fatal(err)
	}
}

// Without a kick fd the queue polls.
func TestPolling(t *testing.T) {
	h := newHarness(t, &fakeFS{}, 8, false)
	h.cfg.Kick = -1
	h.start(1)
	rd, wr := h.request(fuse.OpGetattr, 2, make([]byte, 16), 200)
	if _, err := h.ring.Add(rd, wr); err != nil {
		t.Fatal(err)
	}
	h.waitUsed(1, 5*time.Second)
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		fs := &fakeFS{gate: make(chan struct{}, 4)}
		h := newHarness(t, fs, 8, true)
		h.start(1)
		for i := 0; i < 4; i++ {
			fs.gate <- struct{}{}
			rd, wr := h.request(fuse.OpFsync, uint64(i), make([]byte, 16), 64)
			h.add(rd, wr)
		}
		h.waitUsed(4, 5*time.Second)
		h.dp.Close()
	}()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before, %d after Close", before, runtime.NumGoroutine())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitReadable(t *testing.T, fd int) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 5000)
	for err == unix.EINTR { // poll is never restarted after a signal
		n, err = unix.Poll(fds, 5000)
	}
	if err != nil || n != 1 {
		t.Fatalf("fd %d not signalled: %d, %v", fd, n, err)
	}
}

// idleFS is a fakeFS whose Idle asks to be called again 2 ms later until
// it has been called calls times.
type idleFS struct {
	fakeFS
	calls chan time.Time
}

func (f *idleFS) Idle() time.Duration {
	select {
	case f.calls <- time.Now():
		return 2 * time.Millisecond
	default:
		return 0
	}
}

// TestIdleWakeUp: a queue that went to sleep with deferred work calls the
// Idler again after the time it asked for, without any kick.
func TestIdleWakeUp(t *testing.T) {
	f := &idleFS{calls: make(chan time.Time, 3)}
	h := newHarness(t, f, 8, true)
	h.start(1)
	rd, wr := h.request(fuse.OpGetattr, 2, make([]byte, 16), fuse.OutHeaderSize+attrOut)
	h.add(rd, wr)
	h.waitUsed(1, 5*time.Second)
	deadline := time.After(5 * time.Second)
	for len(f.calls) < cap(f.calls) {
		select {
		case <-deadline:
			t.Fatalf("Idle called %d times while the queue slept, want %d", len(f.calls), cap(f.calls))
		case <-time.After(time.Millisecond):
		}
	}
}

// TestSpareProcs: every running queue thread adds a P (sched.go), so that
// a P is idle while the queue threads sleep in their syscalls.
func TestSpareProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	h := newHarness(t, &fakeFS{}, 8, true)
	h.start(0)
	h.start(1)
	procs.mu.Lock()
	base, threads := procs.base, procs.threads
	procs.mu.Unlock()
	if threads < 2 {
		t.Fatalf("%d queue threads counted, want at least 2", threads)
	}
	if got := runtime.GOMAXPROCS(0); got < base+threads {
		t.Fatalf("GOMAXPROCS %d with %d queue threads over a base of %d", got, threads, base)
	}
	h.dp.Close()
	procs.mu.Lock()
	threads = procs.threads
	procs.mu.Unlock()
	if threads != 0 {
		t.Fatalf("%d queue threads counted after Close", threads)
	}
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after the last queue stopped, %d before", got, before)
	}
}

// The hiprio queue never polls: nobody waits for its completions.
func TestHiprioDoesNotPoll(t *testing.T) {
	h := newHarness(t, &fakeFS{}, 8, true)
	h.start(0)
	h.start(1)
	h.dp.mu.Lock()
	hi, req := h.dp.queues[0].poller.max, h.dp.queues[1].poller.max
	h.dp.mu.Unlock()
	if hi != 0 || req == 0 {
		t.Fatalf("polling cap: hiprio queue %v, request queue %v", hi, req)
	}
}
