package frontend

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"golang.org/x/sys/unix"
)

// PageSize is the allocation granule of guest RAM.
const PageSize = 4096

// MemOptions describes the guest RAM layout.
type MemOptions struct {
	// Size is the total RAM in bytes (rounded up to PageSize); default 128 MiB.
	Size uint64
	// Regions splits RAM into this many memory regions of (nearly) equal
	// size, each mmapped separately (1..MaxFDs; default 1).
	Regions int
	// Adjacent makes the regions contiguous in guest-physical address
	// space, so one buffer may straddle two regions (as a descriptor can in
	// a real guest). Otherwise regions are separated by a 1 GiB hole.
	Adjacent bool
	// Base is the guest-physical address of the first region.
	Base uint64
}

// ErrNoMem is returned by Alloc when no run of free pages is large enough.
var ErrNoMem = errors.New("frontend: guest RAM exhausted")

type region struct {
	RegionDesc
	data      []byte // the mapping; RegionDesc.UserAddr is &data[0]
	firstPage int    // index of the region's first page in the allocator
}

// MemfdName names the memfd of guest RAM; a backend's mapping of it shows in
// /proc/PID/smaps as "/memfd:vfsd-guest-ram (deleted)".
const MemfdName = "vfsd-guest-ram"

// Memory is guest RAM: one memfd, mapped shared into this process as one
// mapping per region, plus a first-fit page allocator. Safe for concurrent
// use.
type Memory struct {
	fd       int
	regions  []region
	adjacent bool

	mu    sync.Mutex
	used  []uint64 // bitmap of allocated pages; +checklocks:mu
	pages int
	hint  int // +checklocks:mu
	free  int // +checklocks:mu
}

// NewMemory creates guest RAM as described by o.
func NewMemory(o MemOptions) (*Memory, error) {
	if o.Size == 0 {
		o.Size = 128 << 20
	}
	if o.Regions == 0 {
		o.Regions = 1
	}
	if o.Regions < 0 || o.Regions > MaxFDs {
		return nil, fmt.Errorf("frontend: %d memory regions (want 1..%d)", o.Regions, MaxFDs)
	}
	pages := int((o.Size + PageSize - 1) / PageSize)
	if pages < o.Regions {
		return nil, fmt.Errorf("frontend: %d bytes of RAM for %d regions", o.Size, o.Regions)
	}
	fd, err := unix.MemfdCreate(MemfdName, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	m := &Memory{fd: fd, adjacent: o.Adjacent, pages: pages, free: pages}
	if err := unix.Ftruncate(fd, int64(pages)*PageSize); err != nil {
		m.Close()
		return nil, fmt.Errorf("ftruncate guest RAM: %w", err)
	}
	gpa, off, page := o.Base, uint64(0), 0
	for i := 0; i < o.Regions; i++ {
		n := pages / o.Regions
		if i == o.Regions-1 {
			n = pages - page
		}
		size := uint64(n) * PageSize
		data, err := unix.Mmap(fd, int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("mmap guest RAM region %d: %w", i, err)
		}
		m.regions = append(m.regions, region{
			RegionDesc: RegionDesc{GuestAddr: gpa, Size: size, UserAddr: sliceAddr(data), MmapOffset: off},
			data:       data,
			firstPage:  page,
		})
		gpa += size
		if !o.Adjacent {
			gpa += 1 << 30
		}
		off += size
		page += n
	}
	m.used = make([]uint64, (pages+63)/64)
	return m, nil
}

// FD is the memfd backing guest RAM (owned by m).
func (m *Memory) FD() int { return m.fd }

// Regions describes the regions as sent in SET_MEM_TABLE.
func (m *Memory) Regions() []RegionDesc {
	out := make([]RegionDesc, len(m.regions))
	for i, r := range m.regions {
		out[i] = r.RegionDesc
	}
	return out
}

// Close unmaps guest RAM and closes the memfd.
func (m *Memory) Close() error {
	for i := range m.regions {
		if m.regions[i].data != nil {
			unix.Munmap(m.regions[i].data)
			m.regions[i].data = nil
		}
	}
	if m.fd >= 0 {
		unix.Close(m.fd)
		m.fd = -1
	}
	return nil
}

// FreeBytes reports how much RAM is unallocated.
func (m *Memory) FreeBytes() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(m.free) * PageSize
}

func (m *Memory) pageGPA(p int) uint64 {
	for i := len(m.regions) - 1; i >= 0; i-- {
		r := &m.regions[i]
		if p >= r.firstPage {
			return r.GuestAddr + uint64(p-r.firstPage)*PageSize
		}
	}
	panic("frontend: page index below region 0")
}

func (m *Memory) gpaPage(gpa uint64) (int, bool) {
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GuestAddr && gpa-r.GuestAddr < r.Size && (gpa-r.GuestAddr)%PageSize == 0 {
			return r.firstPage + int((gpa-r.GuestAddr)/PageSize), true
		}
	}
	return 0, false
}

// regionEnd returns the first page index after the region holding page p.
func (m *Memory) regionEnd(p int) int {
	for i := range m.regions {
		r := &m.regions[i]
		if p >= r.firstPage && p < r.firstPage+int(r.Size/PageSize) {
			return r.firstPage + int(r.Size/PageSize)
		}
	}
	return m.pages
}

