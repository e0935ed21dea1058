package maptable

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ID names a slot and the allocation that occupies it: slot index in the low
// 32 bits, allocation generation in the high 32 bits. Generations are never
// 0, so an ID is never 0 and never 1 (the FUSE root nodeid): every ID handed
// out is at least 1<<32.
type ID uint64

// Key is the lookup key of an entry, e.g. (st_dev, st_ino, mnt_id). The zero
// Key means "no key": such entries are reachable only by ID.
type Key [3]uint64

func makeID(slot, gen uint32) ID { return ID(uint64(gen)<<32 | uint64(slot)) }

// Slot returns the slot index part of id.
func (id ID) Slot() uint32 { return uint32(id) }

// Gen returns the generation part of id.
func (id ID) Gen() uint32 { return uint32(id >> 32) }

var (
	// ErrFull: the table holds its maximum number of entries (about 90% of
	// its slots); it never grows.
	ErrFull = errors.New("maptable: table full")
	// ErrStale: the ID does not name a live entry (never issued, deleted, or
	// its slot was reused by a later Insert).
	ErrStale = errors.New("maptable: stale id")
	// ErrExists: Insert of a key that is already present; the ID returned
	// with it names the existing entry.
	ErrExists = errors.New("maptable: key exists")
	// ErrValueSize: a value buffer of the wrong size.
	ErrValueSize = errors.New("maptable: bad value size")
	// ErrClosed: the table was closed.
	ErrClosed = errors.New("maptable: table closed")
	// ErrCorrupt: Open found a header, layout or intent record that is not
	// one this package writes; the table must not be used.
	ErrCorrupt = errors.New("maptable: corrupt table")
	// ErrVersion: Open found a table written by a different layout version.
	ErrVersion = errors.New("maptable: unsupported layout version")
)

const noSlot = ^uint32(0)

// Table is a crash-consistent hash table in a memfd. Safe for concurrent use.
type Table struct {
	mu sync.Mutex
	// +checklocks:mu
	m mapping // mem == nil once closed
	// +checklocks:mu
	fd int
	// Immutable after construction.
	n       uint32 // slot count
	vsize   int
	maxUsed uint32
	seed    uint64
	blocked bool // flagBlocked: homes per block of 64 Key[1] values
	// +checklocks:mu
	cursor uint32 // next-fit start for keyless inserts
	// +checklocks:mu
	tombs uint64 // tombstones, as far as this process knows (persisted as a hint)
	// +checklocks:mu
	purgeAt uint64 // purge tombstones when tombs reaches this
	// +checklocks:mu
	scratch []byte // Update's working copy of a value
	count   atomic.Int64
	// hook, when set by tests, is called after every store a writer or
	// Open's repair makes; a test panics out of it to simulate SIGKILL.
	hook func()
}

// Create makes a new table in a fresh memfd (MFD_CLOEXEC, sealed against
// resizing) with the given slot count and value size. The memfd is sparse:
// untouched slots cost no memory. The table owns the memfd; FD exposes it.
func Create(name string, slots int, valueSize int) (*Table, error) {
	if slots < 0 || valueSize < 0 {
		return nil, fmt.Errorf("maptable: create %q: negative size", name)
	}
	l, err := computeLayout(uint64(slots), uint64(valueSize))
	if err != nil {
		return nil, fmt.Errorf("maptable: create %q: %v", name, err)
	}
	l.flags = flagBlocked
	var sb [8]byte
	if _, err := io.ReadFull(rand.Reader, sb[:]); err != nil {
		return nil, fmt.Errorf("maptable: create %q: seed: %w", name, err)
	}
	seed := binary.NativeEndian.Uint64(sb[:])
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("maptable: create %q: memfd_create: %w", name, err)
	}
	fail := func(what string, err error) (*Table, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("maptable: create %q: %s: %w", name, what, err)
	}
	if err := unix.Ftruncate(fd, int64(l.total)); err != nil {
		return fail("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS,
		unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail("seal", err)
	}
	var hdr [offCount]byte
	putHeader(hdr[:], l, seed)
	if _, err := unix.Pwrite(fd, hdr[:], 0); err != nil {
		return fail("write header", err)
	}
	m, err := mapTable(fd, l)
	if err != nil {
		return fail("mmap", err)
	}
	return newTable(fd, m, l, seed), nil
}

