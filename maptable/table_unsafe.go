package maptable

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapping is a shared read-write mmap of a whole table memfd. base is fixed
// for the mapping's life; every offset passed to the accessors below was
// checked against the validated layout by the caller (slot indices < slots,
// header offsets constant), so no accessor re-checks bounds.
type mapping struct {
	mem  []byte         // as returned by mmap, kept for munmap
	base unsafe.Pointer // &mem[0]
	hsz  uintptr        // header size
	rsz  uintptr        // record size
	vsz  int            // value size
}

func mapTable(fd int, l layout) (mapping, error) {
	mem, err := unix.Mmap(fd, 0, int(l.total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return mapping{}, err
	}
	return mapping{
		mem:  mem,
		base: unsafe.Pointer(unsafe.SliceData(mem)),
		hsz:  uintptr(l.headerSize),
		rsz:  uintptr(l.recordSize),
		vsz:  int(l.valueSize),
	}, nil
}

func (m *mapping) unmap() error {
	if m.mem == nil {
		return nil
	}
	err := unix.Munmap(m.mem)
	*m = mapping{}
	return err
}

// u32 and u64 return the header word at a constant, aligned offset.
func (m *mapping) u32(off uintptr) *uint32 { return (*uint32)(unsafe.Add(m.base, off)) }
func (m *mapping) u64(off uintptr) *uint64 { return (*uint64)(unsafe.Add(m.base, off)) }

// undo returns the intent's copy of a slot record.
func (m *mapping) undo() []byte {
	return unsafe.Slice((*byte)(unsafe.Add(m.base, offUndo)), m.rsz)
}

// slotOff is the byte offset of slot i's record. Precondition: i < slots.
func (m *mapping) slotOff(i uint32) uintptr { return m.hsz + uintptr(i)*m.rsz }

// slot returns slot i's record header. Precondition: i < slots.
func (m *mapping) slot(i uint32) *slotHdr { return (*slotHdr)(unsafe.Add(m.base, m.slotOff(i))) }

// record returns slot i's whole record. Precondition: i < slots.
func (m *mapping) record(i uint32) []byte {
	return unsafe.Slice((*byte)(unsafe.Add(m.base, m.slotOff(i))), m.rsz)
}

// value returns slot i's value bytes. Precondition: i < slots.
func (m *mapping) value(i uint32) []byte {
	return unsafe.Slice((*byte)(unsafe.Add(m.base, m.slotOff(i)+slotHdrLen)), m.vsz)
}

// slotHdrOf decodes a record copy (at least slotHdrLen bytes, 8-aligned as
// every record and the undo area are).
func slotHdrOf(rec []byte) slotHdr { return *(*slotHdr)(unsafe.Pointer(unsafe.SliceData(rec))) }

// Compile-time layout checks.
var (
	_ [slotHdrLen - unsafe.Sizeof(slotHdr{})]byte
	_ [unsafe.Sizeof(slotHdr{}) - slotHdrLen]byte
)
