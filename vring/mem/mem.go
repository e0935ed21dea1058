package mem

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// ErrOutside reports a guest range that is not (entirely) inside guest RAM,
// overflows, or is empty.
var ErrOutside = errors.New("mem: address range outside guest memory")

// Region describes one guest memory region, as in VhostUserMemoryRegion.
type Region struct {
	GuestAddr  uint64 // guest physical address of the first byte
	Size       uint64 // length in bytes
	UserAddr   uint64 // frontend (QEMU) virtual address of the first byte
	MmapOffset uint64 // offset of the first byte in the region's fd
}

// Mapped is a Region together with its host mapping: Data is
// mmap(fd, MmapOffset, Size), shared and read-write.
type Mapped struct {
	Region
	Data []byte
}

// validate checks a region's sizes for overflow, before anything is mapped.
func (r Region) validate() error {
	if r.Size == 0 {
		return fmt.Errorf("mem: region at %#x: zero size", r.GuestAddr)
	}
	if r.Size > math.MaxInt {
		return fmt.Errorf("mem: region at %#x: size %#x too large", r.GuestAddr, r.Size)
	}
	if r.GuestAddr+r.Size-1 < r.GuestAddr {
		return fmt.Errorf("mem: region at %#x size %#x: guest range overflows", r.GuestAddr, r.Size)
	}
	if r.UserAddr+r.Size-1 < r.UserAddr {
		return fmt.Errorf("mem: region at %#x: user range %#x+%#x overflows", r.GuestAddr, r.UserAddr, r.Size)
	}
	if r.MmapOffset > math.MaxInt64 || r.MmapOffset+r.Size < r.MmapOffset || r.MmapOffset+r.Size > math.MaxInt64 {
		return fmt.Errorf("mem: region at %#x: mmap offset %#x+%#x overflows", r.GuestAddr, r.MmapOffset, r.Size)
	}
	return nil
}

// Table translates guest and frontend addresses. It is immutable: build a new
// one for every memory table change. Safe for concurrent use.
type Table struct {
	regs   []Mapped // sorted by GuestAddr, non-overlapping
	byUser []int    // indices into regs, sorted by UserAddr
}

// NewTable builds a Table from mapped regions. It rejects empty or
// inconsistent regions (len(Data) != Size), overlapping guest ranges and
// overlapping frontend ranges. The regions are copied; their Data is not.
func NewTable(regs []Mapped) (*Table, error) {
	t := &Table{regs: append([]Mapped(nil), regs...)}
	for _, r := range t.regs {
		if err := r.Region.validate(); err != nil {
			return nil, err
		}
		if uint64(len(r.Data)) != r.Size {
			return nil, fmt.Errorf("mem: region at %#x: %d bytes mapped, size %#x", r.GuestAddr, len(r.Data), r.Size)
		}
	}
	sort.Slice(t.regs, func(i, j int) bool { return t.regs[i].GuestAddr < t.regs[j].GuestAddr })
	for i := 1; i < len(t.regs); i++ {
		p, r := t.regs[i-1], t.regs[i]
		if r.GuestAddr <= p.GuestAddr+(p.Size-1) {
			return nil, fmt.Errorf("mem: regions at %#x and %#x overlap", p.GuestAddr, r.GuestAddr)
		}
	}
	t.byUser = make([]int, len(t.regs))
	for i := range t.byUser {
		t.byUser[i] = i
	}
	sort.Slice(t.byUser, func(i, j int) bool { return t.regs[t.byUser[i]].UserAddr < t.regs[t.byUser[j]].UserAddr })
	for i := 1; i < len(t.byUser); i++ {
		p, r := t.regs[t.byUser[i-1]], t.regs[t.byUser[i]]
		if r.UserAddr <= p.UserAddr+(p.Size-1) {
			return nil, fmt.Errorf("mem: user ranges at %#x and %#x overlap", p.UserAddr, r.UserAddr)
		}
	}
	return t, nil
}

// Regions returns the regions sorted by guest address. The caller must not
// modify the returned slice.
func (t *Table) Regions() []Mapped { return t.regs }

// find returns the index of the region containing gpa, or -1.
func (t *Table) find(gpa uint64) int {
	lo, hi := 0, len(t.regs)
	for lo < hi { // first region with GuestAddr > gpa
		m := int(uint(lo+hi) >> 1)
		if t.regs[m].GuestAddr <= gpa {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return -1
	}
	r := &t.regs[lo-1]
	if gpa-r.GuestAddr >= r.Size {
		return -1
	}
	return lo - 1
}

// Segment returns the longest prefix of [gpa, gpa+n) that lies inside one
// region: 0 < len <= n. The range must not overflow and n must be > 0;
// otherwise, or when gpa is outside guest RAM, it returns ErrOutside.
func (t *Table) Segment(gpa, n uint64) ([]byte, error) {
	if n == 0 || gpa+(n-1) < gpa {
		return nil, ErrOutside
	}
	i := t.find(gpa)
	if i < 0 {
		return nil, ErrOutside
	}
	r := &t.regs[i]
	off := gpa - r.GuestAddr
	if avail := r.Size - off; n > avail {
		n = avail
	}
	return r.Data[off : off+n : off+n], nil
}

// Slice returns the host bytes of [gpa, gpa+n), which must be non-empty and lie
// entirely inside one region; otherwise it returns ErrOutside.
func (t *Table) Slice(gpa, n uint64) ([]byte, error) {
	b, err := t.Segment(gpa, n)
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != n {
		return nil, ErrOutside
	}
	return b, nil
}

// UserToGuest translates a frontend virtual address (as in SET_VRING_ADDR) into
// a guest physical address.
func (t *Table) UserToGuest(uva uint64) (uint64, error) {
	lo, hi := 0, len(t.byUser)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t.regs[t.byUser[m]].UserAddr <= uva {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return 0, ErrOutside
	}
	r := &t.regs[t.byUser[lo-1]]
	if uva-r.UserAddr >= r.Size {
		return 0, ErrOutside
	}
	return r.GuestAddr + (uva - r.UserAddr), nil
}
