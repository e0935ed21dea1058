package vring_test

import (
	"errors"
	"math"
	"testing"

	"vfsd/vring"
	"vfsd/vring/driver"
)

const (
	fN = driver.DescFNext
	fW = driver.DescFWrite
	fI = driver.DescFIndirect
)

// TestHostileChains: every malformed chain is consumed as ErrBadChain with a
// valid head, and the queue keeps working afterwards.
func TestHostileChains(t *testing.T) {
	const size = 16
	for _, tc := range []struct {
		name     string
		maxChain int
		setup    func(r *rig) // writes descriptors; head 0 is published
	}{
		{"self loop", 0, func(r *rig) { r.drv.SetDesc(0, 0x20000, 8, fN, 0) }},
		{"two-descriptor loop", 0, func(r *rig) {
			r.drv.SetDesc(0, 0x20000, 8, fN, 1)
			r.drv.SetDesc(1, 0x20000, 8, fN, 0)
		}},
		{"zero-length loop", 0, func(r *rig) {
			r.drv.SetDesc(0, 0, 0, fN, 1)
			r.drv.SetDesc(1, 0, 0, fN, 0)
		}},
		{"next out of range", 0, func(r *rig) { r.drv.SetDesc(0, 0x20000, 8, fN, size) }},
		{"next 0xffff", 0, func(r *rig) { r.drv.SetDesc(0, 0x20000, 8, fN, 0xffff) }},
		{"address outside RAM", 0, func(r *rig) { r.drv.SetDesc(0, gpaB+sizeB, 8, 0, 0) }},
		{"address far above RAM", 0, func(r *rig) { r.drv.SetDesc(0, 1<<40, 1, fW, 0) }},
		{"address overflows", 0, func(r *rig) { r.drv.SetDesc(0, math.MaxUint64-3, 8, 0, 0) }},
		{"huge length", 0, func(r *rig) { r.drv.SetDesc(0, 0x20000, math.MaxUint32, fW, 0) }},
		{"readable after writable", 0, func(r *rig) {
			r.drv.SetDesc(0, 0x20000, 8, fW|fN, 1)
			r.drv.SetDesc(1, 0x21000, 8, 0, 0)
		}},
		{"chain longer than MaxChain", 4, func(r *rig) {
			for i := 0; i < 5; i++ {
				r.drv.SetDesc(i, 0x20000, 8, fN, uint16(i+1))
			}
			r.drv.SetDesc(4, 0x20000, 8, 0, 0)
		}},
		{"chain longer than size", 0, func(r *rig) { // only a loop can be
			for i := 0; i < size; i++ {
				r.drv.SetDesc(i, 0x20000, 8, fN, uint16((i+1)%size))
			}
		}},
		{"indirect length not multiple of 16", 0, func(r *rig) { r.drv.SetDesc(0, 0x30000, 24, fI, 0) }},
		{"indirect length zero", 0, func(r *rig) { r.drv.SetDesc(0, 0x30000, 0, fI, 0) }},
		{"indirect table longer than MaxChain", 4, func(r *rig) { r.drv.SetDesc(0, 0x30000, 5*16, fI, 0) }},
		{"indirect table too long for a uint32", 0, func(r *rig) { r.drv.SetDesc(0, 0x30000, math.MaxUint32&^15, fI, 0) }},
		{"indirect table outside RAM", 0, func(r *rig) { r.drv.SetDesc(0, gpaB+sizeB-16, 32, fI, 0) }},
		{"indirect with NEXT", 0, func(r *rig) {
			driver.PutDesc(r.a[0x30000:], 0x20000, 8, 0, 0)
			r.drv.SetDesc(0, 0x30000, 16, fI|fN, 1)
			r.drv.SetDesc(1, 0x20000, 8, 0, 0)
		}},
		{"nested indirect", 0, func(r *rig) {
			driver.PutDesc(r.a[0x30000:], 0x30000, 16, fI, 0)
			r.drv.SetDesc(0, 0x30000, 16, fI, 0)
		}},
		{"loop inside indirect table", 0, func(r *rig) {
			driver.PutDesc(r.a[0x30000:], 0x20000, 8, fN, 1)
			driver.PutDesc(r.a[0x30010:], 0x20000, 8, fN, 0)
			r.drv.SetDesc(0, 0x30000, 32, fI, 0)
		}},
		{"next out of indirect table", 0, func(r *rig) {
			driver.PutDesc(r.a[0x30000:], 0x20000, 8, fN, 2)
			driver.PutDesc(r.a[0x30010:], 0x20000, 8, 0, 0)
			r.drv.SetDesc(0, 0x30000, 32, fI, 0)
		}},
		{"direct plus indirect over MaxChain", 3, func(r *rig) {
			r.drv.SetDesc(0, 0x20000, 8, fN, 1)
			r.drv.SetDesc(1, 0x30000, 48, fI, 0)
			for i := 0; i < 3; i++ {
				driver.PutDesc(r.a[0x30000+16*i:], 0x20000, 8, fN, uint16(i+1))
			}
			driver.PutDesc(r.a[0x30000+32:], 0x20000, 8, 0, 0)
		}},
		{"readable after writable across indirect", 0, func(r *rig) {
			r.drv.SetDesc(0, 0x20000, 8, fW|fN, 1)
			r.drv.SetDesc(1, 0x30000, 16, fI, 0)
			driver.PutDesc(r.a[0x30000:], 0x20000, 8, 0, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, size, false, 0, tc.maxChain)
			tc.setup(r)
			r.drv.PublishRaw(0)
			c, err := r.pop(t)
			if !errors.Is(err, vring.ErrBadChain) {
				t.Fatalf("Pop: %v, want ErrBadChain", err)
			}
			if c.Head != 0 || len(c.Readable) != 0 || len(c.Writable) != 0 {
				t.Fatalf("bad chain: head %d, %d+%d segments", c.Head, len(c.Readable), len(c.Writable))
			}
			// The caller completes it and the queue goes on.
			r.q.Push(c.Head, 0)
			r.q.Publish()
			r.drv.SetDesc(5, 0x20000, 8, fW, 0)
			r.drv.PublishRaw(5)
			if c, err := r.pop(t); err != nil || c.Head != 5 || len(c.Writable) != 1 {
				t.Fatalf("after a bad chain: head %d err %v", c.Head, err)
			}
		})
	}
}

