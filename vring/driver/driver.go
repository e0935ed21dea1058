package driver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"vfsd/vring/internal/ring"
)

// Descriptor and ring flags, re-exported for callers that write raw rings.
const (
	DescFNext         = ring.DescFNext
	DescFWrite        = ring.DescFWrite
	DescFIndirect     = ring.DescFIndirect
	AvailFNoInterrupt = ring.AvailFNoInterrupt
	UsedFNoNotify     = ring.UsedFNoNotify
	MaxSize           = 32768
)

var (
	// ErrFull means there are not enough free descriptors for the chain.
	ErrFull = errors.New("driver: not enough free descriptors")
	// ErrBadBuffer means a buffer list is empty, a length does not fit a
	// descriptor, or an address lies outside the Ring's memory.
	ErrBadBuffer = errors.New("driver: bad buffer")
)

// Layout returns the number of bytes the rings of a queue of size entries take
// at the start of a Ring's memory (a multiple of 16).
func Layout(size int) int {
	used := align(ring.DescBytes(size)+ring.AvailBytes(size, true), ring.UsedAlign)
	return align(used+ring.UsedBytes(size, true), 16)
}

func align(n, a int) int { return (n + a - 1) &^ (a - 1) }

// Ring is the driver side of a split virtqueue.
type Ring struct {
	mem      []byte
	base     uint64
	size     int
	eventIdx bool

	desc, avail, used []byte // views into mem
	availOff, usedOff int

	// Private bookkeeping: a free list of descriptors linked through next, as
	// Linux links it through desc.next, and the length of each outstanding chain.
	next     []uint16
	chainLen []uint16 // 0: head not outstanding
	freeHead uint16
	numFree  int
	inflight int // outstanding chains

	availIdx   uint16 // published avail.idx
	availFlags uint16
	numAdded   uint16 // chains added since the last NeedKick
	lastUsed   uint16
	err        error
}

// New lays out a queue of size entries (a power of two, 1..32768) at the start
// of mem, which is guest RAM at GPA base. base must be 16-aligned, mem must be
// at least Layout(size) bytes and 4-aligned in host memory. The rings are
// zeroed.
func New(mem []byte, base uint64, size int, eventIdx bool) (*Ring, error) {
	if size < 1 || size > MaxSize || size&(size-1) != 0 {
		return nil, fmt.Errorf("driver: queue size %d not a power of two in 1..%d", size, MaxSize)
	}
	if base%16 != 0 {
		return nil, fmt.Errorf("driver: base %#x not 16-aligned", base)
	}
	n := Layout(size)
	if len(mem) < n || !ring.Aligned(mem, 4) {
		return nil, fmt.Errorf("driver: memory of %d bytes too small (need %d) or misaligned", len(mem), n)
	}
	if base+uint64(len(mem))-1 < base {
		return nil, fmt.Errorf("driver: memory at %#x+%#x overflows", base, len(mem))
	}
	clear(mem[:n])
	r := &Ring{mem: mem, base: base, size: size, eventIdx: eventIdx}
	r.availOff = ring.DescBytes(size)
	r.usedOff = align(r.availOff+ring.AvailBytes(size, true), ring.UsedAlign)
	r.desc = mem[:r.availOff]
	r.avail = mem[r.availOff : r.availOff+ring.AvailBytes(size, true)]
	// The used view includes the padding after avail_event, so that the
	// word load of avail_event stays inside it.
	r.used = mem[r.usedOff:n]
	r.next = make([]uint16, size)
	r.chainLen = make([]uint16, size)
	for i := range r.next {
		r.next[i] = uint16(i + 1)
	}
	r.numFree = size
	return r, nil
}

// Addrs returns the GPAs of the descriptor table, the avail ring and the used
// ring, for SET_VRING_ADDR (after translation to frontend addresses) or vring.New.
func (r *Ring) Addrs() (desc, avail, used uint64) {
	return r.base, r.base + uint64(r.availOff), r.base + uint64(r.usedOff)
}

