//go:build amd64 || arm64 || riscv64 || loong64 || ppc64le || 386 || arm || mipsle || mips64le || wasm

package ring

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// How 16-bit ring indices cross between device and driver.
//
// Go has 32-bit atomics but no 16-bit ones. Both sides of a ring live in
// different processes (or goroutines) and share memory, so every index that
// orders other data must be accessed with an atomic, which is also what stops
// the Go compiler from caching, splitting or reordering the access.
//
//   - Loads (avail.idx, avail.flags, used_event on the device side; used.idx,
//     used.flags, avail_event on the driver side): Load16 does an atomic 32-bit
//     load of the naturally aligned word that contains the 2-aligned field and
//     picks the right half. A 2-aligned field never straddles a 4-byte boundary,
//     so that word lies in the same page as the field: it is always mapped,
//     even when it reaches 2 bytes past the ring. The other half is discarded.
//     An atomic load is an acquire: the ring entries it publishes are read after it.
//   - The "idx" publications (avail.idx by the driver, used.idx by the device):
//     each side owns its ring's whole flags+idx word, so StoreWord writes flags
//     and idx together with one atomic 32-bit store. That is a release: the ring
//     entries and used elements written before it are visible first. The word
//     must be 4-aligned (used rings are by spec; the driver lays out its avail
//     ring 16-aligned; the device never stores to avail).
//   - The fields a side owns alone but which share their 4-byte word with
//     something it does not own (avail_event ends the used ring, used_event ends
//     the avail ring; used.flags alone): Store16 is a compare-and-swap loop on
//     the containing aligned word that replaces only its own half. A CAS fails
//     if the other half changed meanwhile, so no concurrent write is lost; the
//     bytes outside the field are written back unchanged, and lie in the same
//     (mapped, writable) page. The CAS is sequentially consistent, i.e. a full
//     barrier: no separate fence is needed before re-checking the other side.
//   - Fence is a full barrier (store-load included) for the remaining places: a
//     locked read-modify-write on a stack word, like Linux's x86 smp_mb().
//     Go's atomics are sequentially consistent, so a StoreWord followed by a
//     Load16 is ordered as well.
//
// Because every index access is atomic and every ring entry, descriptor and
// used element is published by one, the protocol is also clean under the race
// detector when driver and device run in one process (tests, tools/).
//
// Virtio 1.x rings are little-endian, hence the build constraint.

// Load16 atomically loads the little-endian u16 at b[off:off+2]. The field's
// host address must be 2-aligned (checked once at set-up with Aligned); an odd
// address falls back to a plain load, which is never atomic.
func Load16(b []byte, off int) uint16 {
	f := b[off : off+2]
	p := unsafe.Pointer(unsafe.SliceData(f))
	a := uintptr(p)
	if a&1 != 0 {
		return binary.LittleEndian.Uint16(f)
	}
	w := atomic.LoadUint32((*uint32)(unsafe.Add(p, -int(a&3))))
	return uint16(w >> ((a & 2) * 8))
}

// StoreWord atomically stores lo at b[off:off+2] and hi at b[off+2:off+4]
// (flags and idx). The host address must be 4-aligned.
func StoreWord(b []byte, off int, lo, hi uint16) {
	f := b[off : off+4]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(unsafe.SliceData(f))), uint32(lo)|uint32(hi)<<16)
}

// Store16 atomically stores the little-endian u16 v at b[off:off+2] (a CAS
// on the containing aligned word); it is a full barrier. The field's host
// address must be 2-aligned; an odd address falls back to a plain store.
func Store16(b []byte, off int, v uint16) {
	f := b[off : off+2]
	p := unsafe.Pointer(unsafe.SliceData(f))
	a := uintptr(p)
	if a&1 != 0 {
		binary.LittleEndian.PutUint16(f, v)
		Fence()
		return
	}
	w := (*uint32)(unsafe.Add(p, -int(a&3)))
	shift := (a & 2) * 8
	for {
		old := atomic.LoadUint32(w)
		nw := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}

// Fence is a full memory barrier.
func Fence() {
	var x uint32
	atomic.AddUint32(&x, 1)
}

// Aligned reports whether the host address of b[0] is a multiple of align (a
// power of two). Empty slices are not aligned.
func Aligned(b []byte, align int) bool {
	if len(b) == 0 {
		return false
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))&uintptr(align-1) == 0
}
