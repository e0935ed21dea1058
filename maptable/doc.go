// Package maptable owns vfsd's crash-consistent flat tables: the inode map
// and the handle map of the passthrough filesystem. A table lives in a memfd
// that outlives the worker (the supervisor keeps it in its fd store); a new
// worker maps it again with Open and finds every entry a guest may still name
// by its ID (nodeid or fh).
//
// # Layout
//
// A header (magic, version, geometry, hash seed, checksum, entry count,
// tombstone hint, one intent record) followed by a fixed number of fixed-size
// slot records (sequence, generation, state, Key, value); see layout.go for
// offsets. The size is fixed at Create; the memfd is sparse, so untouched
// slots cost nothing, and it is sealed against shrinking and growing so that
// a mapping can never SIGBUS. Integers are in host byte order.
//
// # IDs
//
// An ID is slot index | generation<<32. Insert bumps the slot's generation
// (skipping 0), Delete leaves it, so an ID copied before a Delete is stale
// forever after (until the 32-bit generation of that one slot wraps, 2^32
// reuses later). Generations are never 0, so every ID is >= 1<<32: never 0 and
// never 1, the FUSE root nodeid, which callers map separately.
//
// # Key index
//
// Open addressing with linear probing over the slots themselves, from the
// key's home slot: in new tables (header flag flagBlocked) base + Key[1]%64
// with base = hash(seed, Key[0], Key[1]>>6, Key[2]), so that consecutive
// inode numbers share pages (see layout.go); in tables of older builds
// hash(seed, Key). A slot is free, used or a tombstone; lookups
// stop at a free slot. Invariant: between an entry's home slot and its slot
// there is no free slot. Delete makes a slot free when the next one is free
// (and then frees the tombstones right before it), else a tombstone; when
// tombstones accumulate (1/8 of the slots since the last purge, or a probe
// found no free slot on the whole ring) an O(slots) purge frees every
// tombstone no probe sequence crosses. Entries never move: IDs are positions.
// Entries with the zero Key (handles) are not indexed and take any
// non-used slot. Insert fails with ErrFull above ~90% load (Cap).
//
// # Crash consistency
//
// One mutex serialises all operations, so there is at most one writer and the
// header holds exactly one intent record. A writer (Insert, Update, Delete):
//
//  1. copies the slot's whole record into the intent's undo area and records
//     the slot index, the old count and a checksum;
//  2. stores the intent's op word (the operation is now "in flight");
//  3. bumps the slot's sequence to odd, writes the fields, bumps it to even;
//  4. stores the new count;
//  5. clears the op word: this single store commits the operation.
//
// Repair rule, applied by Open: if the op word is set, the operation did not
// commit, whatever step it reached, and Open copies the undo record back into
// the slot and restores the count. So a torn Insert leaves the slot as it was
// (free or tombstone, old generation), a torn Delete leaves the entry live, a
// torn Update leaves the old value; every operation is atomic and a crash
// after step 5 keeps it. Repair touches one slot: Open costs O(1) in the
// number of slots and entries. The rollback is idempotent, so a crash inside
// Open is repaired by the next Open. Stores outside an intent (a tombstone
// becoming free, the tombstone hint) are single atomic word stores that
// change no entry and are safe at any point.
//
// A caller that needs an operation's result to survive (an ID it replied to
// the guest) must treat it as done only once the call returned; the request
// journal resolves a crash between the return and the reply.
//
// Open treats the memfd as untrusted: it checks magic, version, header
// checksum, geometry against the memfd size, and the intent record (op, slot
// range, checksum, consistency with the slot and count) before writing
// anything, and returns an error wrapping ErrCorrupt or ErrVersion instead of
// using a table it does not understand. Slot contents are not scanned: a
// wrong state or key in a slot can give wrong answers, never a panic or an
// out-of-range access (every index is reduced modulo the slot count).
//
// # Concurrency
//
// All methods are safe for concurrent use; each takes Table.mu, the only
// lock (no lock order to respect). Len reads an atomic counter without the
// lock. Update's and Range's callbacks run under the lock and must not call
// the table. Two Tables (processes) on one memfd at a time are not supported:
// Open assumes the previous user is dead.
package maptable
