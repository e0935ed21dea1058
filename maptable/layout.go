package maptable

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// On-memfd layout. All integers are in host byte order: the memfd never
// leaves the host, it only passes between processes on it.
//
//	offset  size  field
//	header page(s), headerSize bytes (a multiple of pageSize):
//	   0     8    magic        "VFSDMAPT"
//	   8     4    version      layoutVersion
//	  12     4    headerSize   bytes before slot 0 (multiple of pageSize)
//	  16     4    slots        slot count N, 2..MaxSlots
//	  20     4    valueSize    caller's value bytes per slot, 0..MaxValueSize
//	  24     4    recordSize   bytes per slot record: roundup8(slotHdrLen+valueSize)
//	  28     4    flags        flagBlocked (new tables); 0 in tables of older builds
//	  32     8    seed         hash seed, random at Create
//	  40     8    check        mix checksum of bytes [0,40)
//	  64     8    count        used slots (Len); exact, repaired by Open
//	  72     8    tombs        tombstone count; a hint only (purge trigger)
//	 128    32    intent       the single writer's intent record:
//	 128     4      op         0 none, opInsert, opUpdate, opDelete (stored last)
//	 132     4      slot       slot index the writer is changing
//	 136     8      oldCount   count before the operation
//	 144     8      check      mix checksum of op, slot, oldCount, undo
//	 160  recordSize undo      copy of the slot record before the operation
//	slot records, N × recordSize bytes from headerSize:
//	   0     4    seq          sequence counter, odd while the slot is written
//	   4     4    gen          allocation generation, bumped by Insert, never 0 once used
//	   8     4    state        stateFree, stateUsed, stateTomb
//	  12     4    reserved
//	  16    24    key          Key
//	  40  valueSize value
const (
	layoutMagic   = 0x5450414d44534656 // "VFSDMAPT" read as a little-endian uint64
	layoutVersion = 1
	pageSize      = 4096

	offMagic      = 0
	offVersion    = 8
	offHeaderSize = 12
	offSlots      = 16
	offValueSize  = 20
	offRecordSize = 24
	offFlags      = 28
	offSeed       = 32
	offCheck      = 40
	hdrCheckedLen = 40 // bytes covered by the header checksum
	offCount      = 64
	offTombs      = 72

	offIntent         = 128
	offIntentOp       = offIntent + 0
	offIntentSlot     = offIntent + 4
	offIntentOldCount = offIntent + 8
	offIntentCheck    = offIntent + 16
	offUndo           = offIntent + 32

	slotHdrLen = 40 // seq, gen, state, reserved, key

	// MaxSlots is the largest slot count Create accepts (slot indices must fit
	// the low 32 bits of an ID, and the mapping must stay reasonable).
	MaxSlots = 1 << 30
	// MaxValueSize is the largest value size Create accepts.
	MaxValueSize = 1 << 16
	// maxTotal caps the memfd size (it is sparse, but must be mappable).
	maxTotal = 1 << 42
)

// Header flags.
//
// flagBlocked: a key's home slot is chosen per block of 64 consecutive
// Key[1] values (inode numbers, for the inode map): the block's base is
// hashed (seed, Key[0], Key[1]>>6, Key[2]) and the key sits at base +
// Key[1]%64. Inodes created together have consecutive numbers, so their
// records share pages: a directory walk that meets new inodes touches one
// fresh page per ~20 records instead of one per record (the table is a
// sparse memfd, every first touch a page fault), and probes stay in cache.
// Blocks are still placed at random, and 64 keys per block bound the
// clusters they form. Tables of older builds (flags 0) keep one hash per
// key; a build that predates the flag refuses a table that has it.
const (
	flagBlocked = 1
	knownFlags  = flagBlocked

	blockShift = 6
	blockMask  = 1<<blockShift - 1
)

// Slot states.
const (
	stateFree = 0
	stateUsed = 1
	stateTomb = 2
)

// Intent operations.
const (
	opNone   = 0
	opInsert = 1
	opUpdate = 2
	opDelete = 3
)

// slotHdr mirrors the first slotHdrLen bytes of a slot record.
type slotHdr struct {
	Seq   uint32
	Gen   uint32
	State uint32
	_     uint32
	Key   Key
}

// layout is the validated geometry of a table.
type layout struct {
	flags      uint32 // header flags (flagBlocked)
	slots      uint32
	valueSize  uint32
	recordSize uint32
	headerSize uint32
	total      uint64 // memfd size in bytes
}

// computeLayout returns the geometry for slots × valueSize, or an error if
// either is out of range.
func computeLayout(slots, valueSize uint64) (layout, error) {
	if slots < 2 || slots > MaxSlots {
		return layout{}, fmt.Errorf("slot count %d out of range [2, %d]", slots, MaxSlots)
	}
	if valueSize > MaxValueSize {
		return layout{}, fmt.Errorf("value size %d out of range [0, %d]", valueSize, MaxValueSize)
	}
	rec := (slotHdrLen + valueSize + 7) &^ 7
	hdr := (offUndo + rec + pageSize - 1) &^ (pageSize - 1)
	total := hdr + slots*rec // no overflow: 2^30 * ~2^16 + small
	if total > maxTotal || total > math.MaxInt {
		return layout{}, fmt.Errorf("table size %d bytes too large", total)
	}
	return layout{
		slots:      uint32(slots),
		valueSize:  uint32(valueSize),
		recordSize: uint32(rec),
		headerSize: uint32(hdr),
		total:      total,
	}, nil
}

