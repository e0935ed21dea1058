// Package inflight keeps the vhost-user inflight region of split virtqueues
// (vhost-user.rst, "Inflight I/O tracking"): per queue, which descriptor heads
// were taken from the avail ring and not yet returned in the used ring, with
// counters that give the order they were taken in. The region lives in a
// memfd, so it outlives the worker process: the worker keeps the fd in the
// supervisor's fd store, or the frontend keeps it (GET_INFLIGHT_FD /
// SET_INFLIGHT_FD). After a crash, Resume repairs it against the used ring in
// guest RAM and says which chains to process again and where to go on.
//
// # What it owns
//
// The region layout (inflight.go), mapping it (Create, Map, MapAt), and the
// stores of one queue's bookkeeping. vring.Queue makes the calls in the right
// places (SetInflight, ResumeInflight); it owns the used ring in guest RAM.
//
// # The invariant
//
// Let P be the chains taken from the avail ring, U the used elements visible
// to the driver (used.idx in guest RAM) and F the heads flagged in flight. At
// every store boundary:
//
//	P = U ∪ F, U ∩ F = ∅        (after Resume's repair of the one open batch)
//
// so |P| = used.idx + |F|: the next avail entry never taken is
// used.idx + |F|, and F is exactly what was taken and never answered.
//
// # Store order, what a crash at each point leaves, and the repair
//
// Pop (vring.Queue.Pop → Get), after the head is read and checked:
//
//	G1  desc[head].counter = ++counter
//	G2  desc[head].inflight = 1
//
// Crash before G2: head is in neither U nor F; the in-memory last_avail_idx
// died with the process, and lastAvail = used.idx + |F| points at the avail
// entry again, so the chain is popped anew. A stray counter on an unflagged
// desc is ignored. Crash after G2: head is in F and is resubmitted. Malformed
// chains (ErrBadChain) are flagged too: they were consumed, and the caller
// pushes them with 0 bytes; a resubmitted one fails Walk the same way and is
// pushed then.
//
// Push writes used elements in guest RAM; the driver does not look at them
// until used.idx moves, so a crash there changes nothing (heads stay in F).
//
// Publish of a batch of used elements u..v-1 (vring.Queue.Publish):
//
//	B1  last_batch_head = head of used.ring[u]        (PrePut)
//	B2  used.idx = v (guest RAM, release store)
//	B3  desc[h].inflight = 0 for each head h of u..v-1 (Complete)
//	B4  used_idx = v                                  (PostPut)
//
// Crash before B2: nothing visible; region used_idx = u = used.idx, so Resume
// finds no open batch and the batch's heads are still in F: resubmitted.
// Crash after B2, before B4: the heads are in U and some (or all) are still
// flagged; used_idx = u ≠ used.idx = v. Resume walks used.ring[u..v-1] — the
// batch itself, which the device wrote and the driver only reads — checks
// that it starts at last_batch_head, clears the flags and stores used_idx = v,
// in the B3, B4 order, so a crash inside Resume is repaired the same way on
// the next try. Clearing is idempotent, so heads B3 already cleared do no
// harm. After B4 the batch is closed. libvhost-user tracks one head per batch
// through last_batch_head; vfsd relies on the used ring for the whole batch
// and keeps last_batch_head as a check that the walk starts where the batch
// did.
//
// Init (fresh start) stores version 0 first and version 1 last: a crash in
// between leaves "not started" (ErrNotStarted), never a half-cleared region.
//
// Every store is an atomic store of a naturally aligned 32- or 64-bit word
// (mmap_unsafe.go), so the compiler keeps them in program order; a SIGKILL
// stops the process between two of them, and all stores before that point
// reach the shared memfd.
//
// # Untrusted input
//
// The region handed over after a crash, used.idx and the used ring in guest
// RAM are untrusted. MapAt checks size, features, version, desc_num and the
// inflight bytes; Resume checks that used.idx is at most Size past used_idx,
// that the open batch names heads < Size and begins at last_batch_head, and
// that in-flight counters are non-zero, bounded (MaxCounter) and distinct. It
// reads everything before it writes anything, returns ErrCorrupt on any
// inconsistency, and never panics or indexes out of range. While tracking,
// vring.Queue.Pop refuses (ErrBroken) a head the driver makes available
// while it is still flagged, which a conforming driver never does and which
// would otherwise break the count.
//
// A Queue is used only by its queue's thread; Get, PrePut, Complete and
// PostPut do not allocate.
package inflight
