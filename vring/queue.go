package vring

import (
	"encoding/binary"
	"errors"
	"fmt"

	"vfsd/vring/inflight"
	"vfsd/vring/internal/ring"
	"vfsd/vring/mem"
)

// MaxSize is the largest split virtqueue size.
const MaxSize = 32768

var (
	// ErrBadChain means the chain at Chain.Head is malformed. The head has
	// been consumed: push it with 0 bytes written and go on.
	ErrBadChain = errors.New("vring: malformed descriptor chain")
	// ErrBroken means the avail ring is impossible (index moved by more than
	// the queue size, head out of range) or the rings cannot be translated:
	// stop the queue. It is sticky.
	ErrBroken = errors.New("vring: queue broken")
)

// Config describes a queue as negotiated by the frontend.
type Config struct {
	Size              int    // power of two, 1..MaxSize
	Desc, Avail, Used uint64 // guest physical addresses
	EventIdx          bool   // VIRTIO_RING_F_EVENT_IDX negotiated
	MaxChain          int    // cap on buffer descriptors per chain, indirect table entries included (0 = Size)
}

// Chain is one popped descriptor chain: host slices of guest RAM. The slices
// are valid until the memory table changes and must not be retained after the
// chain is pushed.
type Chain struct {
	Head     uint16
	Readable [][]byte // device-readable segments, in order
	Writable [][]byte // device-writable segments, in order
}

// Queue is the device side of one split virtqueue.
type Queue struct {
	cfg               Config
	tab               *mem.Table
	mask              uint16
	desc, avail, used []byte // translated rings

	lastAvail   uint16 // next avail entry to pop
	shadowAvail uint16 // avail.idx as last read
	usedIdx     uint16 // next used entry to write
	published   uint16 // used.idx as last published
	usedFlags   uint16 // device-owned used.flags
	notify      bool   // notifications enabled (DisableNotify not in effect)
	signalValid bool   // published was the value at the last notification decision
	broken      bool

	bounce []byte // indirect tables that span regions are gathered here (lazily)

	infl *inflight.Queue // inflight tracking, nil when off
	pend []uint16        // with tracking: head of the used element at index i&mask, pushed since the last Publish
}

// New validates c (size, alignment, translation of all three rings, each
// inside one region) and returns a queue that resumes at lastAvail and
// usedIdx (both as found in guest RAM or restored state). It enables
// notifications in guest RAM: used.flags NO_NOTIFY is cleared and, with
// EVENT_IDX, avail_event is set to lastAvail.
func New(t *mem.Table, c Config, lastAvail, usedIdx uint16) (*Queue, error) {
	if c.Size < 1 || c.Size > MaxSize || c.Size&(c.Size-1) != 0 {
		return nil, fmt.Errorf("vring: size %d not a power of two in 1..%d", c.Size, MaxSize)
	}
	if c.MaxChain == 0 {
		c.MaxChain = c.Size
	}
	if c.MaxChain < 1 || c.MaxChain > MaxSize {
		return nil, fmt.Errorf("vring: MaxChain %d out of range 1..%d", c.MaxChain, MaxSize)
	}
	if c.Desc%ring.DescAlign != 0 || c.Avail%ring.AvailAlign != 0 || c.Used%ring.UsedAlign != 0 {
		return nil, fmt.Errorf("vring: misaligned rings desc %#x avail %#x used %#x", c.Desc, c.Avail, c.Used)
	}
	q := &Queue{
		cfg:         c,
		mask:        uint16(c.Size - 1),
		lastAvail:   lastAvail,
		shadowAvail: lastAvail,
		usedIdx:     usedIdx,
		published:   usedIdx,
		notify:      true,
	}
	if err := q.SetMem(t); err != nil {
		return nil, err
	}
	ring.Store16(q.used, 0, q.usedFlags)
	if c.EventIdx {
		ring.Store16(q.used, ring.AvailEventOff(c.Size), lastAvail)
	}
	ring.Fence()
	return q, nil
}