// Alloc reserves n bytes (rounded up to pages) of contiguous guest-physical
// RAM and returns its address. With oneRegion, or when regions are not
// adjacent, the run lies inside one region (so Bytes works on it);
// otherwise it may straddle adjacent regions.
func (m *Memory) Alloc(n uint64, oneRegion bool) (uint64, error) {
	if n == 0 {
		n = 1
	}
	want := int((n + PageSize - 1) / PageSize)
	oneRegion = oneRegion || !m.adjacent
	m.mu.Lock()
	defer m.mu.Unlock()
	if want > m.free {
		return 0, ErrNoMem
	}
	start := m.hint
	for pass := 0; pass < 2; pass++ {
		p := start
		limit := m.pages
		if pass == 1 {
			p, limit = 0, min(start+want, m.pages)
		}
		for p+want <= limit {
			p = m.nextFree(p, limit)
			if p < 0 || p+want > limit {
				break
			}
			end := p + want
			if oneRegion {
				if re := m.regionEnd(p); re < end {
					p = re
					continue
				}
			}
			if q := m.nextUsed(p, end); q >= 0 {
				p = q + 1
				continue
			}
			m.mark(p, end, true)
			m.free -= want
			m.hint = end % m.pages
			return m.pageGPA(p), nil
		}
	}
	return 0, ErrNoMem
}

// Free releases an allocation made by Alloc with the same n.
func (m *Memory) Free(gpa, n uint64) {
	if n == 0 {
		n = 1
	}
	p, ok := m.gpaPage(gpa)
	if !ok {
		panic(fmt.Sprintf("frontend: Free of bad address %#x", gpa))
	}
	want := int((n + PageSize - 1) / PageSize)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := p; i < p+want; i++ {
		if m.used[i/64]&(1<<(i%64)) == 0 {
			panic(fmt.Sprintf("frontend: double Free of page at %#x", m.pageGPA(i)))
		}
	}
	m.mark(p, p+want, false)
	m.free += want
}

// Precondition: m.mu held.
func (m *Memory) mark(from, to int, used bool) {
	for i := from; i < to; i++ {
		if used {
			m.used[i/64] |= 1 << (i % 64)
		} else {
			m.used[i/64] &^= 1 << (i % 64)
		}
	}
}

// nextFree returns the first free page in [p, limit), or -1.
// Precondition: m.mu held.
func (m *Memory) nextFree(p, limit int) int {
	for p < limit {
		w := ^m.used[p/64] >> (p % 64)
		if w != 0 {
			p += bits.TrailingZeros64(w)
			if p < limit {
				return p
			}
			return -1
		}
		p = (p/64 + 1) * 64
	}
	return -1
}

// nextUsed returns the last used page in [p, end), or -1 if all are free.
// Precondition: m.mu held.
func (m *Memory) nextUsed(p, end int) int {
	last := -1
	for i := p; i < end; {
		if i%64 == 0 && end-i >= 64 {
			if w := m.used[i/64]; w != 0 {
				last = i + 63 - bits.LeadingZeros64(w)
			}
			i += 64
			continue
		}
		if m.used[i/64]&(1<<(i%64)) != 0 {
			last = i
		}
		i++
	}
	return last
}

func (m *Memory) find(gpa uint64) *region {
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GuestAddr && gpa-r.GuestAddr < r.Size {
			return r
		}
	}
	return nil
}

// Bytes returns guest RAM [gpa, gpa+n) as a slice; the range must lie in
// one region.
func (m *Memory) Bytes(gpa, n uint64) ([]byte, error) {
	r := m.find(gpa)
	if r == nil || n > r.Size-(gpa-r.GuestAddr) {
		return nil, fmt.Errorf("frontend: guest range %#x+%d not inside one region", gpa, n)
	}
	o := gpa - r.GuestAddr
	return r.data[o : o+n : o+n], nil
}

// WriteAt copies p into guest RAM at gpa (may straddle adjacent regions).
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	for len(p) > 0 {
		r := m.find(gpa)
		if r == nil {
			return fmt.Errorf("frontend: guest address %#x outside RAM", gpa)
		}
		n := copy(r.data[gpa-r.GuestAddr:], p)
		p, gpa = p[n:], gpa+uint64(n)
	}
	return nil
}

// ReadAt copies guest RAM at gpa into p (may straddle adjacent regions).
func (m *Memory) ReadAt(p []byte, gpa uint64) error {
	for len(p) > 0 {
		r := m.find(gpa)
		if r == nil {
			return fmt.Errorf("frontend: guest address %#x outside RAM", gpa)
		}
		n := copy(p, r.data[gpa-r.GuestAddr:])
		p, gpa = p[n:], gpa+uint64(n)
	}
	return nil
}

// UserAddr translates a guest-physical address into this process's virtual
// address, as the backend sees it in SET_VRING_ADDR.
func (m *Memory) UserAddr(gpa uint64) (uint64, error) {
	r := m.find(gpa)
	if r == nil {
		return 0, fmt.Errorf("frontend: guest address %#x outside RAM", gpa)
	}
	return r.UserAddr + (gpa - r.GuestAddr), nil
}