func newTable(fd int, m mapping, l layout, seed uint64) *Table {
	t := &Table{
		m:       m,
		fd:      fd,
		n:       l.slots,
		vsize:   int(l.valueSize),
		maxUsed: maxUsed(l.slots),
		seed:    seed,
		blocked: l.flags&flagBlocked != 0,
		scratch: make([]byte, l.valueSize),
	}
	t.purgeAt = t.purgeStep()
	return t
}

// Open maps an existing table memfd, typically one a crashed worker created,
// validates its header and layout against the memfd size, and rolls back the
// operation a writer had in progress when it died (see doc.go). The cost is
// independent of the number of slots and entries.
//
// Open seals the memfd against shrinking and growing if it is not sealed yet
// (a memfd created without MFD_ALLOW_SEALING is refused), so that the mapping
// can never fault. It does not take ownership of fd: the table keeps its own
// duplicate, which Close closes. The previous user of the memfd must be dead
// (or have closed its Table): two live tables on one memfd corrupt each other.
func Open(fd int) (*Table, error) { return open(fd, nil) }

func open(fd int, hook func()) (*Table, error) {
	t, err := mapFD(fd)
	if err != nil {
		return nil, err
	}
	t.hook = hook
	t.mu.Lock()
	err = t.recoverLocked()
	t.hook = nil
	t.mu.Unlock()
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("maptable: open: %w", err)
	}
	return t, nil
}

// mapFD validates the memfd's seals, size and header and maps a duplicate of
// it; the table is not repaired yet.
func mapFD(fd int) (*Table, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("maptable: open: fd %d is not a memfd: %w", fd, err)
	}
	const need = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	if seals&need != need {
		// A mapped file that shrinks would SIGBUS us: refuse one that can.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, need); err != nil {
			return nil, fmt.Errorf("maptable: open: cannot seal memfd against resizing: %w", err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("maptable: open: fstat: %w", err)
	}
	var hdr [offCount]byte
	n, err := unix.Pread(fd, hdr[:], 0)
	if err != nil {
		return nil, fmt.Errorf("maptable: open: read header: %w", err)
	}
	l, seed, err := parseHeader(hdr[:n], st.Size)
	if err != nil {
		return nil, fmt.Errorf("maptable: open: %w", err)
	}
	dfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("maptable: open: dup: %w", err)
	}
	m, err := mapTable(dfd, l)
	if err != nil {
		unix.Close(dfd)
		return nil, fmt.Errorf("maptable: open: mmap: %w", err)
	}
	return newTable(dfd, m, l, seed), nil
}

// FD returns the table's memfd (-1 once closed). It stays owned by the table.
func (t *Table) FD() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fd
}

// Cap returns the maximum number of entries (about 90% of the slots).
func (t *Table) Cap() int { return int(t.maxUsed) }

// ValueSize returns the size of every value in bytes.
func (t *Table) ValueSize() int { return t.vsize }

// Len returns the number of entries, without scanning.
func (t *Table) Len() int { return int(t.count.Load()) }

// Close unmaps the table and closes its memfd. The contents stay in the memfd
// for as long as another descriptor of it (e.g. in the fd store) is open.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return ErrClosed
	}
	err := t.m.unmap()
	if cerr := unix.Close(t.fd); err == nil {
		err = cerr
	}
	t.fd = -1
	return err
}

// step marks a point between two stores of a writer; see hook.
func (t *Table) step() {
	if t.hook != nil {
		t.hook()
	}
}

// home returns the first slot of k's probe sequence.
func (t *Table) home(k Key) uint32 {
	if t.blocked {
		base, _ := bits.Mul64(hashKey(t.seed, Key{k[0], k[1] >> blockShift, k[2]}), uint64(t.n))
		s := base + k[1]&blockMask // base < n: wraps at most once unless n < 64
		if s >= uint64(t.n) {
			s %= uint64(t.n)
		}
		return uint32(s)
	}
	hi, _ := bits.Mul64(hashKey(t.seed, k), uint64(t.n))
	return uint32(hi)
}

func (t *Table) next(i uint32) uint32 {
	if i++; i == t.n {
		return 0
	}
	return i
}

func (t *Table) prev(i uint32) uint32 {
	if i == 0 {
		return t.n - 1
	}
	return i - 1
}

// liveLocked returns the slot of id if id names a live entry.
// Precondition: t.mu held, table open.
func (t *Table) liveLocked(id ID) (uint32, bool) {
	s := id.Slot()
	if s >= t.n {
		return 0, false
	}
	sh := t.m.slot(s)
	return s, atomic.LoadUint32(&sh.State) == stateUsed && sh.Gen == id.Gen() && id.Gen() != 0
}

