package inflight

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"golang.org/x/sys/unix"
)

// Layout of one queue region (vhost-user "Inflight I/O tracking", split
// virtqueue), little-endian:
//
//	off  size  field
//	  0     8  features         (no bits defined: must be 0)
//	  8     2  version          (0: never started, 1: in use)
//	 10     2  desc_num         (= queue size)
//	 12     2  last_batch_head  (first head of the batch being published)
//	 14     2  used_idx         (used.idx as of the last completed batch)
//	 16  16*n  desc[n]: inflight u8, padding [5]u8, next u16, counter u64
//
// Queue regions follow each other, each rounded up to Align bytes.
const (
	// Version is the only region version this package writes and accepts.
	Version = 1
	// Align is the alignment of every queue region (INFLIGHT_ALIGNMENT).
	Align = 64
	// MaxQueueSize is the largest split virtqueue (and desc_num).
	MaxQueueSize = 32768
	// MaxQueues is the largest number of queues (num_queues is a u16).
	MaxQueues = math.MaxUint16
	// MaxCounter bounds the counters Resume accepts: 2^62 pops take over a
	// century at 10^9 per second, so a larger counter means a corrupt region,
	// and the bound keeps the next counter far from overflow.
	MaxCounter = 1 << 62

	hdrSize  = 16
	descSize = 16

	offFeatures = 0
	offVersion  = 8  // u32 word: version | desc_num<<16
	offBatch    = 12 // u32 word: last_batch_head | used_idx<<16
	offFlag     = 0  // within a desc: u32 word inflight | padding[0:3]
	offNext     = 4  // within a desc: u32 word padding[3:5] | next<<16
	offCounter  = 8  // within a desc
)

var (
	// ErrNotStarted: the queue region was never started (version 0), so it
	// has nothing to resume. Start the queue fresh (Init) at the avail index
	// the frontend gave.
	ErrNotStarted = errors.New("inflight: queue region not started")
	// ErrCorrupt: the region (or the used ring it is checked against) is
	// inconsistent. Nothing was changed.
	ErrCorrupt = errors.New("inflight: region inconsistent")
)

// stride is the size of one queue region; queueSize must be valid.
func stride(queueSize int) int {
	return (hdrSize + descSize*queueSize + Align - 1) &^ (Align - 1)
}

func validQueueSize(n int) bool { return n >= 1 && n <= MaxQueueSize && n&(n-1) == 0 }

func checkGeometry(numQueues, queueSize int) error {
	if numQueues < 1 || numQueues > MaxQueues {
		return fmt.Errorf("inflight: %d queues, want 1..%d", numQueues, MaxQueues)
	}
	if !validQueueSize(queueSize) {
		return fmt.Errorf("inflight: queue size %d not a power of two in 1..%d", queueSize, MaxQueueSize)
	}
	return nil
}

// Size is the mmap size of a region for numQueues queues of queueSize
// entries: each queue region is 16 bytes of header plus 16 per descriptor,
// rounded up to 64. It is 0 when the geometry is invalid.
func Size(numQueues, queueSize int) int {
	if checkGeometry(numQueues, queueSize) != nil {
		return 0
	}
	return numQueues * stride(queueSize)
}

// Region is a mapped inflight region: one queue region per virtqueue.
type Region struct {
	fd      int
	own     bool   // Create made fd: Close closes it
	whole   []byte // the mapping, for munmap
	data    []byte // the region: Size(len(queues), queueSize) bytes
	queues  []Queue
	qsize   int
	release bool
}

// Create makes a new region in a memfd (MFD_CLOEXEC, sealed against
// shrinking and growing), every queue at version 0 (not started) with
// desc_num = queueSize, the way a backend answers GET_INFLIGHT_FD. The Region
// owns the fd (FD, Close); hand it to the fd store or the frontend with a dup
// or SCM_RIGHTS, which keeps it alive.
func Create(numQueues, queueSize int) (*Region, error) {
	if err := checkGeometry(numQueues, queueSize); err != nil {
		return nil, err
	}
	size := Size(numQueues, queueSize)
	fd, err := unix.MemfdCreate("vfsd-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("inflight: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inflight: ftruncate memfd to %d: %w", size, err)
	}
	// A region that shrinks under the mapping would be SIGBUS, not an error.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inflight: seal memfd: %w", err)
	}
	whole, data, err := mmapShared(fd, 0, size)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inflight: mmap %d bytes: %w", size, err)
	}
	r := newRegion(fd, whole, data, numQueues, queueSize)
	r.own = true
	for i := range r.queues {
		store32(r.queues[i].b, offVersion, uint32(queueSize)<<16) // version 0
	}
	return r, nil
}

