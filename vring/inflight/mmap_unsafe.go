//go:build amd64 || arm64 || riscv64 || loong64 || ppc64le || 386 || arm || mipsle || mips64le || wasm

package inflight

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stores to the region are atomic 32- and 64-bit stores of naturally aligned
// words. Their only reader is a later process (after a crash) or this one
// during Resume, so atomicity is not what they are for: an atomic store is the
// Go way to keep the compiler from reordering, merging or eliding a store, and
// the order of the stores is the whole crash-consistency argument (doc.go).
// Every field is little-endian in the region; so is every supported host
// (build constraint), so a native store writes the wire format.
//
// The region is mapped at a page boundary plus an offset that MapAt requires
// to be 8-aligned, and per-queue strides are multiples of 64: every u32 and
// u64 field is naturally aligned in host memory.

func store32(b []byte, off int, v uint32) {
	f := b[off : off+4]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(unsafe.SliceData(f))), v)
}

func store64(b []byte, off int, v uint64) {
	f := b[off : off+8]
	atomic.StoreUint64((*uint64)(unsafe.Pointer(unsafe.SliceData(f))), v)
}

func load32(b []byte, off int) uint32 {
	f := b[off : off+4]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(unsafe.SliceData(f))))
}

func load64(b []byte, off int) uint64 {
	f := b[off : off+8]
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(unsafe.SliceData(f))))
}

// mmapShared maps length bytes of fd at offset (any value; rounded down to a
// page, the difference skipped) shared and read-write. It returns the whole
// mapping (for munmap) and the requested part.
func mmapShared(fd int, offset int64, length int) (whole, part []byte, err error) {
	page := int64(unix.Getpagesize())
	delta := offset % page
	whole, err = unix.Mmap(fd, offset-delta, length+int(delta), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return whole, whole[delta : delta+int64(length)], nil
}

// aligned8 reports whether b[0] is 8-aligned in host memory.
func aligned8(b []byte) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))&7 == 0
}
