// Package mem maps guest RAM and translates guest addresses into host slices.
//
// It owns the mappings of the memfd-backed guest memory regions that the
// vhost-user frontend sends with SET_MEM_TABLE (or ADD_MEM_REG), and the
// translation of guest physical addresses (GPAs, as found in descriptors) and
// frontend virtual addresses (as found in SET_VRING_ADDR) into those mappings.
//
// Invariants:
//   - A Table is immutable after NewTable: it is replaced, never mutated, so
//     queue threads may load the current *Table once per batch and use it
//     without locks.
//   - Guest ranges of a Table never overlap; regions are kept sorted by guest
//     address (and separately by frontend address) for binary search.
//   - Every slice handed out lies inside one mapping and has cap == len, so an
//     append can never write past the range that was asked for.
//   - Every address computation is checked for overflow: addresses and lengths
//     come from the guest and are hostile.
//
// Guest RAM is shared with a guest that may change it at any time: callers read
// each guest-owned value once into a local before checking and using it.
package mem
