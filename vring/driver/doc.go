// Package driver is the driver side of a split virtqueue (virtio 1.2 §2.7), as
// the Linux guest's virtio_ring.c does it. It plays the guest for unit tests,
// benchmarks and the host-side vhost-user frontend in tools/.
//
// A Ring lays out the descriptor table, the avail ring and the used ring at
// the start of a []byte that stands for guest RAM at a given guest physical
// address (GPA). Add and AddIndirect place chains of {gpa, len} buffers and
// publish avail.idx with release ordering; PollUsed takes completions back;
// NeedKick and EnableInterrupts follow the notification-suppression rules
// (VIRTIO_RING_F_EVENT_IDX or the ring flags). The Raw* and Set* methods write
// arbitrary descriptors and indices for tests of a hostile guest.
//
// Arena is a small first-fit allocator of buffer space in guest RAM.
//
// Invariants:
//   - The driver's bookkeeping (free list, chain lengths) is private; it never
//     trusts anything it reads back from guest RAM: a used element naming a
//     head that is not outstanding makes the Ring fail (Err), it does not
//     corrupt the free list.
//   - Index fields are accessed as vring/internal/ring decides (atomic word
//     loads and stores, explicit fences).
//
// A Ring is not safe for concurrent use; an Arena is.
package driver
