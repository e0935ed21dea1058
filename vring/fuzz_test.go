package vring_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"vfsd/vring"
)

// FuzzPop puts arbitrary bytes into the descriptor table, the avail ring and
// an indirect-table area, then pops until the ring is empty or broken. Pop
// must not panic or hang, and what it returns must be bounded.
//
// Input: size exponent, flags (bit 0: EVENT_IDX), MaxChain, start index (2
// bytes), then the bytes of the descriptor table, the avail ring (its idx
// field included) and the area at GPA 0x30000.
func FuzzPop(f *testing.F) {
	f.Add([]byte{3, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 5 {
			return
		}
		size := 1 << (data[0] % 6)
		eventIdx := data[1]&1 != 0
		maxChain := int(data[2]) % (size + 1) // 0 = size
		start := binary.LittleEndian.Uint16(data[3:])
		data = data[5:]
		r := newRig(t, size, eventIdx, start, maxChain)
		if maxChain == 0 {
			maxChain = size
		}
		desc, avail, _ := r.drv.Addrs()
		n := copy(r.a[desc:desc+uint64(16*size)], data)
		data = data[n:]
		n = copy(r.a[avail:avail+uint64(4+2*size)], data)
		data = data[n:]
		copy(r.a[0x30000:0x40000], data)

		var c vring.Chain
		pops := 0
		for {
			ok, err := r.q.Pop(&c)
			if errors.Is(err, vring.ErrBroken) {
				if ok {
					t.Fatal("ErrBroken with ok")
				}
				break
			}
			if !ok {
				if err != nil {
					t.Fatalf("not ok with %v", err)
				}
				break
			}
			pops++
			if pops > size {
				t.Fatalf("%d chains popped from a ring of %d", pops, size)
			}
			if int(c.Head) >= size {
				t.Fatalf("head %d", c.Head)
			}
			if err != nil {
				if !errors.Is(err, vring.ErrBadChain) || len(c.Readable)+len(c.Writable) != 0 {
					t.Fatalf("%v with %d+%d segments", err, len(c.Readable), len(c.Writable))
				}
			}
			// Two regions: a descriptor yields at most two segments.
			if segs := len(c.Readable) + len(c.Writable); segs > 2*maxChain {
				t.Fatalf("%d segments, MaxChain %d", segs, maxChain)
			}
			for _, s := range append(c.Readable, c.Writable...) {
				if len(s) == 0 || len(s) > sizeA {
					t.Fatalf("segment of %d bytes", len(s))
				}
			}
			r.q.Push(c.Head, 0)
		}
		r.q.Publish()
		r.q.EnableNotify()
	})
}
