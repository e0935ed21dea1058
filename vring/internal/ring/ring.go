// Package ring holds what both sides of a split virtqueue share: the layout
// (virtio 1.2 §2.7), the event-index rule, and — in atomic_unsafe.go, the one
// place that decides it — how 16-bit ring indices are loaded and published
// with the right memory ordering.
package ring

// Descriptor flags (struct virtq_desc.flags).
const (
	DescFNext     = 1 // the chain continues at .next
	DescFWrite    = 2 // device-writable buffer
	DescFIndirect = 4 // the buffer is a table of descriptors
)

// Ring flags.
const (
	AvailFNoInterrupt = 1 // avail.flags: driver asks for no used-buffer notifications
	UsedFNoNotify     = 1 // used.flags: device asks for no available-buffer notifications
)

// Layout sizes and offsets, in bytes.
const (
	DescSize = 16 // struct virtq_desc: addr u64, len u32, flags u16, next u16
	ElemSize = 8  // struct virtq_used_elem: id u32, len u32
	HdrSize  = 4  // flags u16 + idx u16 at the start of avail and used

	DescAlign  = 16
	AvailAlign = 2
	UsedAlign  = 4
)

// DescBytes is the size of a descriptor table of size entries.
func DescBytes(size int) int { return DescSize * size }

// AvailBytes is the size of the avail ring; used_event is included only with
// VIRTIO_RING_F_EVENT_IDX.
func AvailBytes(size int, eventIdx bool) int {
	n := HdrSize + 2*size
	if eventIdx {
		n += 2
	}
	return n
}

// UsedBytes is the size of the used ring; avail_event is included only with
// VIRTIO_RING_F_EVENT_IDX.
func UsedBytes(size int, eventIdx bool) int {
	n := HdrSize + ElemSize*size
	if eventIdx {
		n += 2
	}
	return n
}

// UsedEventOff is the offset of used_event in the avail ring.
func UsedEventOff(size int) int { return HdrSize + 2*size }

// AvailEventOff is the offset of avail_event in the used ring.
func AvailEventOff(size int) int { return HdrSize + ElemSize*size }

// NeedEvent is vring_need_event: whether moving an index from old to new
// passed event, i.e. the other side asked to be notified at event.
func NeedEvent(event, new, old uint16) bool {
	return new-event-1 < new-old
}
