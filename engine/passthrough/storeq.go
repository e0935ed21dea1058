package passthrough

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
	"vfsd/maptable"
)

// BatchStore is an FDStore that can send several removes and stores in one
// message (*fdstore.Client, and the worker's counting wrapper, implement
// it). With it the FS queues its fd-store traffic and sends it once per
// batch of requests; without it every store and remove is one message.
type BatchStore interface {
	SendBatch(removes, names []string, fds []int) error
}

// storeQueue carries the FS's own fd-store traffic (the "fh.", "ino." and
// "lk." names). A CREATE, RELEASE, last-link UNLINK and FORGET each store or
// remove one fd; one message each cost a sendmsg in the worker and a
// wake-up, recvmsg and fstat in the supervisor, more than the request
// itself. Queued, a drained batch of requests costs one message.
//
// Invariants:
//   - Order: the store applies stores and removes in the order they were
//     queued. A remove cancels a queued store of the same name (so a store
//     followed by a remove of one name never share a message), and a
//     message applies its removes before its stores (so a remove followed
//     by a store of one name keep their order, as "lk." names need).
//   - Durability: only handle fds are queued (store); everything else is
//     durable on return (storeNow). A handle whose fd is not in the store
//     when the worker dies is re-opened from its inode by the next one
//     (getHandle, reopenHandle: the record's flags minus O_CREAT, O_EXCL,
//     O_TRUNC), so where open_by_handle_at works (lazy) queued handle
//     stores wait for a storeNow, a queued remove or the limits, at most
//     lazyMax (then the next publish or Idle sends them, and only them:
//     the younger ones keep waiting): an OPEN and its RELEASE within that
//     time cost no message at all (dropHandle cancels the store and sends no
//     remove). What re-opening cannot restore is made durable
//     first: a flock is taken only after a flush (the lock lives on the
//     handle's open file description), and an open file's inode losing its
//     last link is kept (storeNow) before the unlink. Without
//     open_by_handle_at (a user namespace), FS.Flush sends queued stores
//     before the dataplane publishes the replies naming them.
//   - A queued store holds a pin on the handle's fdRef (taken by the caller
//     under the table lock, dropped here once sent or cancelled): the fd
//     stays open, and its number unused by anything else, until then.
//   - Removes need no durability: one lost in a crash leaves an fd whose
//     record is gone, which the next worker drops (sweepOrphans). They wait
//     in the queue for the next flush, at most maxQueuedRemoves of them.
type storeQueue struct {
	out   FDStore
	batch BatchStore // nil: no queueing
	// lazy: queued stores are flushed before a publish only once the
	// oldest has waited lazyMax; else they go with the next storeNow, at
	// Idle or at the limits.
	// Only the FS's handle fds are queued, and a handle whose fd is not in
	// the store is re-opened from its inode after a crash (reopenHandle),
	// which needs open_by_handle_at: the FS sets lazy when it works.
	lazy bool

	queued atomic.Bool  // something is queued (flush's fast path)
	stores atomic.Bool  // a store is queued (Flush's fast path)
	since  atomic.Int64 // monotonic ns when the oldest queued store was queued (times[0])

	mu      sync.Mutex
	removes []string // +checklocks:mu
	names   []string // +checklocks:mu
	fds     []int    // +checklocks:mu
	refs    []*fdRef // +checklocks:mu; fds[i]'s pinned owner (nil: storeNow's, borrowed)
	times   []int64  // +checklocks:mu; when names[i] was queued (non-decreasing)
	text    int      // +checklocks:mu; Σ len(name)+1 over removes and names
}

// batchOverhead bounds what a batch datagram holds besides its names (the
// variables, "FDSTORE=1", newlines): the text is at most q.text plus it.
const batchOverhead = 64

// lazyMax bounds how long a queued handle store waits in lazy mode: the
// window in which a file deleted on the host, then a crash, costs the
// guest that open file (see the invariants).
var lazyMax = 10 * time.Millisecond // a variable for tests

// nanotime is a monotonic clock in ns.
func nanotime() int64 { return int64(time.Since(epoch)) }

var epoch = time.Now()

// maxQueuedRemoves bounds the removes waiting for a flush (the fds they
// would close stay open in the store until then).
const maxQueuedRemoves = 64

func newStoreQueue(out FDStore) *storeQueue {
	q := &storeQueue{out: out}
	if b, ok := out.(BatchStore); ok {
		q.batch = b
	}
	return q
}

// roomLocked sends the queue first if one more name (and fd) would not
// fit its message. Precondition: q.mu held.
func (q *storeQueue) roomLocked(name string, fd bool) error {
	full := q.text+len(name)+1+batchOverhead > fdstore.MaxBatchText ||
		fd && len(q.fds) >= fdstore.MaxFDsPerMessage ||
		!fd && len(q.removes) >= maxQueuedRemoves
	if full {
		return q.flushLocked()
	}
	return nil
}

