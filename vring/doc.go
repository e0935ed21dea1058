// Package vring is the device side of a split virtqueue (virtio 1.2 §2.7):
// it pops descriptor chains the guest made available, translated into host
// slices of guest RAM, and publishes used elements back.
//
// Everything in the rings is written by a hostile guest. Invariants:
//   - Every guest-owned field is read once into a local, then checked: avail.idx
//     (with acquire ordering), each head, each descriptor (16 bytes), used_event.
//   - avail.idx may run ahead of the last popped index by at most Size, and a
//     head must be < Size; otherwise the queue is broken (ErrBroken, sticky).
//   - A chain is at most MaxChain buffer descriptors, entries of its indirect
//     table included (the descriptor that points at the table is not counted,
//     so a Linux guest may fill a table of Size entries). That cap is also what ends loops: Pop never
//     walks more than MaxChain+1 descriptors, and never allocates in proportion to
//     guest input beyond MaxChain × regions segments, in slices it reuses.
//   - Indirect tables: length a non-zero multiple of 16, at most MaxChain
//     entries, no indirect descriptor inside, NEXT relative to the table, and
//     the indirect descriptor must not have NEXT.
//   - Device-readable descriptors precede device-writable ones; zero-length
//     descriptors are skipped; each buffer is translated with mem.Table and split
//     into one segment per memory region it spans.
//   - A malformed chain is consumed and reported as ErrBadChain with a valid
//     Chain.Head, so the caller completes it with 0 bytes and goes on.
//   - The device owns used.flags, used.idx and avail_event; used.idx is published
//     with one atomic store of the flags+idx word after the elements are written.
//     How 16-bit indices are loaded and stored is decided in
//     vring/internal/ring/atomic_unsafe.go.
//
// Inflight tracking (optional; vring/inflight has the region and the crash
// argument): SetInflight on a fresh start, or ResumeInflight on a queue just
// made by New after a crash, which repairs the region against used.idx,
// moves LastAvail/UsedIdx and returns the heads to resubmit (re-read them
// with Walk). With tracking, Pop flags every head it consumes (ErrBadChain
// included) after the chain is walked, and refuses (ErrBroken) a head that is
// still flagged; Publish stores last_batch_head, then used.idx, then clears
// the batch's flags, then stores used_idx.
//
// A Queue is used only by its queue's thread; Pop, Push and Publish do not
// allocate in steady state, with tracking on or off.
package vring
