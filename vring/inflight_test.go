package vring_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"vfsd/vring"
	"vfsd/vring/inflight"
)

var errCrash = errors.New("simulated crash")

// catchCrash runs f and reports whether it stopped with errCrash.
func catchCrash(f func()) (c bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != errCrash {
				panic(p)
			}
			c = true
		}
	}()
	f()
	return false
}

// TestInflightCrashPoints runs a fixed workload of 7 chains (one malformed)
// through Pop/Push/Publish in three batches with inflight tracking, and
// stops it after store k of the region or the used ring (Get's counter and
// flag, each used element, last_batch_head, used.idx, each flag cleared,
// used_idx), for every k. The driver then takes what is visible, a new
// "process" maps the region from its fd, resumes a new Queue on the same
// guest RAM, resubmits, and drains. Checked: the heads to resubmit are exactly
// those popped (flag stored) and not visible as used to the driver, each once,
// in pop order; LastAvail = used.idx + their number; and in the end the
// driver got every chain back exactly once (and no head it did not hand out).
func TestInflightCrashPoints(t *testing.T) {
	for _, start := range []uint16{0, 65532} {
		for _, eventIdx := range []bool{false, true} {
			t.Run(fmt.Sprintf("start%d/eventidx=%v", start, eventIdx), func(t *testing.T) {
				total := crashRun(t, start, eventIdx, 0)
				if total < 20 {
					t.Fatalf("only %d stores in the workload", total)
				}
				for k := 1; k <= total; k++ {
					crashRun(t, start, eventIdx, k)
				}
			})
		}
	}
}