// Lookup returns the ID of the entry with key k. The zero Key is never found.
func (t *Table) Lookup(k Key) (ID, bool) {
	if k == (Key{}) {
		return 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return 0, false
	}
	s := t.home(k)
	for range t.n {
		sh := t.m.slot(s)
		switch atomic.LoadUint32(&sh.State) {
		case stateFree:
			return 0, false
		case stateUsed:
			if sh.Key == k && sh.Gen != 0 { // gen 0: a corrupt slot, no valid ID
				return makeID(s, sh.Gen), true
			}
		}
		s = t.next(s)
	}
	return 0, false
}

// Get copies the value of entry id into val, which must be ValueSize bytes
// long.
func (t *Table) Get(id ID, val []byte) error {
	if len(val) != t.vsize {
		return ErrValueSize
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return ErrClosed
	}
	s, ok := t.liveLocked(id)
	if !ok {
		return ErrStale
	}
	copy(val, t.m.value(s))
	return nil
}

// Insert adds an entry with key k and value val (at most ValueSize bytes,
// zero-padded) and returns its ID. A non-zero k must not be present already:
// then Insert returns the existing entry's ID and ErrExists. Entries with the
// zero Key take any free slot and can only be found by ID.
func (t *Table) Insert(k Key, val []byte) (ID, error) {
	if len(val) > t.vsize {
		return 0, ErrValueSize
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return 0, ErrClosed
	}
	if k != (Key{}) {
		s, id, sawFree, err := t.probeInsertLocked(k)
		if !sawFree && err == nil {
			// No free slot left on the whole ring, so every miss scans it:
			// clear the tombstones no probe sequence needs.
			t.purgeLocked()
			s, id, _, err = t.probeInsertLocked(k)
		}
		if err != nil || s == noSlot {
			if err == nil {
				err = ErrFull
			}
			return id, err
		}
		if uint32(t.count.Load()) >= t.maxUsed {
			return 0, ErrFull
		}
		return t.insertAtLocked(s, k, val), nil
	}
	if uint32(t.count.Load()) >= t.maxUsed {
		return 0, ErrFull
	}
	s := t.cursor
	for range t.n {
		if atomic.LoadUint32(&t.m.slot(s).State) != stateUsed {
			t.cursor = t.next(s)
			return t.insertAtLocked(s, k, val), nil
		}
		s = t.next(s)
	}
	return 0, ErrFull
}

// probeInsertLocked walks k's probe sequence. It returns the slot to insert
// k into (the first tombstone before the first free slot, else that free
// slot), or ErrExists with the ID of k's entry, or noSlot if the walk found
// neither a free slot nor a tombstone on the whole ring. sawFree reports
// whether the walk ended at a free slot.
// Precondition: t.mu held, table open, k non-zero.
func (t *Table) probeInsertLocked(k Key) (slot uint32, id ID, sawFree bool, err error) {
	s, tomb := t.home(k), noSlot
	for range t.n {
		sh := t.m.slot(s)
		switch atomic.LoadUint32(&sh.State) {
		case stateFree:
			if tomb != noSlot {
				return tomb, 0, true, nil
			}
			return s, 0, true, nil
		case stateTomb:
			if tomb == noSlot {
				tomb = s
			}
		case stateUsed:
			if sh.Key == k {
				return noSlot, makeID(s, sh.Gen), true, ErrExists
			}
		}
		s = t.next(s)
	}
	return tomb, 0, false, nil
}

// beginLocked records the intent to change slot s with op: the undo copy of
// the record and the count first, the op word last. From the op store on, a
// crash rolls the slot back to the undo copy.
// Precondition: t.mu held, table open, no intent recorded.
func (t *Table) beginLocked(op, s uint32) {
	undo := t.m.undo()
	copy(undo, t.m.record(s))
	t.step()
	oldCount := uint64(t.count.Load())
	*t.m.u32(offIntentSlot) = s
	*t.m.u64(offIntentOldCount) = oldCount
	*t.m.u64(offIntentCheck) = intentCheck(op, s, oldCount, undo)
	t.step()
	atomic.StoreUint32(t.m.u32(offIntentOp), op)
	t.step()
}

// commitLocked publishes the new count and clears the intent: the single
// store of the op word commits the operation.
// Precondition: t.mu held, intent recorded by beginLocked.
func (t *Table) commitLocked(count int64) {
	atomic.StoreUint64(t.m.u64(offCount), uint64(count))
	t.step()
	atomic.StoreUint32(t.m.u32(offIntentOp), opNone)
	t.count.Store(count)
	t.step()
}