// store queues r's fd under name. The caller pinned r for the queue,
// which unpins it once the fd is sent or the store cancelled.
func (q *storeQueue) store(name string, r *fdRef) error {
	if q.batch == nil {
		defer r.unpin()
		return q.out.Store(name, r.fd)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	ferr := q.appendLocked(name, r.fd, r)
	q.queued.Store(true)
	if !q.stores.Load() {
		q.since.Store(q.times[0])
		q.stores.Store(true)
	}
	return ferr
}

// storeNow stores fd under name and returns once it is durable, with
// everything queued before it. fd goes into the message as it is (it is
// sent before storeNow returns: the caller's fd, borrowed).
func (q *storeQueue) storeNow(name string, fd int) error {
	if q.batch == nil {
		return q.out.Store(name, fd)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	ferr := q.appendLocked(name, fd, nil)
	return errors.Join(ferr, q.flushLocked())
}

// appendLocked adds a store of fd (owned by r, or borrowed when r is nil)
// under name, sending the queue first if it would not fit.
// Precondition: q.mu held.
func (q *storeQueue) appendLocked(name string, fd int, r *fdRef) error {
	ferr := q.roomLocked(name, true)
	q.names = append(q.names, name)
	q.fds = append(q.fds, fd)
	q.refs = append(q.refs, r)
	q.times = append(q.times, nanotime())
	q.text += len(name) + 1
	return ferr
}

// dropHandle is the remove of a handle's "fh." name, which is stored at
// most once: when that store is still queued, the store never had the name
// and nothing is sent at all (lazy mode: an OPEN and its RELEASE within
// lazyMax). The name becomes a string only when a remove must be queued,
// so that case allocates nothing.
func (q *storeQueue) dropHandle(id uint64) error {
	var b [24]byte
	name := appendStoreName(b[:0], "fh.", id)
	if q.batch == nil {
		return q.out.Remove(string(name))
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cancelLocked(name) {
		q.queued.Store(len(q.names)+len(q.removes) > 0)
		return nil
	}
	return q.queueRemoveLocked(string(name))
}

// remove queues the removal of every fd stored under name (a queued store
// of it is cancelled, and the remove still sent: the name may be in the
// store from before).
func (q *storeQueue) remove(name string) error {
	if q.batch == nil {
		return q.out.Remove(name)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cancelLocked([]byte(name))
	return q.queueRemoveLocked(name)
}

// queueRemoveLocked queues the removal of name (owned by the queue from
// here on). Precondition: q.mu held.
func (q *storeQueue) queueRemoveLocked(name string) error {
	ferr := q.roomLocked(name, false)
	q.removes = append(q.removes, name)
	q.text += len(name) + 1
	q.queued.Store(true)
	return ferr
}

// cancelLocked drops the queued stores of name, unpinning their fdRefs,
// and reports whether there was one. Precondition: q.mu held.
func (q *storeQueue) cancelLocked(name []byte) bool {
	canceled := false
	for i := 0; i < len(q.names); i++ {
		if q.names[i] == string(name) {
			q.refs[i].unpin()
			q.names = append(q.names[:i], q.names[i+1:]...)
			q.fds = append(q.fds[:i], q.fds[i+1:]...)
			q.refs = append(q.refs[:i], q.refs[i+1:]...)
			q.times = append(q.times[:i], q.times[i+1:]...)
			q.text -= len(name) + 1
			i--
			canceled = true
		}
	}
	if len(q.names) == 0 {
		q.stores.Store(false)
	} else if canceled {
		q.since.Store(q.times[0])
	}
	return canceled
}

// flush sends everything queued.
func (q *storeQueue) flush() error {
	if q.batch == nil || !q.queued.Load() {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.flushLocked()
}

// flushStores sends everything queued if a store is queued; removes alone
// wait (for a store, maxQueuedRemoves, or idle).
func (q *storeQueue) flushStores() error {
	if q.batch == nil || !q.stores.Load() {
		return nil
	}
	if q.lazy && nanotime()-q.since.Load() < int64(lazyMax) {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.lazy {
		return q.flushDueLocked()
	}
	return q.flushLocked()
}

// idle sends queued removes (with any queued stores) and stores due
// (lazy: the oldest waited lazyMax). It returns how long until queued
// lazy stores fall due, 0 when nothing waits.
func (q *storeQueue) idle() (time.Duration, error) {
	if q.batch == nil || !q.queued.Load() {
		return 0, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.lazy {
		return 0, q.flushLocked()
	}
	err := q.flushDueLocked()
	if len(q.names) == 0 {
		return 0, err
	}
	return time.Duration(max(int64(lazyMax)-(nanotime()-q.times[0]), 1)), err
}

// flushDueLocked sends the queued removes and the stores that have waited
// lazyMax (a prefix: times is non-decreasing), in one message; younger
// stores stay queued. At depth 32 a CREATE's handle is released about a
// millisecond later: sending the whole queue whenever its oldest store
// fell due sent (and then removed) most of them.
// Precondition: q.mu held.
func (q *storeQueue) flushDueLocked() error {
	now := nanotime()
	k := 0
	for k < len(q.times) && now-q.times[k] >= int64(lazyMax) {
		k++
	}
	return q.sendLocked(k)
}

// flushLocked sends the queue as one message and empties it.
// Precondition: q.mu held.
func (q *storeQueue) flushLocked() error { return q.sendLocked(len(q.names)) }

// sendLocked sends the queued removes and the first k stores as one
// message (none when there is nothing to send) and drops them from the
// queue, unpinning the stores' fdRefs.
// Precondition: q.mu held.
func (q *storeQueue) sendLocked(k int) error {
	if len(q.removes)+k == 0 {
		if len(q.names) == 0 {
			q.queued.Store(false)
		}
		return nil
	}
	err := q.batch.SendBatch(q.removes, q.names[:k], q.fds[:k])
	if k == len(q.names) {
		q.resetLocked()
		return err
	}
	for _, r := range q.refs[:k] {
		if r != nil {
			r.unpin()
		}
	}
	for _, n := range q.removes {
		q.text -= len(n) + 1
	}
	for _, n := range q.names[:k] {
		q.text -= len(n) + 1
	}
	clear(q.removes)
	q.removes = q.removes[:0]
	n := len(q.names) - k
	copy(q.names, q.names[k:])
	copy(q.fds, q.fds[k:])
	copy(q.refs, q.refs[k:])
	copy(q.times, q.times[k:])
	clear(q.names[n:])
	clear(q.refs[n:])
	q.names, q.fds, q.refs, q.times = q.names[:n], q.fds[:n], q.refs[:n], q.times[:n]
	q.since.Store(q.times[0])
	return err
}

// resetLocked empties the queue and unpins the queued stores' fdRefs.
// Precondition: q.mu held.
func (q *storeQueue) resetLocked() {
	for _, r := range q.refs {
		if r != nil {
			r.unpin()
		}
	}
	clear(q.names)
	clear(q.removes)
	clear(q.refs)
	q.removes, q.names, q.fds, q.refs, q.times, q.text = q.removes[:0], q.names[:0], q.fds[:0], q.refs[:0], q.times[:0], 0
	q.queued.Store(false)
	q.stores.Store(false)
}

// Flush makes the fd stores queued by the requests served so far durable
// (see storeQueue); the dataplane calls it before publishing replies.
// Queued removes go along, or wait for the next store or Idle.
func (fs *FS) Flush() {
	if fs.sq == nil {
		return
	}
	if err := fs.sq.flushStores(); err != nil {
		fs.storeErrs.Add(1)
	}
}

// Idle sends queued removes (so that the store does not keep released
// files open) and the stores due; the dataplane calls it before a queue
// sleeps, and sleeps at most the time it returns (0: no limit) before
// calling it again. Lazy handle stores stay queued until lazyMax: an
// OPEN and its RELEASE with an idle queue between them send nothing.
func (fs *FS) Idle() time.Duration {
	if fs.sq == nil {
		return 0
	}
	wake, err := fs.sq.idle()
	if err != nil {
		fs.storeErrs.Add(1)
	}
	return wake
}

// flushAll sends everything queued.
func (fs *FS) flushAll() {
	if fs.sq == nil {
		return
	}
	if err := fs.sq.flush(); err != nil {
		fs.storeErrs.Add(1)
	}
}

// sweepOrphans drops the handed-back "fh." and "ino." fds whose records are
// gone (a remove lost with the previous worker). Precondition: resuming,
// maps open, before any request.
func (fs *FS) sweepOrphans() {
	rec := make([]byte, max(fs.irec, handleRecSize))
	fs.rmu.Lock()
	defer fs.rmu.Unlock()
	for name, fd := range fs.resumeFDs {
		t, id, ours := fs.recordOf(name)
		if !ours || id != 0 && t.Get(id, rec[:t.ValueSize()]) == nil {
			continue
		}
		unix.Close(fd)
		delete(fs.resumeFDs, name)
		if fs.sq != nil {
			fs.sq.remove(name)
		}
	}
}

// recordOf names the table and record a "fh." or "ino." store name stands
// for (ours); id is 0, never a record, for a name not written by fhName or
// inoName.
func (fs *FS) recordOf(name string) (t *maptable.Table, id maptable.ID, ours bool) {
	for _, k := range [...]struct {
		prefix string
		t      *maptable.Table
		canon  func(uint64) string
	}{{"fh.", fs.handles, fhName}, {"ino.", fs.inodes, inoName}} {
		if rest, ok := strings.CutPrefix(name, k.prefix); ok {
			n, err := strconv.ParseUint(rest, 16, 64)
			if err != nil || k.canon(n) != name {
				return k.t, 0, true
			}
			return k.t, maptable.ID(n), true
		}
	}
	return nil, 0, false
}

// canOpenByHandle reports whether this process can open inodes by file
// handle (not in a user namespace without CAP_DAC_READ_SEARCH over the
// host's): then a handle whose fd never reached the store can be re-opened
// after a crash, and handle stores may wait (storeQueue.lazy).
func (fs *FS) canOpenByHandle(fd int) bool {
	var fh fileHandle
	if nameToHandle(fd, &fh) != nil || fh.bytes > maxHandleSize {
		return false
	}
	nfd, err := openByHandle(fs.mountfd, &fh, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return false
	}
	unix.Close(nfd)
	return true
}