// crashRun runs the workload, crashing at store k (0: never), checks the
// recovery and returns the number of stores the workload made.
func crashRun(t *testing.T, start uint16, eventIdx bool, k int) int {
	t.Helper()
	const size, n, bad = 8, 7, 5
	r := newRig(t, size, eventIdx, start, 0)
	reg, err := inflight.Create(1, size)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if err := r.q.SetInflight(reg.Queue(0)); err != nil {
		t.Fatal(err)
	}
	var added []uint16 // in avail order
	for i := 0; i < n; i++ {
		h, err := r.drv.Add([][2]uint64{buf(i, 64)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		added = append(added, h)
	}
	r.drv.SetDesc(int(added[bad]), 0xdead00000000, 64, 0, 0) // outside guest RAM

	stores, popStart, popping := 0, 0, -1
	reg.Queue(0).SetCrashHook(func() {
		if stores++; stores == k {
			panic(errCrash)
		}
	})
	var popped []uint16
	var c vring.Chain
	pop := func() {
		popStart, popping = stores, len(popped)
		ok, err := r.q.Pop(&c)
		if !ok || (err != nil) != (len(popped) == bad) {
			t.Fatalf("k=%d: Pop #%d: %v %v", k, len(popped), ok, err)
		}
		popped = append(popped, c.Head)
		popping = -1
	}
	push := func(i int) {
		w := uint32(64)
		if i == bad {
			w = 0
		}
		r.q.Push(popped[i], w)
	}
	crashed := catchCrash(func() {
		pop()
		pop()
		pop()
		pop()
		push(2)
		push(0)
		r.q.Publish()
		pop()
		pop()
		pop()
		push(5)
		push(3)
		push(1)
		r.q.Publish()
		push(6)
		push(4)
		r.q.Publish()
	})
	if !crashed {
		if k != 0 {
			return stores
		}
	} else if popping >= 0 && stores-popStart >= 2 {
		popped = append(popped, added[popping]) // flag stored: consumed
	}

	// The driver goes on: it takes what it can see and adds one more chain.
	got := make(map[uint16]int)
	visible := make(map[uint16]bool)
	poll := func() {
		for {
			h, _, ok := r.drv.PollUsed()
			if !ok {
				break
			}
			got[h]++
			visible[h] = true
		}
		if err := r.drv.Err(); err != nil {
			t.Fatalf("k=%d: driver: %v", k, err)
		}
	}
	poll()
	var want []uint16
	for _, h := range popped {
		if !visible[h] {
			want = append(want, h)
		}
	}
	extra, err := r.drv.Add([][2]uint64{buf(9, 64)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	added = append(added, extra)

	// A new process: map the region from its fd, resume a new queue.
	reg2, err := inflight.Map(reg.FD(), 1, size)
	if err != nil {
		t.Fatal(err)
	}
	defer reg2.Close()
	q, err := vring.New(r.tab, r.cfg, start, start) // the base the frontend gave at start
	if err != nil {
		t.Fatal(err)
	}
	heads, err := q.ResumeInflight(reg2.Queue(0))
	if err != nil {
		t.Fatalf("k=%d: ResumeInflight: %v", k, err)
	}
	if !slices.Equal(heads, want) {
		t.Fatalf("k=%d: resubmit %v, want %v (popped %v)", k, heads, want, popped)
	}
	if used := r.drv.UsedIdx(); q.LastAvail() != used+uint16(len(want)) || q.UsedIdx() != used {
		t.Fatalf("k=%d: LastAvail %d UsedIdx %d, used.idx %d + %d in flight", k, q.LastAvail(), q.UsedIdx(), used, len(want))
	}

	// Resubmit, then take new work, then the driver drains.
	for _, h := range heads {
		err := q.Walk(h, &c)
		if (err != nil) != (h == added[bad]) {
			t.Fatalf("k=%d: Walk(%d): %v", k, h, err)
		}
		q.Push(h, 0)
	}
	q.Publish()
	for {
		ok, err := q.Pop(&c)
		if !ok {
			if err != nil {
				t.Fatalf("k=%d: Pop: %v", k, err)
			}
			break
		}
		if (err != nil) != (c.Head == added[bad]) {
			t.Fatalf("k=%d: Pop(%d): %v", k, c.Head, err)
		}
		q.Push(c.Head, 0)
	}
	q.Publish()
	poll()
	// Heads are reused (the extra chain may take a head the driver got back
	// before it was added), so compare multisets; PollUsed itself refuses a
	// head that is not outstanding.
	wantGot := make(map[uint16]int)
	for _, h := range added {
		wantGot[h]++
	}
	if fmt.Sprint(got) != fmt.Sprint(wantGot) {
		t.Fatalf("k=%d: driver got back %v, added %v", k, got, wantGot)
	}
	if r.drv.NumFree() != size {
		t.Fatalf("k=%d: %d descriptors free", k, r.drv.NumFree())
	}
	for h := uint16(0); h < size; h++ {
		if reg2.Queue(0).Inflight(h) {
			t.Fatalf("k=%d: head %d still in flight at the end", k, h)
		}
	}
	return stores
}

// TestInflightPopRefusesInflightHead: a driver that makes a head available
// again while the device holds it breaks the queue instead of the count.
func TestInflightPopRefusesInflightHead(t *testing.T) {
	r := newRig(t, 8, true, 0, 0)
	reg, err := inflight.Create(1, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if err := r.q.SetInflight(reg.Queue(0)); err != nil {
		t.Fatal(err)
	}
	h, _ := r.drv.Add([][2]uint64{buf(0, 64)}, nil)
	var c vring.Chain
	if ok, err := r.q.Pop(&c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	r.drv.PublishRaw(h)
	if ok, err := r.q.Pop(&c); ok || !errors.Is(err, vring.ErrBroken) {
		t.Fatalf("Pop of a head in flight: %v %v", ok, err)
	}
	if la := r.q.LastAvail(); la != 1 {
		t.Fatalf("LastAvail %d: the refused entry was consumed", la)
	}
}

func TestResumeInflightNotStarted(t *testing.T) {
	r := newRig(t, 8, true, 3, 0)
	reg, err := inflight.Create(1, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	heads, err := r.q.ResumeInflight(reg.Queue(0))
	if err != nil || heads != nil || r.q.LastAvail() != 3 || r.q.UsedIdx() != 3 || r.q.Inflight() == nil {
		t.Fatalf("ResumeInflight on a fresh region: %v %v", heads, err)
	}
	h, _ := r.drv.Add([][2]uint64{buf(0, 64)}, nil)
	var c vring.Chain
	r.q.Pop(&c)
	if !reg.Queue(0).Inflight(h) {
		t.Fatal("Pop did not mark the head")
	}
}

func TestResumeInflightRefuses(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	small, err := inflight.Create(1, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	if _, err := r.q.ResumeInflight(small.Queue(0)); err == nil {
		t.Fatal("ResumeInflight with a 4-entry region on an 8-entry queue")
	}
	if err := r.q.SetInflight(small.Queue(0)); err == nil {
		t.Fatal("SetInflight with a 4-entry region on an 8-entry queue")
	}
	// A region sized for a larger queue works, but a head past this queue's
	// size in flight is corrupt.
	big, err := inflight.Create(1, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	big.Queue(0).Init(0)
	big.Queue(0).Get(3)
	big.Queue(0).Get(12)
	if _, err := r.q.ResumeInflight(big.Queue(0)); !errors.Is(err, inflight.ErrCorrupt) {
		t.Fatalf("ResumeInflight with head 12 in flight on an 8-entry queue: %v", err)
	}
	big.Queue(0).Init(0)
	big.Queue(0).Get(3)
	if heads, err := r.q.ResumeInflight(big.Queue(0)); err != nil || !slices.Equal(heads, []uint16{3}) || r.q.LastAvail() != 1 {
		t.Fatalf("ResumeInflight with a 16-entry region: %v %v", heads, err)
	}
	r = newRig(t, 8, false, 0, 0)
	if _, err := r.q.ResumeInflight(nil); err == nil {
		t.Fatal("ResumeInflight(nil)")
	}
	// A started region whose used_idx is far from used.idx (0).
	reg, err := inflight.Create(1, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.Queue(0).Init(1000)
	if _, err := r.q.ResumeInflight(reg.Queue(0)); !errors.Is(err, inflight.ErrCorrupt) {
		t.Fatalf("ResumeInflight with used_idx 1000 vs used.idx 0: %v", err)
	}
	if r.q.Inflight() != nil || r.q.LastAvail() != 0 {
		t.Fatal("failed ResumeInflight changed the queue")
	}
}

func TestPopPushAllocsInflight(t *testing.T) {
	r := newRig(t, 256, true, 0, 0)
	reg, err := inflight.Create(1, 256)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if err := r.q.SetInflight(reg.Queue(0)); err != nil {
		t.Fatal(err)
	}
	rd := [][2]uint64{buf(0, 64)}
	wr := [][2]uint64{buf(2, 16), {gpaB - 2048, 4096}}
	var c vring.Chain
	step := func() {
		r.drv.Add(rd, wr)
		r.q.Pop(&c)
		r.q.Push(c.Head, 16)
		r.q.Publish()
		r.drv.PollUsed()
	}
	step()
	if n := testing.AllocsPerRun(100, step); n != 0 {
		t.Fatalf("%v allocs per request with inflight tracking", n)
	}
}

// BenchmarkPopPushInflight is BenchmarkPopPush with tracking off and on.
func BenchmarkPopPushInflight(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("tracking=%v", on), func(b *testing.B) {
			r := newRig(b, 256, true, 0, 0)
			if on {
				reg, err := inflight.Create(1, 256)
				if err != nil {
					b.Fatal(err)
				}
				defer reg.Close()
				if err := r.q.SetInflight(reg.Queue(0)); err != nil {
					b.Fatal(err)
				}
			}
			rd := [][2]uint64{buf(0, 64), buf(1, 4096)}
			wr := [][2]uint64{buf(2, 16), {gpaB - 2048, 4096}}
			var c vring.Chain
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := r.drv.Add(rd, wr); err != nil {
					b.Fatal(err)
				}
				if ok, err := r.q.Pop(&c); !ok || err != nil {
					b.Fatal(ok, err)
				}
				r.q.Push(c.Head, 16)
				r.q.Publish()
				if _, _, ok := r.drv.PollUsed(); !ok {
					b.Fatal("PollUsed")
				}
			}
		})
	}
}
