package inflight

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand"
	"slices"
	"testing"
)

// memRegion is a region over plain memory (8-aligned, as Go allocates it),
// for tests that need no fd.
func memRegion(numQueues, queueSize int) *Region {
	return newRegion(-1, nil, make([]byte, Size(numQueues, queueSize)), numQueues, queueSize)
}

// usedRing is a fake used ring: ids only, indexed by the free-running index.
type usedRing []uint32

func (u usedRing) head(i uint16) uint32 { return u[int(i)%len(u)] }

func alignUp(n, a int) int { return (n + a - 1) / a * a }

func TestSize(t *testing.T) {
	for qs := 1; qs <= MaxQueueSize; qs *= 2 {
		// libvhost-user's vu_inflight_queue_size and DPDK's
		// get_pervq_shm_size_split agree with ours for power-of-two sizes.
		if got, lib, dpdk := Size(1, qs), alignUp(16*qs+2, 64), alignUp(16*qs+16, 64); got != lib || got != dpdk {
			t.Errorf("Size(1, %d) = %d, libvhost-user %d, DPDK %d", qs, got, lib, dpdk)
		}
		if Size(3, qs) != 3*Size(1, qs) {
			t.Errorf("Size(3, %d) not 3 strides", qs)
		}
	}
	if Size(1, 1024) != 16448 {
		t.Errorf("Size(1, 1024) = %d", Size(1, 1024))
	}
	for _, g := range [][2]int{{0, 8}, {-1, 8}, {1, 0}, {1, 3}, {1, 65536}, {65536, 1}, {1, -8}} {
		if Size(g[0], g[1]) != 0 {
			t.Errorf("Size(%d, %d) = %d, want 0", g[0], g[1], Size(g[0], g[1]))
		}
	}
}

func TestLifecycle(t *testing.T) {
	r := memRegion(2, 8)
	q := r.Queue(1)
	if r.Queue(2) != nil || r.Queue(-1) != nil || r.NumQueues() != 2 || r.QueueSize() != 8 {
		t.Fatal("Queue bounds")
	}
	if q.Started() {
		t.Fatal("zeroed region started")
	}
	if _, _, err := q.Resume(0, usedRing{0}.head); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Resume on fresh region: %v", err)
	}
	q.Init(100)
	if !q.Started() || r.Queue(0).Started() {
		t.Fatal("Init started the wrong queue")
	}
	if err := r.validate(); err != nil {
		t.Fatal(err)
	}
	used := make(usedRing, 8)
	for _, h := range []uint16{3, 1, 5} {
		q.Get(h)
	}
	q.Get(8) // out of range: ignored
	if !q.Inflight(3) || !q.Inflight(1) || !q.Inflight(5) || q.Inflight(0) || q.Inflight(8) {
		t.Fatal("Inflight after Get")
	}
	used[100%8] = 1
	q.PrePut(1)
	q.Complete(1)
	q.PostPut(101)
	la, heads, err := q.Resume(101, used.head)
	if err != nil || la != 103 || !slices.Equal(heads, []uint16{3, 5}) {
		t.Fatalf("Resume = %d %v %v, want 103 [3 5]", la, heads, err)
	}
	// Counters go on after the largest one in flight.
	q.Get(0)
	if c := binary.LittleEndian.Uint64(q.b[hdrSize+descSize*0+offCounter:]); c != 4 {
		t.Fatalf("counter after resume %d, want 4", c)
	}
}

// TestResumeOpenBatch: the crash hit after used.idx was stored, with one of
// the batch's two flags cleared.
func TestResumeOpenBatch(t *testing.T) {
	q := memRegion(1, 8).Queue(0)
	q.Init(0)
	for _, h := range []uint16{2, 7, 4} {
		q.Get(h)
	}
	used := usedRing{7, 2, 0, 0, 0, 0, 0, 0}
	q.PrePut(7)
	// used.idx = 2 in guest RAM
	q.Complete(7)
	for try := 0; try < 2; try++ { // Resume is idempotent
		la, heads, err := q.Resume(2, used.head)
		if err != nil || la != 3 || !slices.Equal(heads, []uint16{4}) {
			t.Fatalf("try %d: Resume = %d %v %v, want 3 [4]", try, la, heads, err)
		}
		if q.Inflight(2) || q.Inflight(7) || binary.LittleEndian.Uint16(q.b[offBatch+2:]) != 2 {
			t.Fatal("open batch not closed")
		}
	}
}