// TestHostileAvail: an impossible avail ring breaks the queue for good.
func TestHostileAvail(t *testing.T) {
	const size = 8
	for _, tc := range []struct {
		name  string
		setup func(r *rig)
	}{
		{"avail idx jumps by size+1", func(r *rig) { r.drv.SetAvailIdx(size + 1) }},
		{"avail idx goes backwards", func(r *rig) { r.drv.SetAvailIdx(0xffff) }},
		{"head out of range", func(r *rig) { r.drv.PublishRaw(size) }},
		{"head 0xffff", func(r *rig) { r.drv.PublishRaw(0xffff) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, size, true, 0, 0)
			tc.setup(r)
			var c vring.Chain
			for i := 0; i < 3; i++ {
				if ok, err := r.q.Pop(&c); ok || !errors.Is(err, vring.ErrBroken) {
					t.Fatalf("Pop %d: %v %v, want ErrBroken", i, ok, err)
				}
			}
			if r.q.LastAvail() != 0 {
				t.Fatal("a broken ring consumed an entry")
			}
		})
	}
	// Exactly size entries ahead is legal.
	r := newRig(t, size, false, 0, 0)
	for i := 0; i < size; i++ {
		r.drv.SetDesc(i, 0x20000, 1, 0, 0)
		r.drv.PublishRaw(uint16(i))
	}
	for i := 0; i < size; i++ {
		if _, err := r.pop(t); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTOCTOU: the guest rewriting a descriptor after Pop does not change what
// Pop returned (each descriptor is read once).
func TestDescriptorReadOnce(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	r.drv.SetDesc(0, 0x20000, 8, fW, 0)
	r.drv.PublishRaw(0)
	c, err := r.pop(t)
	if err != nil {
		t.Fatal(err)
	}
	r.drv.SetDesc(0, 0x20000, math.MaxUint32, fW, 0)
	if len(c.Writable) != 1 || len(c.Writable[0]) != 8 || cap(c.Writable[0]) != 8 {
		t.Fatal("segment changed or has spare capacity")
	}
}