// SetMem re-translates the rings with a new memory table. On error the queue
// keeps its previous translation. Queue thread only.
func (q *Queue) SetMem(t *mem.Table) error {
	c := q.cfg
	desc, err := t.Slice(c.Desc, uint64(ring.DescBytes(c.Size)))
	if err != nil {
		return fmt.Errorf("vring: descriptor table at %#x: %w", c.Desc, err)
	}
	avail, err := t.Slice(c.Avail, uint64(ring.AvailBytes(c.Size, c.EventIdx)))
	if err != nil {
		return fmt.Errorf("vring: avail ring at %#x: %w", c.Avail, err)
	}
	used, err := t.Slice(c.Used, uint64(ring.UsedBytes(c.Size, c.EventIdx)))
	if err != nil {
		return fmt.Errorf("vring: used ring at %#x: %w", c.Used, err)
	}
	// The index atomics need host alignment too, not just guest alignment.
	if !ring.Aligned(desc, ring.DescAlign) || !ring.Aligned(avail, ring.AvailAlign) || !ring.Aligned(used, ring.UsedAlign) {
		return errors.New("vring: rings misaligned in host memory (region offsets not aligned like guest addresses)")
	}
	q.tab, q.desc, q.avail, q.used = t, desc, avail, used
	return nil
}

// Size returns the queue size.
func (q *Queue) Size() int { return q.cfg.Size }

// LastAvail returns the index of the next avail entry Pop will take.
func (q *Queue) LastAvail() uint16 { return q.lastAvail }

// UsedIdx returns the index the next Push will write (pushed elements
// included, published or not).
func (q *Queue) UsedIdx() uint16 { return q.usedIdx }

// Pop takes the next available chain into c, reusing c's slices. It returns
// false, nil when the ring is empty. On ErrBadChain the chain was consumed and
// c.Head is valid (c's segment lists are empty); on ErrBroken nothing was
// consumed and the queue must stop.
func (q *Queue) Pop(c *Chain) (bool, error) {
	c.Readable, c.Writable = c.Readable[:0], c.Writable[:0]
	if q.broken {
		return false, ErrBroken
	}
	if q.lastAvail == q.shadowAvail {
		idx := ring.Load16(q.avail, 2) // acquire: ring entries are read after this
		if int(idx-q.lastAvail) > q.cfg.Size {
			q.broken = true
			return false, ErrBroken
		}
		q.shadowAvail = idx
		if idx == q.lastAvail {
			return false, nil
		}
	}
	slot := int(q.lastAvail & q.mask)
	head := binary.LittleEndian.Uint16(q.avail[ring.HdrSize+2*slot:])
	if int(head) >= q.cfg.Size {
		q.broken = true
		return false, ErrBroken
	}
	if q.infl != nil && q.infl.Inflight(head) {
		// The driver made a head available that it has not got back:
		// popping it would make two chains share one inflight entry and
		// break recovery's count. A conforming driver never does this.
		q.broken = true
		return false, ErrBroken
	}
	q.lastAvail++
	if q.cfg.EventIdx && q.notify {
		// Keep asking for a kick at the next entry, as libvhost-user does,
		// for callers that pop without DisableNotify.
		ring.Store16(q.used, ring.AvailEventOff(q.cfg.Size), q.lastAvail)
	}
	c.Head = head
	err := q.walk(c, head)
	if q.infl != nil {
		// Consumed, well formed or not: the caller pushes it either way,
		// so recovery must count it (and resubmit it if it was not).
		q.infl.Get(head)
	}
	if err != nil {
		c.Readable, c.Writable = c.Readable[:0], c.Writable[:0]
		return true, err
	}
	return true, nil
}

// Walk translates the chain at head into c without consuming an avail entry,
// for resubmitting chains that were in flight when a previous backend
// stopped (the inflight region names their heads). head is untrusted: one >=
// Size gives ErrBroken (nothing to push); a malformed chain gives ErrBadChain
// (push head with 0 bytes). Queue thread only.
func (q *Queue) Walk(head uint16, c *Chain) error {
	c.Readable, c.Writable = c.Readable[:0], c.Writable[:0]
	if int(head) >= q.cfg.Size {
		return fmt.Errorf("%w: inflight head %d >= size %d", ErrBroken, head, q.cfg.Size)
	}
	c.Head = head
	if err := q.walk(c, head); err != nil {
		c.Readable, c.Writable = c.Readable[:0], c.Writable[:0]
		return err
	}
	return nil
}

