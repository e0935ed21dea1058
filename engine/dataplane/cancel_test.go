package dataplane

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// lockFS is a handler whose SETLKW waits until CancelWaits (a lock some
// other host process never releases) and then answers EINTR, like
// passthrough.FS.
type lockFS struct {
	fakeFS
	started chan uint64 // a SETLKW reports its unique when it waits

	mu      sync.Mutex
	waiters []chan struct{} // +checklocks:mu
	cancels int             // +checklocks:mu
}

var _ Canceller = (*lockFS)(nil)

func (f *lockFS) Handle(req *fuse.Request, rep *fuse.Reply) {
	if req.Opcode != fuse.OpSetlkw {
		f.fakeFS.Handle(req, rep)
		return
	}
	ch := make(chan struct{})
	f.mu.Lock()
	f.waiters = append(f.waiters, ch)
	f.mu.Unlock()
	f.started <- req.Unique
	<-ch
	rep.Error(unix.EINTR)
}

func (f *lockFS) CancelWaits() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.waiters {
		close(ch)
	}
	f.waiters = nil
	f.cancels++
}

func (f *lockFS) cancelled() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancels
}

// setlkw queues a SETLKW and waits until the handler blocks in it.
func setlkw(h *harness, fs *lockFS, unique uint64) (head uint16, out uint64) {
	h.t.Helper()
	rd, wr := h.request(fuse.OpSetlkw, unique, make([]byte, 48), 64)
	head = h.add(rd, wr)
	select {
	case <-fs.started:
	case <-time.After(5 * time.Second):
		h.t.Fatal("SETLKW never reached the handler")
	}
	return head, wr[0][0]
}

// A SETLKW that would wait forever does not block a queue stop
// (GET_VRING_BASE, SET_VRING_ENABLE 0): the stop cancels the handler's
// waits, the request is answered EINTR and pushed before the stop returns.
func TestStopCancelsLockWaits(t *testing.T) {
	fs := &lockFS{started: make(chan uint64, 4)}
	h := newHarness(t, fs, 8, false)
	h.start(1)
	head, out := setlkw(h, fs, 7)
	done := make(chan error, 1)
	go func() { _, err := h.dp.StopQueue(1); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("StopQueue blocked by a SETLKW wait")
	}
	if fs.cancelled() == 0 {
		t.Fatal("CancelWaits never called")
	}
	u := h.waitUsed(1, time.Second)
	if u[0].head != head {
		t.Fatalf("used %+v, want head %d", u, head)
	}
	if _, e, unique := h.outHeader(out); e != -int32(unix.EINTR) || unique != 7 {
		t.Fatalf("SETLKW answered errno %d unique %d, want -EINTR for 7", e, unique)
	}
}

// Shutdown (Close) is not blocked either, with waits on several queues.
func TestCloseCancelsLockWaits(t *testing.T) {
	fs := &lockFS{started: make(chan uint64, 4)}
	h := newHarness(t, fs, 8, false)
	h.start(1)
	setlkw(h, fs, 1)
	setlkw(h, fs, 2)
	done := make(chan struct{})
	go func() { h.dp.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked by SETLKW waits")
	}
	h.waitUsed(2, time.Second)
}

// A blocking request that completes by itself within the stop does not
// need a cancel, and a handler without CancelWaits is simply waited for
// (TestStopWaitsForBlocking).
func TestStopWithoutWaitsDoesNotCancel(t *testing.T) {
	fs := &lockFS{started: make(chan uint64, 4)}
	h := newHarness(t, fs, 8, false)
	h.start(1)
	rd, wr := h.request(fuse.OpGetattr, 1, make([]byte, 16), 200)
	h.add(rd, wr)
	h.waitUsed(1, 5*time.Second)
	if _, err := h.dp.StopQueue(1); err != nil {
		t.Fatal(err)
	}
	if n := fs.cancelled(); n != 0 {
		t.Fatalf("an idle queue's stop cancelled waits %d times", n)
	}
}
