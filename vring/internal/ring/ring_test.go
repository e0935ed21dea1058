package ring

import "testing"

func TestNeedEvent(t *testing.T) {
	for _, tc := range []struct {
		event, new, old uint16
		want            bool
	}{
		{0, 1, 0, true},         // event 0 crossed by 0->1
		{1, 1, 0, false},        // not reached yet
		{5, 10, 0, true},        // passed inside the batch
		{10, 10, 0, false},      // equal to new: not crossed
		{9, 10, 9, true},        // exactly the last entry
		{65535, 0, 65535, true}, // wraparound
		{65534, 2, 65530, true},
		{3, 2, 65530, false},
	} {
		if got := NeedEvent(tc.event, tc.new, tc.old); got != tc.want {
			t.Errorf("NeedEvent(%d,%d,%d) = %v", tc.event, tc.new, tc.old, got)
		}
	}
}

func TestLoadStore(t *testing.T) {
	b := make([]byte, 64)
	if !Aligned(b, 8) {
		t.Skip("test buffer not 8-aligned")
	}
	StoreWord(b, 4, 0x1122, 0x3344)
	if b[4] != 0x22 || b[5] != 0x11 || b[6] != 0x44 || b[7] != 0x33 {
		t.Fatalf("StoreWord bytes % x", b[4:8])
	}
	if Load16(b, 4) != 0x1122 || Load16(b, 6) != 0x3344 {
		t.Fatalf("Load16: %#x %#x", Load16(b, 4), Load16(b, 6))
	}
	Store16(b, 10, 0xbeef)
	if Load16(b, 10) != 0xbeef || Load16(b, 8) != 0 {
		t.Fatal("Store16/Load16 mismatch")
	}
	b[13], b[14] = 0x01, 0x02 // odd offset: plain fallback
	if Load16(b, 13) != 0x0201 {
		t.Fatal("odd Load16")
	}
	Fence()
	if Aligned(b[1:], 2) || !Aligned(b[2:], 2) || Aligned(nil, 1) {
		t.Fatal("Aligned")
	}
}

func TestStore16KeepsNeighbour(t *testing.T) {
	b := make([]byte, 8)
	StoreWord(b, 0, 0xaaaa, 0xbbbb)
	Store16(b, 2, 0x1234)
	if Load16(b, 0) != 0xaaaa || Load16(b, 2) != 0x1234 {
		t.Fatalf("% x", b[:4])
	}
	Store16(b, 0, 0x5678)
	if Load16(b, 0) != 0x5678 || Load16(b, 2) != 0x1234 {
		t.Fatalf("% x", b[:4])
	}
}
