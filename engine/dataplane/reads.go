package dataplane

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/uring"
)

// READs gathered over a batch and read with one io_uring_enter (engine/uring
// says why). A READ served on the queue thread does not call preadv: its
// Reply (in one of reads.slots) keeps the fd, offset and iovecs and waits; when
// the batch is published (publish calls flushReads first), or reads.slots are
// all taken, the waiting reads go to the ring together and each is answered and
// pushed. A batch with a single READ reads it with preadv, as before: depth 1
// pays nothing for this.
//
// Invariant: no READ waits outside drain and resume. publish, which both end
// with, flushes them; so a memory-table switch, a stop or a sleep never finds
// one, and every pinned handle is unpinned before the thread waits.
//
// Order: requests in one batch were all outstanding together, so the driver
// cannot rely on their order; a WRITE served after a READ in the same batch
// may land first. The handle a READ names stays pinned until it is read, so
// a RELEASE in the same batch cannot close (and let another file reuse) its
// fd.

// maxDeferredReads bounds the READs one ring submission holds.
const maxDeferredReads = 64

// readSlot is a chain's Reply and, while its READ waits, what pushing and
// recording it need.
type readSlot struct {
	rep   fuse.Reply
	head  uint16
	start time.Time
}

type reads struct {
	ring  *uring.Ring // nil: READs are read at once
	slots []readSlot  // slots[n].rep answers the chain being served
	n     int
}

// initReads sets up the queue's ring. Runs on the queue thread (the ring's
// single issuer). Without a ring (old kernel, io_uring disabled or refused,
// the hiprio queue, --no-io-uring) reads.slots has one slot and READs are
// read at once.
func (q *queue) initReads() {
	q.rd.slots = make([]readSlot, 1)
	if q.idx == hiprioQueue || q.d.o.NoUring {
		return
	}
	r, err := uring.New(maxDeferredReads)
	if err != nil {
		lvl := q.d.log.Warn
		if errors.Is(err, uring.ErrUnavailable) {
			lvl = q.d.log.Info
		}
		lvl("READs of a batch are read one by one (no io_uring)", "queue", q.idx, "err", err)
		return
	}
	q.rd.ring = r
	q.rd.slots = make([]readSlot, r.Entries())
	for i := range q.rd.slots {
		q.rd.slots[i].rep.SetBatcher(q)
	}
}

// closeReads releases the ring (queue thread, nothing waiting).
func (q *queue) closeReads() {
	if q.rd.ring != nil {
		q.rd.ring.Close()
		q.rd.ring = nil
	}
}

// rep is the Reply for the chain being served.
func (q *queue) rep() *fuse.Reply { return &q.rd.slots[q.rd.n].rep }

// Defer implements fuse.Batcher: every READ a queue thread serves waits for
// the end of the batch (the Reply is q.rep()).
func (q *queue) Defer(*fuse.Reply) bool { return q.rd.ring != nil }

// deferred records the chain whose READ waits in q.rep() and moves to the
// next Reply, flushing when none is left.
func (q *queue) deferred(head uint16, start time.Time) {
	sl := &q.rd.slots[q.rd.n]
	sl.head, sl.start = head, start
	q.rd.n++
	if q.rd.n == len(q.rd.slots) {
		q.flushReads()
	}
}

// flushReads reads every waiting READ, answers and pushes it.
func (q *queue) flushReads() {
	rd := &q.rd
	switch rd.n {
	case 0:
		return
	case 1:
		rd.slots[0].rep.FinishRead(0, 0)
	default:
		q.ringReads()
	}
	for i := range rd.n {
		sl := &rd.slots[i]
		q.record(fuse.OpRead, sl.rep.Out(), sl.rep.Written(), sl.start)
		q.push(sl.head, sl.rep.Written())
	}
	rd.n = 0
}

// ringReads submits the READs of rd.slots[:n] in one io_uring_enter and finishes each.
func (q *queue) ringReads() {
	rd := &q.rd
	for i := range rd.n {
		rep := &rd.slots[i].rep
		fd, off, iov := rep.ReadTarget()
		if !rd.ring.ReadV(fd, iov, off, uint64(i)) {
			rep.FinishRead(0, 0) // cannot happen (n <= Entries, nothing in flight); never leave one waiting
		}
	}
	q.m.RingSubmit(rd.n)
	err := rd.ring.Wait()
	for {
		i, res, ok := rd.ring.Next()
		if !ok {
			break
		}
		rep := &rd.slots[i].rep
		switch {
		case res >= 0:
			rep.FinishRead(int(res), 0)
		case res == -int32(unix.EINTR) || res == -int32(unix.EAGAIN):
			rep.FinishRead(0, 0) // read it again, synchronously
		default:
			rep.FinishRead(0, unix.Errno(-res))
		}
	}
	if err != nil {
		// The kernel took none or part of the batch. Reads it took and
		// completed are answered above; the ring is dropped (with it any
		// read it never saw) and the rest are read here, and from now on.
		q.d.log.Error("io_uring submission failed: READs are read one by one from now on", "queue", q.idx, "err", err)
		rd.ring.Close()
		rd.ring = nil
		for i := range rd.n {
			if rep := &rd.slots[i].rep; rep.Deferred() {
				rep.FinishRead(0, 0)
			}
		}
	}
}