// insertAtLocked writes a new entry into slot s (free or tombstone).
// Precondition: t.mu held, table open, s < n not used, count < maxUsed.
func (t *Table) insertAtLocked(s uint32, k Key, val []byte) ID {
	sh := t.m.slot(s)
	wasTomb := atomic.LoadUint32(&sh.State) == stateTomb
	t.beginLocked(opInsert, s)
	seq := sh.Seq
	atomic.StoreUint32(&sh.Seq, seq+1)
	t.step()
	gen := sh.Gen + 1
	if gen == 0 {
		gen = 1
	}
	sh.Gen = gen
	sh.Key = k
	t.step()
	v := t.m.value(s)
	n := copy(v, val)
	clear(v[n:])
	t.step()
	atomic.StoreUint32(&sh.State, stateUsed)
	t.step()
	atomic.StoreUint32(&sh.Seq, seq+2)
	t.step()
	t.commitLocked(t.count.Load() + 1)
	if wasTomb {
		t.setTombsLocked(t.tombs - 1)
	}
	return makeID(s, gen)
}

// An Updater rewrites an entry's value in place (Table.Update). An
// interface rather than a func, so that a long-lived object can be its own
// updater without a closure allocated for it.
type Updater interface{ UpdateValue(val []byte) }

// UpdateFunc is a function used as an Updater.
type UpdateFunc func(val []byte)

// UpdateValue calls f.
func (f UpdateFunc) UpdateValue(val []byte) { f(val) }

// Update calls u with a copy of entry id's value and stores what u leaves in
// it. u runs with the table locked: it must not call methods of t, nor keep
// val. If u panics, the entry is unchanged. A crash leaves either the old or
// the new value, never a mix.
func (t *Table) Update(id ID, u Updater) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return ErrClosed
	}
	s, ok := t.liveLocked(id)
	if !ok {
		return ErrStale
	}
	v := t.m.value(s)
	copy(t.scratch, v)
	u.UpdateValue(t.scratch)
	t.beginLocked(opUpdate, s)
	sh := t.m.slot(s)
	seq := sh.Seq
	atomic.StoreUint32(&sh.Seq, seq+1)
	t.step()
	copy(v, t.scratch)
	t.step()
	atomic.StoreUint32(&sh.Seq, seq+2)
	t.step()
	t.commitLocked(t.count.Load())
	return nil
}

// Delete removes entry id. Its ID, and every copy of it, becomes stale.
func (t *Table) Delete(id ID) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return ErrClosed
	}
	s, ok := t.liveLocked(id)
	if !ok {
		return ErrStale
	}
	// A slot followed by a free slot ends every probe sequence through it,
	// so it can become free instead of a tombstone.
	newState := uint32(stateTomb)
	if atomic.LoadUint32(&t.m.slot(t.next(s)).State) == stateFree {
		newState = stateFree
	}
	if newState == stateTomb {
		// The hint is raised before and lowered after the change it counts,
		// so a crash leaves it too high, never too low.
		t.setTombsLocked(t.tombs + 1)
	}
	t.beginLocked(opDelete, s)
	sh := t.m.slot(s)
	seq := sh.Seq
	atomic.StoreUint32(&sh.Seq, seq+1)
	t.step()
	atomic.StoreUint32(&sh.State, newState)
	t.step()
	atomic.StoreUint32(&sh.Seq, seq+2)
	t.step()
	t.commitLocked(t.count.Load() - 1)
	if newState == stateTomb {
		if t.tombs >= t.purgeAt {
			t.purgeLocked()
		}
		return nil
	}
	// Tombstones right before a free slot end no probe sequence any more.
	tombs := t.tombs
	for p := t.prev(s); p != s; p = t.prev(p) {
		ps := t.m.slot(p)
		if atomic.LoadUint32(&ps.State) != stateTomb {
			break
		}
		atomic.StoreUint32(&ps.State, stateFree)
		t.step()
		if tombs > 0 {
			tombs--
		}
	}
	t.setTombsLocked(tombs)
	return nil
}

// setTombsLocked records the tombstone count (in the header as a hint that
// may be too high after a crash, never too low).
// Precondition: t.mu held, table open.
func (t *Table) setTombsLocked(n uint64) {
	t.tombs = n
	atomic.StoreUint64(t.m.u64(offTombs), n)
	t.step()
}

