package driver

import (
	"encoding/binary"
	"errors"
	"testing"
)

const base = 0x10000

func newRing(t *testing.T, size int, eventIdx bool) (*Ring, []byte) {
	t.Helper()
	mem := make([]byte, 1<<16)
	r, err := New(mem, base, size, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	return r, mem
}

// complete plays the device: writes a used element and publishes used.idx.
func complete(mem []byte, r *Ring, head uint16, written uint32) {
	_, _, used := r.Addrs()
	u := mem[used-base:]
	idx := binary.LittleEndian.Uint16(u[2:])
	e := u[4+8*(int(idx)&(r.Size()-1)):]
	binary.LittleEndian.PutUint32(e, uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	binary.LittleEndian.PutUint16(u[2:], idx+1)
}

func desc(d []byte) (uint64, uint32, uint16, uint16) {
	return binary.LittleEndian.Uint64(d), binary.LittleEndian.Uint32(d[8:]),
		binary.LittleEndian.Uint16(d[12:]), binary.LittleEndian.Uint16(d[14:])
}

func TestNewValidates(t *testing.T) {
	mem := make([]byte, 1<<16)
	for _, tc := range []struct {
		size int
		base uint64
		n    int
	}{{0, 0, len(mem)}, {3, 0, len(mem)}, {65536, 0, len(mem)}, {8, 8, len(mem)}, {256, 0, 100}} {
		if _, err := New(mem[:tc.n], tc.base, tc.size, false); err == nil {
			t.Errorf("New(size %d, base %#x, %d bytes) accepted", tc.size, tc.base, tc.n)
		}
	}
	r, _ := newRing(t, 256, true)
	d, a, u := r.Addrs()
	if d != base || a != base+256*16 || u%4 != 0 || u < a+6+2*256 || r.End() != base+uint64(Layout(256)) {
		t.Fatalf("layout %#x %#x %#x end %#x", d, a, u, r.End())
	}
}

func TestAddPollFree(t *testing.T) {
	r, mem := newRing(t, 4, false)
	h1, err := r.Add([][2]uint64{{0x8000, 10}}, [][2]uint64{{0x9000, 20}, {0xa000, 30}})
	if err != nil {
		t.Fatal(err)
	}
	if r.NumFree() != 1 || r.AvailIdx() != 1 {
		t.Fatalf("free %d avail %d", r.NumFree(), r.AvailIdx())
	}
	addr, n, fl, next := desc(r.RawDesc(int(h1)))
	if addr != 0x8000 || n != 10 || fl != DescFNext {
		t.Fatalf("first desc %#x %d %#x", addr, n, fl)
	}
	_, n, fl, next = desc(r.RawDesc(int(next)))
	if n != 20 || fl != DescFNext|DescFWrite {
		t.Fatalf("second desc %d %#x", n, fl)
	}
	_, n, fl, _ = desc(r.RawDesc(int(next)))
	if n != 30 || fl != DescFWrite {
		t.Fatalf("third desc %d %#x", n, fl)
	}
	if _, err := r.Add(nil, [][2]uint64{{1, 1}, {2, 2}}); !errors.Is(err, ErrFull) {
		t.Fatalf("overfull Add: %v", err)
	}
	if _, _, ok := r.PollUsed(); ok {
		t.Fatal("PollUsed on empty used ring")
	}
	complete(mem, r, h1, 42)
	h, w, ok := r.PollUsed()
	if !ok || h != h1 || w != 42 || r.NumFree() != 4 {
		t.Fatalf("PollUsed = %d %d %v, free %d", h, w, ok, r.NumFree())
	}
	// Reuse all descriptors many times, including through wraparound.
	if err := r.StartAt(65533); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		h, err := r.Add([][2]uint64{{1, 1}, {2, 2}}, [][2]uint64{{3, 3}, {4, 4}})
		if err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
		complete(mem, r, h, 0)
		if _, _, ok := r.PollUsed(); !ok || r.NumFree() != 4 {
			t.Fatalf("iteration %d: not freed", i)
		}
	}
	if _, err := r.Add(nil, [][2]uint64{{0, 1 << 32}}); !errors.Is(err, ErrBadBuffer) {
		t.Fatalf("oversized length: %v", err)
	}
}

func TestPollUsedRejectsBadDevice(t *testing.T) {
	r, mem := newRing(t, 4, false)
	h, _ := r.Add([][2]uint64{{1, 1}}, nil)
	complete(mem, r, h+1, 0) // not outstanding
	if _, _, ok := r.PollUsed(); ok || r.Err() == nil {
		t.Fatal("bogus head accepted")
	}
	r, mem = newRing(t, 4, false)
	r.Add([][2]uint64{{1, 1}}, nil)
	complete(mem, r, 0, 0)
	complete(mem, r, 0, 0) // two completions for one chain
	if _, _, ok := r.PollUsed(); ok || r.Err() == nil {
		t.Fatal("used.idx beyond outstanding accepted")
	}
}

func TestAddIndirect(t *testing.T) {
	r, _ := newRing(t, 8, false)
	tbl := r.End()
	h, err := r.AddIndirect(tbl, [][2]uint64{{0x100, 5}}, [][2]uint64{{0x200, 6}})
	if err != nil {
		t.Fatal(err)
	}
	addr, n, fl, _ := desc(r.RawDesc(int(h)))
	if addr != tbl || n != 32 || fl != DescFIndirect || r.NumFree() != 7 {
		t.Fatalf("indirect desc %#x %d %#x", addr, n, fl)
	}
	b, _ := r.Bytes(tbl, 32)
	if a, n, fl, nx := desc(b); a != 0x100 || n != 5 || fl != DescFNext || nx != 1 {
		t.Fatalf("table[0] %#x %d %#x %d", a, n, fl, nx)
	}
	if a, n, fl, _ := desc(b[16:]); a != 0x200 || n != 6 || fl != DescFWrite {
		t.Fatalf("table[1] %#x %d %#x", a, n, fl)
	}
	if _, err := r.AddIndirect(base+1<<16, [][2]uint64{{1, 1}}, nil); err == nil {
		t.Fatal("table outside memory accepted")
	}
}

func TestNotifySuppression(t *testing.T) {
	r, mem := newRing(t, 8, false)
	_, _, used := r.Addrs()
	r.Add([][2]uint64{{1, 1}}, nil)
	if !r.NeedKick() {
		t.Fatal("no kick without NO_NOTIFY")
	}
	mem[used-base] = UsedFNoNotify
	r.Add([][2]uint64{{1, 1}}, nil)
	if r.NeedKick() {
		t.Fatal("kick despite NO_NOTIFY")
	}
	r, mem = newRing(t, 8, true)
	_, _, used = r.Addrs()
	ev := mem[used-base+4+8*8:]
	binary.LittleEndian.PutUint16(ev, 1) // device wants a kick when entry 1 is published
	r.Add([][2]uint64{{1, 1}}, nil)      // idx 0 -> 1: entry 0
	if r.NeedKick() {
		t.Fatal("kick before avail_event reached")
	}
	r.Add([][2]uint64{{1, 1}}, nil) // entry 1
	r.Add([][2]uint64{{1, 1}}, nil) // entry 2
	if !r.NeedKick() {
		t.Fatal("no kick after crossing avail_event")
	}
	// used_event tracks the last used index while interrupts are enabled.
	complete(mem, r, 0, 0)
	r.PollUsed()
	_, avail, _ := r.Addrs()
	if ue := binary.LittleEndian.Uint16(mem[avail-base+4+2*8:]); ue != 1 {
		t.Fatalf("used_event %d, want 1", ue)
	}
	r.DisableInterrupts()
	if r.EnableInterrupts() {
		t.Fatal("EnableInterrupts reports pending work on an empty used ring")
	}
}

func TestArena(t *testing.T) {
	a, err := NewArena(0x1001, 0x1000, 0x100)
	if err != nil {
		t.Fatal(err)
	}
	if a.Available() != 0xf00 {
		t.Fatalf("available %#x", a.Available())
	}
	var got []uint64
	for {
		g, err := a.Alloc(0x180)
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil || g%0x100 != 0 || g < 0x1100 || g+0x180 > 0x2001 {
			t.Fatalf("Alloc = %#x %v", g, err)
		}
		got = append(got, g)
	}
	if len(got) != 7 {
		t.Fatalf("%d allocations of 0x200 in 0xf00", len(got))
	}
	// Free in a scrambled order; everything must coalesce back.
	for _, i := range []int{3, 0, 6, 1, 5, 2, 4} {
		if err := a.Free(got[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Free(got[0]); err == nil {
		t.Fatal("double free accepted")
	}
	if g, err := a.Alloc(0xf00); err != nil || g != 0x1100 {
		t.Fatalf("whole arena after frees: %#x %v", g, err)
	}
	if _, err := NewArena(0, 10, 3); err == nil {
		t.Fatal("bad alignment accepted")
	}
}