// TestResumeWraparound: used_idx and used.idx on both sides of 65535, and a
// pop order unlike head order.
func TestResumeWraparound(t *testing.T) {
	q := memRegion(1, 8).Queue(0)
	q.Init(65534)
	for _, h := range []uint16{5, 4, 3, 2, 1, 0} {
		q.Get(h)
	}
	used := make(usedRing, 8)
	for i, h := range []uint32{1, 3, 0, 5} {
		used[(65534+i)%8] = h
	}
	q.PrePut(1)
	// used.idx = 2: the batch wrapped. Crash before any Complete.
	la, heads, err := q.Resume(2, used.head)
	if err != nil || la != 4 || !slices.Equal(heads, []uint16{4, 2}) {
		t.Fatalf("Resume = %d %v %v, want 4 [4 2]", la, heads, err)
	}
	// Nothing open: lastAvail wraps too.
	q.Init(65535)
	q.Get(6)
	q.Get(1)
	la, heads, err = q.Resume(65535, used.head)
	if err != nil || la != 1 || !slices.Equal(heads, []uint16{6, 1}) {
		t.Fatalf("Resume = %d %v %v, want 1 [6 1]", la, heads, err)
	}
}

// TestResumeCrashInsideResume stops Resume after each of its stores; a second
// Resume must give what an uninterrupted one gives.
func TestResumeCrashInsideResume(t *testing.T) {
	setup := func() (*Queue, usedRing) {
		q := memRegion(1, 16).Queue(0)
		q.Init(10)
		for h := uint16(0); h < 9; h++ {
			q.Get(15 - h)
		}
		used := make(usedRing, 16)
		for i, h := range []uint32{9, 13, 11, 15} {
			used[(10+i)%16] = h
		}
		q.PrePut(9)
		return q, used
	}
	q, used := setup()
	wantLA, want, err := q.Resume(14, used.head)
	if err != nil {
		t.Fatal(err)
	}
	for k := 1; ; k++ {
		q, used := setup()
		n := 0
		q.SetCrashHook(func() {
			if n++; n == k {
				panic(errCrash)
			}
		})
		if !crashed(func() { q.Resume(14, used.head) }) {
			if k == 1 {
				t.Fatal("Resume made no store")
			}
			break
		}
		q.SetCrashHook(nil)
		la, heads, err := q.Resume(14, used.head)
		if err != nil || la != wantLA || !slices.Equal(heads, want) {
			t.Fatalf("crash at store %d: Resume = %d %v %v, want %d %v", k, la, heads, err, wantLA, want)
		}
	}
}

var errCrash = errors.New("simulated crash")

// crashed runs f and reports whether it stopped with errCrash.
func crashed(f func()) (c bool) {
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

func TestHostileRegions(t *testing.T) {
	const qs = 8
	// started: heads 1, 6, 3 popped in that order, batch [6] open at used 20.
	started := func() (*Queue, usedRing) {
		q := memRegion(1, qs).Queue(0)
		q.Init(20)
		q.Get(1)
		q.Get(6)
		q.Get(3)
		used := make(usedRing, qs)
		used[20%qs] = 6
		q.PrePut(6)
		return q, used
	}
	put16 := func(q *Queue, off int, v uint16) { binary.LittleEndian.PutUint16(q.b[off:], v) }
	put64 := func(q *Queue, off int, v uint64) { binary.LittleEndian.PutUint64(q.b[off:], v) }
	desc := func(h int) int { return hdrSize + descSize*h }
	for _, tc := range []struct {
		name    string
		mutate  func(q *Queue, u usedRing)
		usedIdx uint16
		mapErr  bool // the header check (MapAt) refuses it already
	}{
		{"desc_num mismatch", func(q *Queue, u usedRing) { put16(q, offVersion+2, 4) }, 21, true},
		{"desc_num 0 when started", func(q *Queue, u usedRing) { put16(q, offVersion+2, 0) }, 21, true},
		{"version 2", func(q *Queue, u usedRing) { put16(q, offVersion, 2) }, 21, true},
		{"features", func(q *Queue, u usedRing) { put64(q, offFeatures, 1) }, 21, true},
		{"inflight byte 2", func(q *Queue, u usedRing) { q.b[desc(5)] = 2 }, 21, true},
		{"inflight byte 0xff", func(q *Queue, u usedRing) { q.b[desc(1)] = 0xff }, 21, true},
		{"duplicated counters", func(q *Queue, u usedRing) { put64(q, desc(3)+offCounter, 1) }, 21, false},
		{"counter 0", func(q *Queue, u usedRing) { put64(q, desc(1)+offCounter, 0) }, 21, false},
		{"counter huge", func(q *Queue, u usedRing) { put64(q, desc(3)+offCounter, MaxCounter+1) }, 21, false},
		{"used.idx far ahead", nil, 20 + qs + 1, false},
		{"used.idx behind", nil, 19, false},
		{"used_idx far off", func(q *Queue, u usedRing) { put16(q, offBatch+2, 40000) }, 21, false},
		{"used head out of range", func(q *Queue, u usedRing) { u[20%qs] = qs }, 21, false},
		{"used head wide", func(q *Queue, u usedRing) { u[20%qs] = 0x10006 }, 21, false},
		{"batch head mismatch", func(q *Queue, u usedRing) { u[20%qs] = 3 }, 21, false},
		{"second used head out of range", func(q *Queue, u usedRing) { u[21%qs] = 0xffffffff }, 22, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, used := started()
			if tc.mutate != nil {
				tc.mutate(q, used)
			}
			if err := q.check(); (err != nil) != tc.mapErr {
				t.Fatalf("check: %v, want error %v", err, tc.mapErr)
			}
			before := bytes.Clone(q.b)
			_, _, err := q.Resume(tc.usedIdx, used.head)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Resume: %v, want ErrCorrupt", err)
			}
			if !bytes.Equal(before, q.b) {
				t.Fatal("failed Resume changed the region")
			}
		})
	}
	// The unmutated region resumes: 6 was published, 1 and 3 resubmitted.
	q, used := started()
	la, heads, err := q.Resume(21, used.head)
	if err != nil || la != 23 || !slices.Equal(heads, []uint16{1, 3}) {
		t.Fatalf("Resume = %d %v %v", la, heads, err)
	}
}

