package mem

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pageSize is the host page size; mmap offsets are aligned down to it.
var pageSize = uint64(unix.Getpagesize())

// Map maps [r.MmapOffset, r.MmapOffset+r.Size) of fd shared and read-write.
// An offset that is not page aligned is handled by mapping from the page
// boundary below it. It validates sizes and overflow first, refuses a region
// that runs past the end of a regular file (memfd), and does not close fd.
func Map(fd int, r Region) (Mapped, error) {
	if err := r.validate(); err != nil {
		return Mapped{}, err
	}
	// Touching a page past the end of the file would be SIGBUS, not an error.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Mapped{}, fmt.Errorf("mem: region at %#x: fstat: %w", r.GuestAddr, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < r.MmapOffset+r.Size {
		return Mapped{}, fmt.Errorf("mem: region at %#x: fd has %d bytes, region needs %d", r.GuestAddr, st.Size, r.MmapOffset+r.Size)
	}
	delta := r.MmapOffset % pageSize
	length := r.Size + delta // cannot overflow: validate bounds both below MaxInt64
	p, err := unix.MmapPtr(fd, int64(r.MmapOffset-delta), nil, uintptr(length),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return Mapped{}, fmt.Errorf("mem: mmap region at %#x (%#x bytes): %w", r.GuestAddr, r.Size, err)
	}
	data := unsafe.Slice((*byte)(unsafe.Add(p, delta)), int(r.Size))
	return Mapped{Region: r, Data: data}, nil
}

// Unmap unmaps a region mapped by Map. The Data of m (and any slice of it)
// must not be used afterwards.
func (m Mapped) Unmap() error {
	if len(m.Data) == 0 {
		return nil
	}
	delta := m.MmapOffset % pageSize
	base := unsafe.Add(unsafe.Pointer(unsafe.SliceData(m.Data)), -int(delta))
	if err := unix.MunmapPtr(base, uintptr(uint64(len(m.Data))+delta)); err != nil {
		return fmt.Errorf("mem: munmap region at %#x: %w", m.GuestAddr, err)
	}
	return nil
}