// maxUsed is the most used slots a table of n slots may hold: 90% rounded
// down, and always at least one slot short of n.
func maxUsed(n uint32) uint32 {
	return n - (n+9)/10
}

// mix64 is a 64-bit finalizer (murmur3 fmix64).
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// hashKey hashes k with the table's seed. It must never change for a given
// layoutVersion: slot positions of keyed entries depend on it.
func hashKey(seed uint64, k Key) uint64 {
	h := mix64(seed ^ k[0])
	h = mix64(h ^ k[1] ^ 0x9e3779b97f4a7c15)
	return mix64(h ^ k[2] ^ 0x6a09e667f3bcc909)
}

// checkWords folds word w into checksum state h (finish with mix64). Each
// step is a bijection of h for a fixed w, so changing any one word always
// changes the result; one multiply per word keeps the writer's cost low.
func checkWords(h uint64, w uint64) uint64 {
	return bits.RotateLeft64(h^w, 31) * 0x9e3779b97f4a7c15
}

// headerCheck computes the checksum of the immutable header fields in b
// (at least hdrCheckedLen bytes, host byte order).
func headerCheck(b []byte) uint64 {
	h := uint64(0x7666736468647200)
	for off := 0; off < hdrCheckedLen; off += 8 {
		h = checkWords(h, binary.NativeEndian.Uint64(b[off:]))
	}
	return mix64(h)
}

// intentCheck computes the checksum of an intent record; undo's length is a
// multiple of 8.
func intentCheck(op, slot uint32, oldCount uint64, undo []byte) uint64 {
	h := uint64(0x696e74656e740000)
	h = checkWords(h, uint64(op)<<32|uint64(slot))
	h = checkWords(h, oldCount)
	for off := 0; off+8 <= len(undo); off += 8 {
		h = checkWords(h, binary.NativeEndian.Uint64(undo[off:]))
	}
	return mix64(h)
}

// parseHeader validates the immutable header fields in b (a copy of the first
// bytes of the memfd, at least offCount long) against the memfd size.
func parseHeader(b []byte, size int64) (layout, uint64, error) {
	ne := binary.NativeEndian
	if len(b) < offCount {
		return layout{}, 0, fmt.Errorf("%w: header truncated (%d bytes)", ErrCorrupt, len(b))
	}
	if m := ne.Uint64(b[offMagic:]); m != layoutMagic {
		return layout{}, 0, fmt.Errorf("%w: bad magic %#x", ErrCorrupt, m)
	}
	if v := ne.Uint32(b[offVersion:]); v != layoutVersion {
		return layout{}, 0, fmt.Errorf("%w: layout version %d, this build reads %d", ErrVersion, v, layoutVersion)
	}
	if c, want := ne.Uint64(b[offCheck:]), headerCheck(b); c != want {
		return layout{}, 0, fmt.Errorf("%w: header checksum %#x, computed %#x", ErrCorrupt, c, want)
	}
	l, err := computeLayout(uint64(ne.Uint32(b[offSlots:])), uint64(ne.Uint32(b[offValueSize:])))
	if err != nil {
		return layout{}, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if r := ne.Uint32(b[offRecordSize:]); r != l.recordSize {
		return layout{}, 0, fmt.Errorf("%w: record size %d, layout needs %d", ErrCorrupt, r, l.recordSize)
	}
	if h := ne.Uint32(b[offHeaderSize:]); h != l.headerSize {
		return layout{}, 0, fmt.Errorf("%w: header size %d, layout needs %d", ErrCorrupt, h, l.headerSize)
	}
	l.flags = ne.Uint32(b[offFlags:])
	if l.flags&^knownFlags != 0 {
		return layout{}, 0, fmt.Errorf("%w: unknown header flags %#x", ErrCorrupt, l.flags)
	}
	for off := offCheck + 8; off < offCount; off += 8 {
		if r := ne.Uint64(b[off:]); r != 0 {
			return layout{}, 0, fmt.Errorf("%w: reserved header bytes at %d: %#x", ErrCorrupt, off, r)
		}
	}
	if size < 0 || uint64(size) != l.total {
		return layout{}, 0, fmt.Errorf("%w: memfd is %d bytes, layout (%d slots × %d + %d) needs %d",
			ErrCorrupt, size, l.slots, l.recordSize, l.headerSize, l.total)
	}
	return l, ne.Uint64(b[offSeed:]), nil
}

// putHeader writes the immutable header fields and their checksum into b.
func putHeader(b []byte, l layout, seed uint64) {
	ne := binary.NativeEndian
	ne.PutUint64(b[offMagic:], layoutMagic)
	ne.PutUint32(b[offVersion:], layoutVersion)
	ne.PutUint32(b[offHeaderSize:], l.headerSize)
	ne.PutUint32(b[offSlots:], l.slots)
	ne.PutUint32(b[offValueSize:], l.valueSize)
	ne.PutUint32(b[offRecordSize:], l.recordSize)
	ne.PutUint32(b[offFlags:], l.flags)
	ne.PutUint64(b[offSeed:], seed)
	ne.PutUint64(b[offCheck:], headerCheck(b))
}