// End returns the GPA of the first byte after the rings (16-aligned): buffer
// space may start there.
func (r *Ring) End() uint64 { return r.base + uint64(Layout(r.size)) }

// Size returns the number of entries.
func (r *Ring) Size() int { return r.size }

// NumFree returns the number of free descriptors.
func (r *Ring) NumFree() int { return r.numFree }

// Err returns the device misbehaviour that stopped PollUsed, if any.
func (r *Ring) Err() error { return r.err }

// Bytes returns the n bytes of the Ring's memory at GPA gpa.
func (r *Ring) Bytes(gpa, n uint64) ([]byte, error) {
	if gpa < r.base || n > uint64(len(r.mem)) || gpa-r.base > uint64(len(r.mem))-n {
		return nil, fmt.Errorf("%w: %#x+%#x outside ring memory", ErrBadBuffer, gpa, n)
	}
	off := gpa - r.base
	return r.mem[off : off+n : off+n], nil
}

// StartAt sets all ring indices (avail.idx, used.idx, the driver's last seen
// used index) to idx, as if idx chains had been processed before; for
// wraparound tests and for starting a device with vring.New(…, idx, idx). It
// fails while chains are outstanding.
func (r *Ring) StartAt(idx uint16) error {
	if r.inflight != 0 {
		return errors.New("driver: StartAt with chains outstanding")
	}
	r.availIdx, r.lastUsed, r.numAdded = idx, idx, 0
	ring.StoreWord(r.avail, 0, r.availFlags, idx)
	ring.StoreWord(r.used, 0, 0, idx)
	if r.eventIdx {
		ring.Store16(r.avail, ring.UsedEventOff(r.size), idx)
		ring.Store16(r.used, ring.AvailEventOff(r.size), idx)
	}
	ring.Fence()
	return nil
}

// Add places a chain of device-readable then device-writable buffers, each
// {gpa, len}, in the descriptor table and publishes its head in the avail
// ring. Addresses are not checked (a test may pass hostile ones); lengths
// must fit 32 bits.
func (r *Ring) Add(readable, writable [][2]uint64) (uint16, error) {
	n := len(readable) + len(writable)
	if n == 0 {
		return 0, fmt.Errorf("%w: empty chain", ErrBadBuffer)
	}
	if err := checkLens(readable, writable); err != nil {
		return 0, err
	}
	if n > r.numFree {
		return 0, ErrFull
	}
	head := r.freeHead
	i := head
	for k := 0; k < n; k++ {
		b, flags := r.buf(readable, writable, k)
		nxt := r.next[i]
		if k < n-1 {
			flags |= ring.DescFNext
		} else {
			nxt = 0
		}
		putDesc(r.desc[int(i)*ring.DescSize:], b[0], uint32(b[1]), flags, nxt)
		if k < n-1 {
			i = r.next[i]
		}
	}
	r.freeHead = r.next[i]
	r.numFree -= n
	r.chainLen[head] = uint16(n)
	r.inflight++
	r.publish(head)
	return head, nil
}

// AddIndirect is Add through an indirect descriptor table written at GPA
// table, which must have room for 16 bytes per buffer inside the Ring's
// memory (e.g. from an Arena). The chain takes one ring descriptor; the table
// may be reused once PollUsed returned its head.
func (r *Ring) AddIndirect(table uint64, readable, writable [][2]uint64) (uint16, error) {
	n := len(readable) + len(writable)
	if n == 0 {
		return 0, fmt.Errorf("%w: empty chain", ErrBadBuffer)
	}
	if err := checkLens(readable, writable); err != nil {
		return 0, err
	}
	tbl, err := r.Bytes(table, uint64(n)*ring.DescSize)
	if err != nil {
		return 0, err
	}
	if r.numFree < 1 {
		return 0, ErrFull
	}
	for k := 0; k < n; k++ {
		b, flags := r.buf(readable, writable, k)
		nxt := uint16(0)
		if k < n-1 {
			flags |= ring.DescFNext
			nxt = uint16(k + 1)
		}
		putDesc(tbl[k*ring.DescSize:], b[0], uint32(b[1]), flags, nxt)
	}
	head := r.freeHead
	putDesc(r.desc[int(head)*ring.DescSize:], table, uint32(len(tbl)), ring.DescFIndirect, 0)
	r.freeHead = r.next[head]
	r.numFree--
	r.chainLen[head] = 1
	r.inflight++
	r.publish(head)
	return head, nil
}