// walk follows the chain at head. Each descriptor is read once into locals.
func (q *Queue) walk(c *Chain, head uint16) error {
	table := q.desc
	n := q.cfg.Size // entries in table
	idx := int(head)
	indirect := false
	writable := false
	count := 0
	for {
		if idx >= n {
			return ErrBadChain
		}
		count++
		if count > q.cfg.MaxChain {
			return ErrBadChain
		}
		d := table[idx*ring.DescSize : idx*ring.DescSize+ring.DescSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&ring.DescFIndirect != 0 {
			if indirect || flags&ring.DescFNext != 0 {
				return ErrBadChain
			}
			t, err := q.indirectTable(addr, length)
			if err != nil {
				return err
			}
			// The indirect descriptor only points at the table: its
			// entries count against MaxChain, it does not.
			count--
			table, n, idx, indirect = t, len(t)/ring.DescSize, 0, true
			continue
		}
		if length > 0 {
			w := flags&ring.DescFWrite != 0
			if !w && writable {
				return ErrBadChain
			}
			writable = w
			if err := q.translate(c, addr, uint64(length), w); err != nil {
				return err
			}
		}
		if flags&ring.DescFNext == 0 {
			return nil
		}
		idx = int(next)
	}
}

// indirectTable checks and translates an indirect descriptor's table. A table
// that spans memory regions is gathered into q.bounce.
func (q *Queue) indirectTable(addr uint64, length uint32) ([]byte, error) {
	if length == 0 || length%ring.DescSize != 0 || int(length/ring.DescSize) > q.cfg.MaxChain {
		return nil, ErrBadChain
	}
	t, err := q.tableFor(addr, uint64(length))
	if err != nil {
		return nil, ErrBadChain
	}
	return t, nil
}

func (q *Queue) tableFor(addr, length uint64) ([]byte, error) {
	if t, err := q.tab.Slice(addr, length); err == nil {
		return t, nil
	}
	if q.bounce == nil {
		q.bounce = make([]byte, q.cfg.MaxChain*ring.DescSize)
	}
	b := q.bounce[:length]
	for off := uint64(0); off < length; {
		s, err := q.tab.Segment(addr+off, length-off)
		if err != nil {
			return nil, err
		}
		off += uint64(copy(b[off:], s))
	}
	return b, nil
}

// translate appends the segments of [addr, addr+n) to c.
func (q *Queue) translate(c *Chain, addr, n uint64, w bool) error {
	t := q.tab
	for n > 0 {
		s, err := t.Segment(addr, n)
		if err != nil {
			return ErrBadChain
		}
		if w {
			c.Writable = append(c.Writable, s)
		} else {
			c.Readable = append(c.Readable, s)
		}
		addr += uint64(len(s))
		n -= uint64(len(s))
	}
	return nil
}

// Push writes a used element for head (from Pop) with written bytes. It is
// not visible to the driver until Publish. With inflight tracking, push each
// popped (or resubmitted) head exactly once, and at most Size elements
// between two Publish calls: Publish clears the in-flight flags of what was
// pushed.
func (q *Queue) Push(head uint16, written uint32) {
	e := q.used[ring.HdrSize+ring.ElemSize*int(q.usedIdx&q.mask):]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	if q.infl != nil {
		q.pend[q.usedIdx&q.mask] = head
		q.infl.AfterStore()
	}
	q.usedIdx++
}

// Publish makes all pushed elements visible with a release store of used.idx
// and reports whether the driver must be notified: with EVENT_IDX when the new
// index passed used_event, otherwise unless avail.flags has NO_INTERRUPT.
// With inflight tracking it records the batch's first head before the store
// and clears the batch's flags and stores used_idx after it.
func (q *Queue) Publish() bool {
	old, cur := q.published, q.usedIdx
	if old == cur {
		return false
	}
	if q.infl != nil {
		q.infl.PrePut(q.pend[old&q.mask])
	}
	ring.StoreWord(q.used, 0, q.usedFlags, cur) // seq-cst: ordered before the loads below
	q.published = cur
	var kick bool
	if q.cfg.EventIdx {
		ev := ring.Load16(q.avail, ring.UsedEventOff(q.cfg.Size))
		valid := q.signalValid
		q.signalValid = true
		kick = !valid || ring.NeedEvent(ev, cur, old)
	} else {
		kick = ring.Load16(q.avail, 0)&ring.AvailFNoInterrupt == 0
	}
	if q.infl != nil {
		q.infl.AfterStore()
		for i := old; i != cur; i++ {
			q.infl.Complete(q.pend[i&q.mask])
		}
		q.infl.PostPut(cur)
	}
	return kick
}

// DisableNotify asks the driver not to kick: used.flags NO_NOTIFY, or with
// EVENT_IDX simply no longer advancing avail_event.
func (q *Queue) DisableNotify() {
	q.notify = false
	if !q.cfg.EventIdx {
		q.usedFlags |= ring.UsedFNoNotify
		ring.Store16(q.used, 0, q.usedFlags)
	}
}

// EnableNotify asks for kicks again (avail_event = LastAvail with EVENT_IDX,
// else clears NO_NOTIFY), issues a full fence and reports whether chains are
// already available: if so, keep draining instead of waiting for a kick.
func (q *Queue) EnableNotify() bool {
	q.notify = true
	if q.cfg.EventIdx {
		ring.Store16(q.used, ring.AvailEventOff(q.cfg.Size), q.lastAvail)
	} else {
		q.usedFlags &^= ring.UsedFNoNotify
		ring.Store16(q.used, 0, q.usedFlags)
	}
	ring.Fence()
	return ring.Load16(q.avail, 2) != q.lastAvail
}

// HasAvail reports whether the driver has made chains available beyond
// LastAvail: one load of avail.idx, for polling with notifications
// disabled (Pop re-reads it with the proper ordering).
func (q *Queue) HasAvail() bool { return ring.Load16(q.avail, 2) != q.lastAvail }

// SetInflight turns on inflight tracking for a queue that starts afresh
// (first start, or after a device reset): iq is initialized with nothing in
// flight and used_idx = UsedIdx(). From then on Pop marks every head it
// consumes, and Publish completes the batch in the region around the used.idx
// store (see vring/inflight). iq may have more descriptors than the queue (a
// region sized for the largest queue), not fewer. Call it before the first
// Pop. Queue thread only.
func (q *Queue) SetInflight(iq *inflight.Queue) error {
	if err := q.attachCheck(iq); err != nil {
		return err
	}
	iq.Init(q.usedIdx)
	q.attach(iq)
	return nil
}

// ResumeInflight turns on inflight tracking from a region a previous backend
// left behind (worker restart, or SET_INFLIGHT_FD on reconnect) and returns
// the heads to resubmit, in the order they were first popped. Call it on a
// queue just made by New, before any Pop or Push.
//
// It reads used.idx from guest RAM, lets iq.Resume repair the region, and
// moves the queue to LastAvail = used.idx + len(heads), UsedIdx = used.idx
// (New's lastAvail and usedIdx are replaced). The caller then, before popping
// new work, re-reads each head with Walk and processes it like a popped
// chain: push it (0 bytes on ErrBadChain) and publish. Because a crash may
// have hit between a used.idx store and its notification, signal the driver
// once after resuming even if Publish does not ask for it.
//
// If iq was never started (inflight.ErrNotStarted) there is nothing to
// resubmit: the queue keeps New's indices and tracking starts as with
// SetInflight. On any other error the queue is unchanged and untracked.
// Queue thread only.
func (q *Queue) ResumeInflight(iq *inflight.Queue) ([]uint16, error) {
	if err := q.attachCheck(iq); err != nil {
		return nil, err
	}
	if !iq.Started() {
		iq.Init(q.usedIdx)
		q.attach(iq)
		return nil, nil
	}
	usedIdx := ring.Load16(q.used, 2)
	used := q.used
	lastAvail, heads, err := iq.Resume(usedIdx, func(i uint16) uint32 {
		return binary.LittleEndian.Uint32(used[ring.HdrSize+ring.ElemSize*int(i&q.mask):])
	})
	if err != nil {
		return nil, fmt.Errorf("vring: resume: %w", err)
	}
	for _, h := range heads {
		if int(h) >= q.cfg.Size { // only with a region larger than the queue
			return nil, fmt.Errorf("vring: resume: %w: head %d in flight, queue size %d", inflight.ErrCorrupt, h, q.cfg.Size)
		}
	}
	q.lastAvail, q.shadowAvail = lastAvail, lastAvail
	q.usedIdx, q.published = usedIdx, usedIdx
	q.signalValid = false
	if q.cfg.EventIdx && q.notify {
		ring.Store16(q.used, ring.AvailEventOff(q.cfg.Size), lastAvail)
	}
	ring.Fence()
	q.attach(iq)
	return heads, nil
}

// Inflight returns the tracker set by SetInflight or ResumeInflight, or nil.
func (q *Queue) Inflight() *inflight.Queue { return q.infl }

func (q *Queue) attachCheck(iq *inflight.Queue) error {
	if iq == nil {
		return errors.New("vring: nil inflight queue")
	}
	// The frontend sizes the region for the largest queue (GET_INFLIGHT_FD's
	// queue_size); the driver may have chosen a smaller one.
	if iq.Size() < q.cfg.Size {
		return fmt.Errorf("vring: inflight region has %d descriptors, queue size %d", iq.Size(), q.cfg.Size)
	}
	return nil
}

func (q *Queue) attach(iq *inflight.Queue) {
	q.infl = iq
	if len(q.pend) != q.cfg.Size {
		q.pend = make([]uint16, q.cfg.Size)
	}
}
