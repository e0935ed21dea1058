package frontend

import (
	"bytes"
	"errors"
	"testing"
)

func TestAllocFree(t *testing.T) {
	m, err := NewMemory(MemOptions{Size: 64 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, err := m.Alloc(1, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Alloc(3*PageSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if a == b || b < a+PageSize {
		t.Fatalf("allocations overlap: %#x %#x", a, b)
	}
	if got := m.FreeBytes(); got != 60*PageSize {
		t.Fatalf("free %d, want %d", got, 60*PageSize)
	}
	if _, err := m.Alloc(61*PageSize, false); !errors.Is(err, ErrNoMem) {
		t.Fatalf("oversized alloc: %v", err)
	}
	m.Free(b, 3*PageSize)
	m.Free(a, 1)
	if _, err := m.Alloc(64*PageSize, false); err != nil {
		t.Fatalf("whole RAM after freeing everything: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("double free did not panic")
		}
	}()
	m.Free(a, 1)
	m.Free(a, 1)
}

func TestAllocRegions(t *testing.T) {
	for _, adjacent := range []bool{false, true} {
		m, err := NewMemory(MemOptions{Size: 8 * PageSize, Regions: 2, Adjacent: adjacent, Base: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		regs := m.Regions()
		if len(regs) != 2 || regs[0].GuestAddr != 1<<20 || regs[1].MmapOffset != 4*PageSize || regs[0].UserAddr == regs[1].UserAddr {
			t.Fatalf("regions %+v", regs)
		}
		if adjacent != (regs[1].GuestAddr == regs[0].GuestAddr+regs[0].Size) {
			t.Fatalf("adjacent=%v but regions %+v", adjacent, regs)
		}
		a, _ := m.Alloc(3*PageSize, false)
		// 2 pages left in region 0, 4 in region 1: a 3-page run straddles
		// only when the regions are adjacent.
		b, err := m.Alloc(3*PageSize, false)
		if err != nil {
			t.Fatal(err)
		}
		straddles := b < regs[1].GuestAddr && b+3*PageSize > regs[1].GuestAddr
		if straddles != adjacent {
			t.Fatalf("adjacent=%v: second run at %#x straddles=%v", adjacent, b, straddles)
		}
		if _, err := m.Bytes(b, 3*PageSize); (err == nil) == straddles {
			t.Fatalf("Bytes of a straddling run: %v", err)
		}
		p := bytes.Repeat([]byte{0xab, 0xcd}, 3*PageSize/2)
		if err := m.WriteAt(p, b); err != nil {
			t.Fatal(err)
		}
		q := make([]byte, len(p))
		if err := m.ReadAt(q, b); err != nil || !bytes.Equal(p, q) {
			t.Fatalf("ReadAt after WriteAt: %v", err)
		}
		if adjacent {
			// The same memfd bytes seen through region 1's mapping.
			r1, _ := m.Bytes(regs[1].GuestAddr, PageSize)
			if r1[0] != p[regs[1].GuestAddr-b] {
				t.Fatal("region 1 mapping does not show the bytes written across the boundary")
			}
		}
		m.Free(a, 3*PageSize)
		m.Free(b, 3*PageSize)
		m.Close()
	}
}

func TestPayloads(t *testing.T) {
	p := VringAddrPayload(1, 0, 0x1000, 0x3000, 0x2000, 0)
	if len(p) != 40 || p[0] != 1 || p[9] != 0x10 || p[17] != 0x30 || p[25] != 0x20 {
		t.Fatalf("vring addr payload %v", p)
	}
	m := MemTablePayload([]RegionDesc{{GuestAddr: 1, Size: 2, UserAddr: 3, MmapOffset: 4}})
	if len(m) != 40 || m[0] != 1 || m[8] != 1 || m[16] != 2 || m[24] != 3 || m[32] != 4 {
		t.Fatalf("mem table payload %v", m)
	}
}
