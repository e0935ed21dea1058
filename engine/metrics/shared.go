package metrics

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Request counters that outlive the worker.
//
// The worker counts the requests it answers per ring in a small memfd it
// keeps in the supervisor's fd store under SharedName. A replacement worker
// maps the same memfd and counts on, so the totals cover every worker of
// the session; the supervisor maps it read-only (OpenShared) to answer the
// control socket's "status" without asking the worker (which may be dead
// or restarting).
//
// Layout (little-endian, SharedSize bytes):
//
//	 0  magic    [8]byte "VFSDREQ1"
//	 8  version  u32     1
//	12  rings    u32
//	64  counts   [rings]u64  requests answered on ring i (atomic adds)
const (
	SharedName    = "state.requests"
	SharedSize    = 4096
	sharedMagic   = "VFSDREQ1"
	sharedVersion = 1
	offCounts     = 64
	// MaxSharedRings is the most rings a counter memfd holds.
	MaxSharedRings = (SharedSize - offCounts) / 8
)

// ErrShared marks a counter memfd that does not have the expected layout.
var ErrShared = errors.New("metrics: request counter memfd unusable")

// Shared is a mapping of the request counter memfd.
type Shared struct {
	mem   []byte
	rings int
}

// CreateShared makes a zeroed counter memfd for rings rings (size-sealed)
// and maps it read-write. The caller owns fd.
func CreateShared(rings int) (fd int, s *Shared, err error) {
	if rings < 1 || rings > MaxSharedRings {
		return -1, nil, fmt.Errorf("metrics: %d rings, want 1..%d", rings, MaxSharedRings)
	}
	fd, err = unix.MemfdCreate("vfsd-requests", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, nil, fmt.Errorf("memfd_create: %w", err)
	}
	fail := func(what string, err error) (int, *Shared, error) {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("request counter memfd: %s: %w", what, err)
	}
	if err := unix.Ftruncate(fd, SharedSize); err != nil {
		return fail("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		return fail("seal", err)
	}
	mem, err := unix.Mmap(fd, 0, SharedSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	le := binary.LittleEndian
	copy(mem[0:8], sharedMagic)
	le.PutUint32(mem[8:], sharedVersion)
	le.PutUint32(mem[12:], uint32(rings))
	return fd, &Shared{mem: mem, rings: rings}, nil
}

// OpenShared maps a counter memfd someone else made and checks its layout;
// rings > 0 also requires that many rings. writable maps it read-write (a
// worker counting on), else read-only (the supervisor). fd stays the
// caller's; the mapping does not need it.
func OpenShared(fd, rings int, writable bool) (*Shared, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fstat: %v", ErrShared, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != SharedSize {
		return nil, fmt.Errorf("%w: mode %#o size %d, want a regular file of %d bytes", ErrShared, st.Mode, st.Size, SharedSize)
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(fd, 0, SharedSize, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: mmap: %v", ErrShared, err)
	}
	le := binary.LittleEndian
	n := int(le.Uint32(mem[12:]))
	switch {
	case string(mem[0:8]) != sharedMagic:
		err = fmt.Errorf("magic %q", mem[0:8])
	case le.Uint32(mem[8:]) != sharedVersion:
		err = fmt.Errorf("version %d", le.Uint32(mem[8:]))
	case n < 1 || n > MaxSharedRings:
		err = fmt.Errorf("%d rings", n)
	case rings > 0 && n != rings:
		err = fmt.Errorf("%d rings, want %d", n, rings)
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("%w: %v", ErrShared, err)
	}
	return &Shared{mem: mem, rings: n}, nil
}

// Rings returns the number of rings counted.
func (s *Shared) Rings() int { return s.rings }

// Counter returns ring i's counter (nil when out of range). Only a
// writable mapping may Add to it.
func (s *Shared) Counter(i int) *atomic.Uint64 {
	if s == nil || i < 0 || i >= s.rings {
		return nil
	}
	return (*atomic.Uint64)(unsafe.Pointer(&s.mem[offCounts+8*i]))
}

// Counts returns each ring's count and their sum.
func (s *Shared) Counts() (total uint64, perRing []uint64) {
	perRing = make([]uint64, s.rings)
	for i := range perRing {
		perRing[i] = s.Counter(i).Load()
		total += perRing[i]
	}
	return total, perRing
}

// Close unmaps it.
func (s *Shared) Close() {
	if s != nil && s.mem != nil {
		unix.Munmap(s.mem)
		s.mem = nil
	}
}
