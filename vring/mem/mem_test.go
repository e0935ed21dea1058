package mem

import (
	"errors"
	"math"
	"testing"

	"golang.org/x/sys/unix"
)

func mapped(gpa, size, uva uint64) Mapped {
	return Mapped{Region: Region{GuestAddr: gpa, Size: size, UserAddr: uva}, Data: make([]byte, size)}
}

func TestTableTranslate(t *testing.T) {
	a := mapped(0x1000, 0x1000, 0x7f0000001000)
	b := mapped(0x2000, 0x1000, 0x7f0000100000) // adjacent in guest space, not in user space
	c := mapped(0x10000, 0x100, 0x7e0000000000)
	tb, err := NewTable([]Mapped{c, b, a})
	if err != nil {
		t.Fatal(err)
	}
	if rs := tb.Regions(); rs[0].GuestAddr != 0x1000 || rs[2].GuestAddr != 0x10000 {
		t.Fatalf("regions not sorted: %+v", rs)
	}
	s, err := tb.Segment(0x1ff0, 0x20)
	if err != nil || len(s) != 0x10 || cap(s) != 0x10 || &s[0] != &a.Data[0xff0] {
		t.Fatalf("segment across regions: len %d err %v", len(s), err)
	}
	s, err = tb.Segment(0x2000, 0x10)
	if err != nil || len(s) != 0x10 || &s[0] != &b.Data[0] {
		t.Fatalf("second segment: len %d err %v", len(s), err)
	}
	if _, err := tb.Slice(0x1ff0, 0x20); !errors.Is(err, ErrOutside) {
		t.Fatalf("Slice across regions: %v", err)
	}
	if s, err := tb.Slice(0x10000, 0x100); err != nil || len(s) != 0x100 {
		t.Fatalf("Slice whole region: %v", err)
	}
	for _, tc := range []struct{ gpa, n uint64 }{
		{0, 1}, {0xfff, 1}, {0x3000, 1}, {0x10100, 1}, {0x1000, 0},
		{math.MaxUint64, 1}, {0x1000, math.MaxUint64}, {math.MaxUint64 - 1, 4},
	} {
		if _, err := tb.Segment(tc.gpa, tc.n); !errors.Is(err, ErrOutside) {
			t.Errorf("Segment(%#x, %#x): %v, want ErrOutside", tc.gpa, tc.n, err)
		}
	}
	if g, err := tb.UserToGuest(0x7f0000100010); err != nil || g != 0x2010 {
		t.Fatalf("UserToGuest: %#x %v", g, err)
	}
	if g, err := tb.UserToGuest(0x7e00000000ff); err != nil || g != 0x100ff {
		t.Fatalf("UserToGuest: %#x %v", g, err)
	}
	for _, uva := range []uint64{0, 0x7f0000002000, 0x7e0000000100, math.MaxUint64} {
		if _, err := tb.UserToGuest(uva); !errors.Is(err, ErrOutside) {
			t.Errorf("UserToGuest(%#x): %v", uva, err)
		}
	}
}

func TestNewTableRejects(t *testing.T) {
	bad := [][]Mapped{
		{mapped(0x1000, 0x1000, 0), mapped(0x1800, 0x1000, 0x10000)},      // guest overlap
		{mapped(0x1000, 0x1000, 0), mapped(0x4000, 0x1000, 0x800)},        // user overlap
		{{Region: Region{GuestAddr: 0, Size: 0}}},                         // empty
		{{Region: Region{GuestAddr: 0, Size: 10}, Data: make([]byte, 5)}}, // size mismatch
		{{Region: Region{GuestAddr: math.MaxUint64 - 1, Size: 4}, Data: make([]byte, 4)}},
		{{Region: Region{UserAddr: math.MaxUint64 - 1, Size: 4}, Data: make([]byte, 4)}},
	}
	for i, regs := range bad {
		if _, err := NewTable(regs); err == nil {
			t.Errorf("case %d: NewTable accepted %+v", i, regs)
		}
	}
	// A region ending exactly at the top of the address space is fine.
	top := mapped(math.MaxUint64-0xfff, 0x1000, 0)
	tb, err := NewTable([]Mapped{top})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := tb.Segment(math.MaxUint64, 1); err != nil || len(s) != 1 {
		t.Fatalf("last byte: %v", err)
	}
}

func TestMapMemfd(t *testing.T) {
	fd, err := NewMemfd("vring-mem-test", 3*uint64(pageSize))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	whole, err := Map(fd, Region{GuestAddr: 0, Size: 3 * pageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Unmap()
	// Unaligned mmap offset: the view must start at that byte of the file.
	r := Region{GuestAddr: 0x100000, Size: pageSize, MmapOffset: pageSize + 24}
	m, err := Map(fd, r)
	if err != nil {
		t.Fatal(err)
	}
	m.Data[0] = 0xab
	if whole.Data[pageSize+24] != 0xab {
		t.Fatal("mapping does not share the memfd at the right offset")
	}
	if err := m.Unmap(); err != nil {
		t.Fatal(err)
	}
	if _, err := Map(fd, Region{Size: 2 * pageSize, MmapOffset: 2 * pageSize}); err == nil {
		t.Fatal("Map accepted a region past the end of the memfd")
	}
	if _, err := Map(fd, Region{Size: 0}); err == nil {
		t.Fatal("Map accepted zero size")
	}
	if _, err := Map(fd, Region{Size: 16, MmapOffset: math.MaxUint64 - 8}); err == nil {
		t.Fatal("Map accepted overflowing offset")
	}
}
