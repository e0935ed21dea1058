package vring_test

import (
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/vring"
	"vfsd/vring/driver"
	"vfsd/vring/mem"
)

// TestMemfdRegions runs a queue over guest RAM mapped from a memfd the way
// the vhost-user backend maps it: two regions of one fd, adjacent in guest
// space, mapped separately. The driver writes through its own mapping.
func TestMemfdRegions(t *testing.T) {
	const half = 1 << 16
	fd, err := mem.NewMemfd("vring-test", 2*half)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var regs []mem.Mapped
	for i := uint64(0); i < 2; i++ {
		m, err := mem.Map(fd, mem.Region{GuestAddr: i * half, Size: half, UserAddr: 0x7f0000000000 + i*half, MmapOffset: i * half})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Unmap()
		regs = append(regs, m)
	}
	tab, err := mem.NewTable(regs)
	if err != nil {
		t.Fatal(err)
	}
	guest, err := mem.Map(fd, mem.Region{Size: 2 * half}) // the "guest's" view
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Unmap()
	drv, err := driver.New(guest.Data, 0, 64, true)
	if err != nil {
		t.Fatal(err)
	}
	d, a, u := drv.Addrs()
	q, err := vring.New(tab, vring.Config{Size: 64, Desc: d, Avail: a, Used: u, EventIdx: true}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	copy(guest.Data[half-3:], "abcdef")
	h, _ := drv.Add([][2]uint64{{half - 3, 6}}, nil)
	var c vring.Chain
	if ok, err := q.Pop(&c); !ok || err != nil || len(c.Readable) != 2 ||
		string(c.Readable[0]) != "abc" || string(c.Readable[1]) != "def" {
		t.Fatalf("Pop: %v %v %q", ok, err, c.Readable)
	}
	q.Push(c.Head, 0)
	q.Publish()
	if got, _, ok := drv.PollUsed(); !ok || got != h {
		t.Fatal("PollUsed")
	}

	// A region whose file offset is not aligned like its guest address puts
	// the rings at misaligned host addresses: New must refuse, not fault.
	odd, err := mem.Map(fd, mem.Region{GuestAddr: 0, Size: half, MmapOffset: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer odd.Unmap()
	oddTab, _ := mem.NewTable([]mem.Mapped{odd})
	if _, err := vring.New(oddTab, vring.Config{Size: 64, Desc: d, Avail: a, Used: u}, 0, 0); err == nil {
		t.Fatal("New accepted rings misaligned in host memory")
	}
}
