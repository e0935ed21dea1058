package dataplane

import (
	"testing"
	"time"

	"vfsd/engine/fuse"
)

// usedWatcher answers GETATTR after spinning for d, and records the used
// index the driver could see when each request was served.
type usedWatcher struct {
	usedIdx func() uint16
	d       time.Duration
	seen    []uint16
}

func (w *usedWatcher) Handle(req *fuse.Request, rep *fuse.Reply) {
	w.seen = append(w.seen, w.usedIdx())
	for start := time.Now(); time.Since(start) < w.d; {
	}
	var attr [attrOut]byte
	rep.Ok(attr[:])
}

// TestEarlyPublish: a batch of slow requests is published once earlyMin
// answers are in (each took over earlyAfter), so the driver sees them while
// the rest of the batch is served; a batch shorter than earlyMin is
// published once, at its end.
func TestEarlyPublish(t *testing.T) {
	for _, c := range []struct {
		n         int
		wantEarly bool
	}{{earlyMin + 24, true}, {earlyMin - 1, false}} {
		w := &usedWatcher{d: earlyAfter + 20*time.Microsecond}
		h := newHarness(t, w, 128, true)
		w.usedIdx = h.ring.UsedIdx
		for i := range c.n { // all available before the queue starts: one batch
			rd, wr := h.request(fuse.OpGetattr, uint64(1+i), make([]byte, 16), fuse.OutHeaderSize+attrOut)
			if _, err := h.ring.Add(rd, wr); err != nil {
				t.Fatal(err)
			}
		}
		h.start(1)
		h.waitUsed(c.n, 10*time.Second)
		if _, err := h.dp.StopQueue(1); err != nil {
			t.Fatal(err)
		}
		if len(w.seen) != c.n {
			t.Fatalf("%d requests served, want %d", len(w.seen), c.n)
		}
		last := w.seen[c.n-1]
		if !c.wantEarly {
			if last != 0 {
				t.Errorf("batch of %d: used index %d visible before its end, want 0 (seen %v)", c.n, last, w.seen)
			}
			continue
		}
		if w.seen[earlyMin-1] != 0 {
			t.Errorf("batch of %d: used index %d visible before %d answers (seen %v)", c.n, w.seen[earlyMin-1], earlyMin, w.seen)
		}
		if got := w.seen[earlyMin]; got < earlyMin {
			t.Errorf("batch of %d: request %d saw used index %d, want >= %d: not published early (seen %v)",
				c.n, earlyMin+1, got, earlyMin, w.seen)
		}
		if last < uint16(c.n-earlyMin) {
			t.Errorf("batch of %d: the last request saw used index %d, want >= %d (seen %v)", c.n, last, c.n-earlyMin, w.seen)
		}
	}
}
