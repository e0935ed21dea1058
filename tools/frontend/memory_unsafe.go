package frontend

import "unsafe"

// sliceAddr returns the virtual address of b's first byte (b non-empty): the
// userspace_addr of a memory region, as QEMU sends its own mapping's address.
func sliceAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}
