package dataplane

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/vring"
	"vfsd/vring/inflight"
)

// recordFS answers GETATTR and records what it saw, in order.
type recordFS struct {
	mu   sync.Mutex
	seen []seenReq
	fakeFS
}

type seenReq struct {
	unique  uint64
	head    uint16
	resumed bool
}

func (r *recordFS) Handle(req *fuse.Request, rep *fuse.Reply) {
	r.mu.Lock()
	r.seen = append(r.seen, seenReq{req.Unique, req.Head, req.Resumed})
	r.mu.Unlock()
	r.fakeFS.Handle(req, rep)
}

// A backend that died with chains popped and unanswered (tracked in an
// inflight region) is replaced: the new queue resumes from the region,
// ignoring the stale vring base, serves the in-flight chains again first,
// in pop order and marked Resumed with their heads, then new work, and
// notifies the driver.
func TestResumeResubmits(t *testing.T) {
	fs := &recordFS{}
	h := newHarness(t, fs, 16, true)
	region, err := inflight.Create(2, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()

	// The previous backend: pops 4 chains, answers the second only, dies.
	var heads []uint16
	var outs [][2]uint64
	for i := 0; i < 4; i++ {
		rd, wr := h.request(fuse.OpGetattr, uint64(10+i), make([]byte, 16), fuse.OutHeaderSize+attrOut)
		heads = append(heads, h.add(rd, wr))
		outs = append(outs, wr[0])
	}
	old, err := vring.New(h.tab, vring.Config{Size: 16, Desc: h.cfg.Desc, Avail: h.cfg.Avail, Used: h.cfg.Used, EventIdx: true}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.SetInflight(region.Queue(1)); err != nil {
		t.Fatal(err)
	}
	var c vring.Chain
	for i := 0; i < 4; i++ {
		if ok, err := old.Pop(&c); !ok || err != nil {
			t.Fatalf("pop %d: %v %v", i, ok, err)
		}
	}
	old.Push(heads[1], fuse.OutHeaderSize)
	old.Publish()
	if _, _, ok := h.ring.PollUsed(); !ok {
		t.Fatal("the answered chain is not in the used ring")
	}
	var buf [8]byte
	unix.Read(h.call, buf[:])

	// One more request arrives while no backend runs.
	rd, wr := h.request(fuse.OpGetattr, 99, make([]byte, 16), fuse.OutHeaderSize+attrOut)
	newHead := h.add(rd, wr)

	cfg := h.cfg
	cfg.LastAvail = 0 // the frontend's base at ring start: stale
	cfg.Inflight, cfg.Resume = region.Queue(1), true
	tracked := false
	cfg.Tracked = func() { tracked = true }
	if err := h.dp.StartQueue(1, cfg); err != nil {
		t.Fatal(err)
	}
	if !tracked {
		t.Fatal("Tracked not called")
	}
	waitReadable(t, h.call) // notified once after resuming
	got := h.waitUsed(4, 5*time.Second)
	want := []uint16{heads[0], heads[2], heads[3], newHead}
	for i, u := range got {
		if u.head != want[i] || u.written != fuse.OutHeaderSize+attrOut {
			t.Fatalf("used %v, want heads %v", got, want)
		}
	}
	for i, o := range []int{0, 2, 3} {
		if _, e, unique := h.outHeader(outs[o][0]); e != 0 || unique != uint64(10+o) {
			t.Fatalf("resubmitted %d: errno %d unique %d", i, e, unique)
		}
	}
	fs.mu.Lock()
	seen := append([]seenReq(nil), fs.seen...)
	fs.mu.Unlock()
	wantSeen := []seenReq{{10, heads[0], true}, {12, heads[2], true}, {13, heads[3], true}, {99, newHead, false}}
	if len(seen) != len(wantSeen) {
		t.Fatalf("handler saw %+v, want %+v", seen, wantSeen)
	}
	for i := range seen {
		if seen[i] != wantSeen[i] {
			t.Fatalf("handler saw %+v, want %+v", seen, wantSeen)
		}
	}
	last, err := h.dp.StopQueue(1)
	if err != nil || last != 5 {
		t.Fatalf("StopQueue = %d, %v; want 5", last, err)
	}
}

// A ring the previous backend stopped cleanly starts at used.idx, not at
// the frontend's stale base (BaseFromUsed); a corrupt region refuses the
// start.
func TestBaseFromUsedAndCorruptRegion(t *testing.T) {
	h := newHarness(t, &fakeFS{}, 16, false)
	for i := 0; i < 3; i++ {
		rd, wr := h.request(fuse.OpGetattr, uint64(i), make([]byte, 16), fuse.OutHeaderSize+attrOut)
		h.add(rd, wr)
	}
	h.start(1)
	h.waitUsed(3, 5*time.Second)
	if last, err := h.dp.StopQueue(1); err != nil || last != 3 {
		t.Fatalf("StopQueue = %d, %v", last, err)
	}
	region, err := inflight.Create(2, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	cfg := h.cfg
	cfg.LastAvail, cfg.BaseFromUsed, cfg.Inflight = 0, true, region.Queue(1)
	if err := h.dp.StartQueue(1, cfg); err != nil {
		t.Fatal(err)
	}
	rd, wr := h.request(fuse.OpGetattr, 7, make([]byte, 16), fuse.OutHeaderSize+attrOut)
	head := h.add(rd, wr)
	if u := h.waitUsed(1, 5*time.Second); u[0].head != head {
		t.Fatalf("used %v, want head %d only", u, head)
	}
	if last, err := h.dp.StopQueue(1); err != nil || last != 4 {
		t.Fatalf("StopQueue = %d, %v; want 4", last, err)
	}

	// Corrupt the region: an in-flight flag with counter 0.
	b := region.Bytes()
	b[16+16*3] = 1 // desc[3].inflight of queue 0's region
	cfg = h.cfg
	cfg.Inflight, cfg.Resume = region.Queue(0), true
	b[8] = 1 // version 1 (started)
	if err := h.dp.StartQueue(1, cfg); err == nil {
		h.dp.StopQueue(1)
		t.Fatal("resumed from a corrupt region")
	}
}