// TestRandomRegions: random bytes (and random but structurally valid headers)
// give an error or a consistent result, never a panic.
func TestRandomRegions(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 3000; i++ {
		qs := 1 << rng.Intn(6)
		r := memRegion(1, qs)
		rng.Read(r.data)
		if i%2 == 0 {
			// Make the header plausible so Resume's own checks run.
			q := r.Queue(0)
			binary.LittleEndian.PutUint64(q.b, 0)
			binary.LittleEndian.PutUint32(q.b[offVersion:], uint32(qs)<<16|Version)
			binary.LittleEndian.PutUint16(q.b[offBatch+2:], uint16(rng.Intn(65536)))
			for h := 0; h < qs; h++ {
				q.b[hdrSize+descSize*h] &= 1
				if rng.Intn(2) == 0 {
					binary.LittleEndian.PutUint64(q.b[hdrSize+descSize*h+offCounter:], uint64(rng.Intn(64)))
				}
			}
		}
		used := make(usedRing, qs)
		for j := range used {
			used[j] = uint32(rng.Intn(qs + 2))
		}
		base := binary.LittleEndian.Uint16(r.data[offBatch+2:])
		resumeChecked(t, r, base+uint16(rng.Intn(qs+2)), used)
	}
}

// resumeChecked validates r like MapAt, resumes its queue 0 and checks the
// result: on error the region is unchanged; on success the heads are distinct,
// in range, in counter order, exactly the flagged ones, lastAvail = used.idx
// + len(heads), used_idx = used.idx, and a second Resume agrees.
func resumeChecked(t *testing.T, r *Region, usedIdx uint16, used usedRing) {
	t.Helper()
	if r.validate() != nil {
		return
	}
	q := r.Queue(0)
	before := bytes.Clone(r.data)
	la, heads, err := q.Resume(usedIdx, used.head)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotStarted) {
			t.Fatalf("Resume error %v is neither ErrCorrupt nor ErrNotStarted", err)
		}
		if !bytes.Equal(before, r.data) {
			t.Fatal("failed Resume changed the region")
		}
		return
	}
	if la != usedIdx+uint16(len(heads)) {
		t.Fatalf("lastAvail %d, used.idx %d, %d heads", la, usedIdx, len(heads))
	}
	if got := binary.LittleEndian.Uint16(q.b[offBatch+2:]); got != usedIdx {
		t.Fatalf("used_idx %d after Resume, used.idx %d", got, usedIdx)
	}
	seen := make(map[uint16]bool)
	var last uint64
	for _, h := range heads {
		if int(h) >= q.size || seen[h] || !q.Inflight(h) {
			t.Fatalf("bad head %d in %v", h, heads)
		}
		seen[h] = true
		c := binary.LittleEndian.Uint64(q.b[hdrSize+descSize*int(h)+offCounter:])
		if c <= last || c > MaxCounter {
			t.Fatalf("counters out of order at head %d: %d after %d", h, c, last)
		}
		last = c
	}
	for h := 0; h < q.size; h++ {
		if q.Inflight(uint16(h)) != seen[uint16(h)] {
			t.Fatalf("head %d flagged %v, returned %v", h, q.Inflight(uint16(h)), seen[uint16(h)])
		}
	}
	la2, heads2, err := q.Resume(usedIdx, used.head)
	if err != nil || la2 != la || !slices.Equal(heads, heads2) {
		t.Fatalf("second Resume = %d %v %v, first %d %v", la2, heads2, err, la, heads)
	}
}

// FuzzResume: input is the queue size exponent (1 byte), used.idx (2 bytes),
// then the bytes of one queue region and the used ring's ids (u32 each); what
// is missing is zero.
func FuzzResume(f *testing.F) {
	f.Add([]byte{3, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 3 {
			return
		}
		qs := 1 << (data[0] % 6)
		usedIdx := binary.LittleEndian.Uint16(data[1:])
		data = data[3:]
		r := memRegion(1, qs)
		data = data[copy(r.data, data):]
		used := make(usedRing, qs)
		for i := range used {
			if len(data) >= 4 {
				used[i] = binary.LittleEndian.Uint32(data)
				data = data[4:]
			}
		}
		resumeChecked(t, r, usedIdx, used)
	})
}
