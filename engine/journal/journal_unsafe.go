package journal

import (
	"sync/atomic"
	"unsafe"
)

// Sequence words and the progress word are accessed atomically: a store
// that makes a record's sequence even publishes the record's fields (the
// stores before it), and is the point after which a crash leaves the record
// whole. Offsets are multiples of 4 (8 for the progress word) from a page
// aligned mapping. Callers pass slices of at least 4 (8) bytes.

func loadU32(b []byte) uint32 {
	_ = b[3]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(unsafe.SliceData(b))))
}

func storeU32(b []byte, v uint32) {
	_ = b[3]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), v)
}

func loadU64(b []byte) uint64 {
	_ = b[7]
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(unsafe.SliceData(b))))
}

func storeU64(b []byte, v uint64) {
	_ = b[7]
	atomic.StoreUint64((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), v)
}