// Map maps an existing region at offset 0 of fd; see MapAt.
func Map(fd, numQueues, queueSize int) (*Region, error) {
	return MapAt(fd, 0, numQueues, queueSize)
}

// MapAt maps the region at offset (8-aligned; SET_INFLIGHT_FD's mmap_offset)
// of fd, which must be a regular file (memfd) holding at least
// Size(numQueues, queueSize) bytes there. The content is untrusted: every
// queue's header must say features 0, version 0 or 1, and desc_num equal to
// queueSize (a never-started queue may also have desc_num 0, as a frontend's
// zeroed region does), and a started queue's inflight bytes must be 0 or 1.
// Resume checks the rest. MapAt does not take ownership of fd.
func MapAt(fd int, offset int64, numQueues, queueSize int) (*Region, error) {
	if err := checkGeometry(numQueues, queueSize); err != nil {
		return nil, err
	}
	size := Size(numQueues, queueSize)
	if offset < 0 || offset%8 != 0 {
		return nil, fmt.Errorf("inflight: offset %d not a non-negative multiple of 8", offset)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("inflight: fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("inflight: fd is not a regular file (mode %#o)", st.Mode)
	}
	if offset > math.MaxInt64-int64(size) || st.Size < offset+int64(size) {
		return nil, fmt.Errorf("inflight: fd has %d bytes, region needs %d at offset %d", st.Size, size, offset)
	}
	whole, data, err := mmapShared(fd, offset, size)
	if err != nil {
		return nil, fmt.Errorf("inflight: mmap %d bytes at %d: %w", size, offset, err)
	}
	r := newRegion(fd, whole, data, numQueues, queueSize)
	if !aligned8(data) {
		r.Close()
		return nil, fmt.Errorf("inflight: offset %d gives a misaligned mapping", offset)
	}
	if err := r.validate(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// validate checks every queue's header (and started queues' inflight bytes).
func (r *Region) validate() error {
	for i := range r.queues {
		if err := r.queues[i].check(); err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
	}
	return nil
}

func newRegion(fd int, whole, data []byte, numQueues, queueSize int) *Region {
	r := &Region{fd: fd, whole: whole, data: data, queues: make([]Queue, numQueues), qsize: queueSize}
	st := stride(queueSize)
	for i := range r.queues {
		r.queues[i] = Queue{b: data[i*st : (i+1)*st : (i+1)*st], size: queueSize}
	}
	return r
}

// FD returns the region's fd: owned by the Region after Create, the caller's
// after Map.
func (r *Region) FD() int { return r.fd }

// NumQueues returns the number of queue regions.
func (r *Region) NumQueues() int { return len(r.queues) }

// QueueSize returns the size of every queue (desc_num).
func (r *Region) QueueSize() int { return r.qsize }

// Bytes returns the mapped region (for tests and tools that inspect it).
func (r *Region) Bytes() []byte { return r.data }

// Queue returns queue i's tracker, or nil if i is out of range. A Queue is
// used only by its queue's thread.
func (r *Region) Queue(i int) *Queue {
	if i < 0 || i >= len(r.queues) {
		return nil
	}
	return &r.queues[i]
}

// Close unmaps the region, and closes the fd if Create made it. No Queue of
// the region may be used afterwards.
func (r *Region) Close() error {
	if r.release {
		return nil
	}
	r.release = true
	err := unix.Munmap(r.whole)
	if r.own {
		if cerr := unix.Close(r.fd); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("inflight: close region: %w", err)
	}
	return nil
}

// Queue tracks the chains of one split virtqueue that were popped and not yet
// completed, in that queue's region. All methods run on the queue's thread.
// The store order of each method is part of the crash-consistency argument in
// the package doc.
type Queue struct {
	b       []byte // this queue's region: header and desc[size]
	size    int
	counter uint64 // last counter given out by Get
	batch   uint16 // last_batch_head as last stored
	used    uint16 // used_idx as last stored
	hook    func()
}

// Size returns desc_num, the queue size.
func (q *Queue) Size() int { return q.size }

// Started reports whether the queue region holds state (version 1) that
// Resume can act on.
func (q *Queue) Started() bool {
	return uint16(load32(q.b, offVersion)) == Version
}

// Init starts tracking afresh: no chain in flight, used_idx = usedIdx (the
// used.idx the queue starts from). The version is cleared first and set last,
// so a crash in the middle leaves a region that says "not started" rather
// than a half-cleared one that Resume would believe.
func (q *Queue) Init(usedIdx uint16) {
	store32(q.b, offVersion, uint32(q.size)<<16) // version 0
	q.stored()
	for h := 0; h < q.size; h++ {
		d := hdrSize + descSize*h
		store32(q.b, d+offFlag, 0)
		store32(q.b, d+offNext, 0)
		store64(q.b, d+offCounter, 0)
	}
	store64(q.b, offFeatures, 0)
	q.batch, q.used, q.counter = 0, usedIdx, 0
	store32(q.b, offBatch, uint32(usedIdx)<<16)
	q.stored()
	store32(q.b, offVersion, uint32(q.size)<<16|Version)
	q.stored()
}

// Get marks head in flight with the next counter: the counter first, then the
// flag, so a flagged head always has its counter. Call it when a chain (well
// formed or not) is taken from the avail ring, before it is handed on. A head
// >= Size is ignored (the caller has checked it).
func (q *Queue) Get(head uint16) {
	if int(head) >= q.size {
		return
	}
	d := hdrSize + descSize*int(head)
	q.counter++
	store64(q.b, d+offCounter, q.counter)
	q.stored()
	store32(q.b, d+offFlag, 1)
	q.stored()
}

// Inflight reports whether head is marked in flight (false for head >= Size).
func (q *Queue) Inflight(head uint16) bool {
	if int(head) >= q.size {
		return false
	}
	return load32(q.b, hdrSize+descSize*int(head)+offFlag)&0xff != 0
}

// PrePut records first, the head of the first used element of the batch
// about to be published, in last_batch_head. Call it after the used elements
// are written and before used.idx is stored.
func (q *Queue) PrePut(first uint16) {
	q.batch = first
	store32(q.b, offBatch, uint32(q.batch)|uint32(q.used)<<16)
	q.stored()
}

// Complete clears head's in-flight flag. Call it for every head of the batch
// after used.idx has been stored, never before. A head >= Size is ignored.
func (q *Queue) Complete(head uint16) {
	if int(head) >= q.size {
		return
	}
	store32(q.b, hdrSize+descSize*int(head)+offFlag, 0)
	q.stored()
}

// PostPut stores used_idx = usedIdx (the used.idx just published). Call it
// after Complete for every head of the batch: it is the store that ends the
// batch.
func (q *Queue) PostPut(usedIdx uint16) {
	q.used = usedIdx
	store32(q.b, offBatch, uint32(q.batch)|uint32(q.used)<<16)
	q.stored()
}

// SetCrashHook installs f to run after every store to the region (and at
// every AfterStore). For crash-point tests only: a panic in f stops the
// caller between two stores, as a SIGKILL would. nil removes it.
func (q *Queue) SetCrashHook(f func()) { q.hook = f }

// AfterStore runs the crash hook, if any. The owner of the rings calls it
// after each store it makes to guest RAM that belongs to the protocol (used
// elements, used.idx), so crash tests stop there too.
func (q *Queue) AfterStore() { q.stored() }

func (q *Queue) stored() {
	if q.hook != nil {
		q.hook()
	}
}

// check validates the header and, for a started queue, every inflight byte.
func (q *Queue) check() error {
	features := binary.LittleEndian.Uint64(q.b[offFeatures:])
	version := binary.LittleEndian.Uint16(q.b[offVersion:])
	descNum := binary.LittleEndian.Uint16(q.b[offVersion+2:])
	if features != 0 {
		return fmt.Errorf("%w: features %#x, none defined", ErrCorrupt, features)
	}
	switch version {
	case 0:
		if descNum != 0 && int(descNum) != q.size {
			return fmt.Errorf("%w: desc_num %d, queue size %d", ErrCorrupt, descNum, q.size)
		}
		return nil
	case Version:
	default:
		return fmt.Errorf("%w: version %d, want 0 or %d", ErrCorrupt, version, Version)
	}
	if int(descNum) != q.size {
		return fmt.Errorf("%w: desc_num %d, queue size %d", ErrCorrupt, descNum, q.size)
	}
	for h := 0; h < q.size; h++ {
		if f := q.b[hdrSize+descSize*h+offFlag]; f > 1 {
			return fmt.Errorf("%w: desc %d inflight byte %d", ErrCorrupt, h, f)
		}
	}
	return nil
}

type pending struct {
	head    uint16
	counter uint64
}

// Resume repairs the queue region after a crash and says where the queue
// goes on. usedRingIdx is used.idx as it is now in guest RAM; usedHead(i)
// returns the id of used.ring[i % size] (the caller masks or not: i is the
// free-running index). Both are untrusted.
//
//  1. If used_idx differs from usedRingIdx, the crash hit between publishing
//     a batch and finishing its bookkeeping: the used elements from used_idx
//     to usedRingIdx are that batch. Their flags are cleared and used_idx is
//     set to usedRingIdx.
//  2. The heads still in flight are returned sorted by counter: the order
//     they were popped in, which is the order to resubmit them.
//  3. lastAvail = usedRingIdx + len(heads): every chain popped is either
//     published in the used ring or still in flight, so that is the next
//     avail entry that was never taken.
//
// Everything is read and checked before anything is written: on error
// (ErrNotStarted, or ErrCorrupt with the reason) the region is unchanged.
// Checks: version, desc_num, features; the batch is at most Size elements,
// starts with last_batch_head and names heads < Size; inflight bytes are 0 or
// 1; in-flight counters are non-zero, at most MaxCounter and distinct. Later
// Gets continue after the largest counter. Resume itself is crash-safe: it
// stores in the same order as a batch completion, and running it again
// after a crash in the middle gives the same result.
func (q *Queue) Resume(usedRingIdx uint16, usedHead func(i uint16) uint32) (lastAvail uint16, heads []uint16, err error) {
	if binary.LittleEndian.Uint16(q.b[offVersion:]) == 0 {
		return 0, nil, ErrNotStarted
	}
	if err := q.check(); err != nil {
		return 0, nil, err
	}
	batch := binary.LittleEndian.Uint16(q.b[offBatch:])
	used := binary.LittleEndian.Uint16(q.b[offBatch+2:])

	// 1. The batch that was published but not finished, read once.
	n := int(usedRingIdx - used)
	if n > q.size {
		return 0, nil, fmt.Errorf("%w: used.idx %d is %d past used_idx %d, queue size %d",
			ErrCorrupt, usedRingIdx, n, used, q.size)
	}
	done := make([]bool, q.size)
	var walked []uint16
	for k := 0; k < n; k++ {
		id := usedHead(used + uint16(k))
		if id >= uint32(q.size) {
			return 0, nil, fmt.Errorf("%w: used.ring[%d] names head %d, queue size %d",
				ErrCorrupt, used+uint16(k), id, q.size)
		}
		if k == 0 && id != uint32(batch) {
			return 0, nil, fmt.Errorf("%w: used.ring[%d] names head %d, last_batch_head is %d",
				ErrCorrupt, used, id, batch)
		}
		done[id] = true
		walked = append(walked, uint16(id))
	}

	// 2. What is still in flight, read once.
	var infl []pending
	for h := 0; h < q.size; h++ {
		d := q.b[hdrSize+descSize*h:]
		if d[offFlag] == 0 || done[h] {
			continue
		}
		c := binary.LittleEndian.Uint64(d[offCounter:])
		if c == 0 || c > MaxCounter {
			return 0, nil, fmt.Errorf("%w: desc %d in flight with counter %d", ErrCorrupt, h, c)
		}
		infl = append(infl, pending{uint16(h), c})
	}
	slices.SortFunc(infl, func(a, b pending) int {
		switch {
		case a.counter < b.counter:
			return -1
		case a.counter > b.counter:
			return 1
		}
		return 0
	})
	for i := 1; i < len(infl); i++ {
		if infl[i].counter == infl[i-1].counter {
			return 0, nil, fmt.Errorf("%w: descs %d and %d share counter %d",
				ErrCorrupt, infl[i-1].head, infl[i].head, infl[i].counter)
		}
	}

	// Repair: flags of the finished batch, then used_idx, as PostPut does.
	q.batch, q.used = batch, used
	for _, h := range walked {
		q.Complete(h)
	}
	if used != usedRingIdx {
		q.PostPut(usedRingIdx)
	}
	q.counter = 0
	heads = make([]uint16, len(infl))
	for i, p := range infl {
		heads[i] = p.head
	}
	if len(infl) > 0 {
		q.counter = infl[len(infl)-1].counter
	}
	return usedRingIdx + uint16(len(heads)), heads, nil
}
