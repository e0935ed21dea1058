package worker

import (
	"sync/atomic"
	"unsafe"
)

// load32 and store32 access an aligned u32 of a shared mapping atomically
// (off must be a multiple of 4; the mapping is page-aligned).
func load32(b []byte, off int) uint32 {
	_ = b[off+3]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off])))
}

func store32(b []byte, off int, v uint32) {
	_ = b[off+3]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off])), v)
}