func (t *Table) purgeStep() uint64 { return uint64(t.n/8) + 1 }

// purgeLocked turns every tombstone that no probe sequence crosses into a
// free slot. A tombstone at p is needed only if a keyed entry at q has its
// home at or before p (cyclically, on the way to q); the walk goes backwards
// keeping cover, the number of slots behind the current one that some entry
// ahead still needs. Each tombstone→free store is safe on its own, so a
// crash part-way leaves a consistent table. O(slots).
// Precondition: t.mu held, table open, no intent recorded.
func (t *Table) purgeLocked() {
	start, passes := noSlot, 2
	for i := range t.n {
		if atomic.LoadUint32(&t.m.slot(i).State) == stateFree {
			// Nothing crosses a free slot: cover is 0 there, one pass suffices.
			start, passes = i, 1
			break
		}
	}
	if start == noSlot {
		start = 0 // the first pass only computes cover
	}
	var kept uint64
	cover := uint32(0)
	for pass := range passes {
		decide := pass == passes-1
		p := start
		for range t.n {
			sh := t.m.slot(p)
			switch atomic.LoadUint32(&sh.State) {
			case stateFree:
				cover = 0
			case stateTomb:
				if !decide {
					break
				}
				if cover == 0 {
					atomic.StoreUint32(&sh.State, stateFree)
					t.step()
				} else {
					kept++
				}
			}
			if cover > 0 {
				cover--
			}
			if atomic.LoadUint32(&sh.State) == stateUsed && sh.Key != (Key{}) {
				h := t.home(sh.Key)
				d := p - h
				if p < h {
					d = p + t.n - h
				}
				cover = max(cover, d)
			}
			p = t.prev(p)
		}
	}
	t.setTombsLocked(kept)
	t.purgeAt = kept + t.purgeStep()
}

// Range calls fn for every entry, in slot order, until fn returns false. val
// is a copy, valid only during the call. The table is locked meanwhile: fn
// must not call methods of t. Meant for recovery bookkeeping, debugging and
// tests; it never faults in the sparse memfd's holes (every read of a hole
// through the shared mapping would allocate a zero page for good): it reads
// only the data extents (lseek SEEK_DATA/SEEK_HOLE on the memfd, which
// count swapped-out pages as data), and stops once it has seen Len()
// entries. Cost: O(pages ever written), not O(slots).
func (t *Table) Range(fn func(id ID, k Key, val []byte) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m.mem == nil {
		return
	}
	val := make([]byte, t.vsize)
	left := t.count.Load()
	for s := uint32(0); s < t.n && left > 0; {
		lo, hi := t.dataSlotsLocked(s)
		for ; s < hi && left > 0; s++ {
			if s < lo {
				s = lo
				if s >= hi {
					break
				}
			}
			sh := t.m.slot(s)
			if atomic.LoadUint32(&sh.State) != stateUsed || sh.Gen == 0 {
				continue
			}
			left--
			copy(val, t.m.value(s))
			if !fn(makeID(s, sh.Gen), sh.Key, val) {
				return
			}
		}
		s = max(s, hi)
	}
}

// dataSlotsLocked returns [lo, hi): the slots, from s on, whose headers lie
// in the next data extent of the memfd. A slot whose header lies in a hole
// was never written, so it is free; an entry's whole record was written,
// so reading a used slot never touches a hole. Without SEEK_DATA it
// returns [s, n).
// Precondition: t.mu held, table open.
func (t *Table) dataSlotsLocked(s uint32) (lo, hi uint32) {
	off := int64(t.m.slotOff(s))
	d, err := unix.Seek(t.fd, off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return t.n, t.n // no data after off
	}
	if err != nil || d < off {
		return s, t.n
	}
	h, err := unix.Seek(t.fd, d, unix.SEEK_HOLE)
	if err != nil || h <= d {
		return s, t.n
	}
	base, rsz := int64(t.m.hsz), int64(t.m.rsz)
	lo = s
	if d > off {
		lo = uint32(min(int64(t.n), (d-base+rsz-1)/rsz)) // first slot starting at or after d
	}
	// Slots whose header ends at or before h (a header straddling into
	// the hole was never written whole: not an entry).
	if h-base >= slotHdrLen {
		hi = uint32(min(int64(t.n), (h-base-slotHdrLen)/rsz+1))
	}
	if hi <= lo {
		// Slot lo's header does not lie whole in the extent: not an entry.
		lo = min(lo+1, t.n)
		return lo, lo
	}
	return lo, hi
}