func checkLens(readable, writable [][2]uint64) error {
	if len(readable)+len(writable) > math.MaxUint16 {
		return fmt.Errorf("%w: chain too long", ErrBadBuffer)
	}
	for _, l := range [2][][2]uint64{readable, writable} {
		for _, b := range l {
			if b[1] > math.MaxUint32 {
				return fmt.Errorf("%w: length %#x does not fit a descriptor", ErrBadBuffer, b[1])
			}
		}
	}
	return nil
}

func (r *Ring) buf(readable, writable [][2]uint64, k int) ([2]uint64, uint16) {
	if k < len(readable) {
		return readable[k], 0
	}
	return writable[k-len(readable)], ring.DescFWrite
}

func putDesc(d []byte, addr uint64, n uint32, flags, next uint16) {
	_ = d[15]
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// publish writes head into the next avail slot, then release-stores avail.idx.
func (r *Ring) publish(head uint16) {
	slot := int(r.availIdx) & (r.size - 1)
	binary.LittleEndian.PutUint16(r.avail[ring.HdrSize+2*slot:], head)
	r.availIdx++
	r.numAdded++
	ring.StoreWord(r.avail, 0, r.availFlags, r.availIdx)
}

// NeedKick reports whether the device must be notified of the chains added
// since the last call (virtqueue_kick_prepare): with EVENT_IDX whether avail.idx
// passed avail_event, else whether used.flags lacks NO_NOTIFY.
func (r *Ring) NeedKick() bool {
	ring.Fence()
	old, cur := r.availIdx-r.numAdded, r.availIdx
	r.numAdded = 0
	if r.eventIdx {
		return ring.NeedEvent(ring.Load16(r.used, ring.AvailEventOff(r.size)), cur, old)
	}
	return ring.Load16(r.used, 0)&ring.UsedFNoNotify == 0
}

// Inflight is the number of chains added and not yet taken by PollUsed.
func (r *Ring) Inflight() int { return r.inflight }

// HasUsed reports whether a used element is waiting for PollUsed.
func (r *Ring) HasUsed() bool { return ring.Load16(r.used, 2) != r.lastUsed }

// PollUsed takes the next used element, if any, and frees its descriptors. It
// returns ok == false when none is pending or when the device misbehaved (see
// Err).
func (r *Ring) PollUsed() (head uint16, written uint32, ok bool) {
	if r.err != nil {
		return 0, 0, false
	}
	idx := ring.Load16(r.used, 2)
	if idx == r.lastUsed {
		return 0, 0, false
	}
	if pending := idx - r.lastUsed; int(pending) > r.inflight {
		r.err = fmt.Errorf("driver: used.idx %d moved %d past %d, only %d outstanding", idx, pending, r.lastUsed, r.inflight)
		return 0, 0, false
	}
	e := r.used[ring.HdrSize+ring.ElemSize*(int(r.lastUsed)&(r.size-1)):]
	id, written := binary.LittleEndian.Uint32(e[0:]), binary.LittleEndian.Uint32(e[4:])
	if id >= uint32(r.size) || r.chainLen[id] == 0 {
		r.err = fmt.Errorf("driver: used element %d names head %d, which is not outstanding", r.lastUsed, id)
		return 0, 0, false
	}
	head = uint16(id)
	last := head
	for k := 1; k < int(r.chainLen[head]); k++ {
		last = r.next[last]
	}
	r.next[last] = r.freeHead
	r.freeHead = head
	r.numFree += int(r.chainLen[head])
	r.chainLen[head] = 0
	r.inflight--
	r.lastUsed++
	if r.eventIdx && r.availFlags&ring.AvailFNoInterrupt == 0 {
		ring.Store16(r.avail, ring.UsedEventOff(r.size), r.lastUsed) // a full barrier
	}
	return head, written, true
}

// DisableInterrupts asks the device not to notify used buffers (best effort,
// as in Linux: with EVENT_IDX, used_event is simply no longer advanced).
func (r *Ring) DisableInterrupts() {
	r.availFlags |= ring.AvailFNoInterrupt
	if !r.eventIdx {
		ring.StoreWord(r.avail, 0, r.availFlags, r.availIdx)
	}
}

// EnableInterrupts asks for used-buffer notifications again and reports
// whether used elements are already pending (poll them before waiting).
func (r *Ring) EnableInterrupts() bool {
	r.availFlags &^= ring.AvailFNoInterrupt
	if r.eventIdx {
		ring.Store16(r.avail, ring.UsedEventOff(r.size), r.lastUsed)
	} else {
		ring.StoreWord(r.avail, 0, r.availFlags, r.availIdx)
	}
	ring.Fence()
	return ring.Load16(r.used, 2) != r.lastUsed
}

// Raw access, for tests that play a hostile guest. None of these touch the
// driver's bookkeeping.

// RawDesc returns the 16 bytes of descriptor i (nil if out of range).
func (r *Ring) RawDesc(i int) []byte {
	if i < 0 || i >= r.size {
		return nil
	}
	return r.desc[i*ring.DescSize : (i+1)*ring.DescSize : (i+1)*ring.DescSize]
}

// SetDesc writes descriptor i (ignored if out of range).
func (r *Ring) SetDesc(i int, addr uint64, n uint32, flags, next uint16) {
	if d := r.RawDesc(i); d != nil {
		putDesc(d, addr, n, flags, next)
	}
}

// PutDesc writes a descriptor into an arbitrary 16-byte slice, e.g. an
// indirect table built by hand.
func PutDesc(d []byte, addr uint64, n uint32, flags, next uint16) {
	if len(d) >= ring.DescSize {
		putDesc(d, addr, n, flags, next)
	}
}

// PublishRaw writes heads into the avail ring and publishes them, without
// checking them or recording them as outstanding.
func (r *Ring) PublishRaw(heads ...uint16) {
	for _, h := range heads {
		slot := int(r.availIdx) & (r.size - 1)
		binary.LittleEndian.PutUint16(r.avail[ring.HdrSize+2*slot:], h)
		r.availIdx++
		r.numAdded++
	}
	ring.StoreWord(r.avail, 0, r.availFlags, r.availIdx)
}

// SetAvailIdx publishes an arbitrary avail.idx.
func (r *Ring) SetAvailIdx(idx uint16) {
	r.availIdx = idx
	ring.StoreWord(r.avail, 0, r.availFlags, idx)
}

// SetAvailFlags publishes arbitrary avail.flags.
func (r *Ring) SetAvailFlags(f uint16) {
	r.availFlags = f
	ring.StoreWord(r.avail, 0, f, r.availIdx)
}

// SetUsedEvent writes used_event.
func (r *Ring) SetUsedEvent(v uint16) {
	ring.Store16(r.avail, ring.UsedEventOff(r.size), v)
}

// AvailIdx returns the published avail.idx.
func (r *Ring) AvailIdx() uint16 { return r.availIdx }

// UsedIdx loads used.idx from the ring.
func (r *Ring) UsedIdx() uint16 { return ring.Load16(r.used, 2) }

// UsedFlags loads used.flags from the ring.
func (r *Ring) UsedFlags() uint16 { return ring.Load16(r.used, 0) }

// AvailEvent loads avail_event from the used ring.
func (r *Ring) AvailEvent() uint16 { return ring.Load16(r.used, ring.AvailEventOff(r.size)) }
