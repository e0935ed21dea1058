package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/crashpoint"
	"vfsd/engine/fuse"
	"vfsd/engine/metrics"
	"vfsd/engine/vhostuser"
	"vfsd/vring"
	"vfsd/vring/mem"
)

// hiprioQueue is virtio-fs's high-priority queue (FORGET, BATCH_FORGET,
// INTERRUPT); request queues follow it.
const hiprioQueue = 0

// pollMillis is the epoll timeout of a queue whose frontend asked for
// polling (SET_VRING_KICK with VHOST_USER_VRING_NOFD_MASK): no kick eventfd.
const pollMillis = 1

// completion is a blocking request's answer, handed back to the queue thread.
type completion struct {
	head    uint16
	written uint32
	epoch   uint64
}

// queue is one running virtqueue. Fields without an annotation belong to the
// queue thread.
type queue struct {
	d   *Dataplane
	idx int
	vq  *vring.Queue

	kick, ctl, done, epfd int // kick is borrowed; ctl, done and epfd are owned
	exited                chan struct{}
	lastAvail             uint16 // valid once exited is closed
	exitErr               error  // valid once exited is closed

	m *metrics.Queue // nil: no metrics

	poller poller // adaptive polling when the ring runs dry (poll.go)

	// blocking counts the queue's requests on the pool (pendingCur +
	// pendingOld), for StopQueue to read from the device goroutine.
	blocking atomic.Int32

	notifyMu sync.Mutex
	call     int // +checklocks:notifyMu
	errFD    int // +checklocks:notifyMu

	mu      sync.Mutex
	comps   []completion // +checklocks:mu: finished blocking requests
	stopReq bool         // +checklocks:mu
	memReq  *mem.Table   // +checklocks:mu
	memAck  chan error   // +checklocks:mu

	// Queue thread state.
	spare      []completion
	chain      vring.Chain
	req        fuse.Request
	rd         reads // READs waiting for the end of the batch (reads.go)
	events     [3]unix.EpollEvent
	evbuf      [8]byte
	stopping   bool
	broken     bool
	pushed     int    // used elements pushed since the last Publish
	epoch      uint64 // bumped by every memory table switch
	pendingCur int    // blocking requests of the current epoch in flight
	pendingOld int    // blocking requests of older epochs in flight
	memWait    chan error
	memErr     error
	resubmit   []uint16 // heads in flight when the previous backend died, in pop order
	resumed    bool     // the queue resumed from an inflight region: notify once after resubmitting
	popping    bool     // inside Pop: inflight stores there are not publish stores
	yield      yielder  // see sched.go
}

func newQueue(d *Dataplane, i int, c vhostuser.QueueConfig) (q *queue, err error) {
	if c.Mem == nil {
		return nil, fmt.Errorf("dataplane: queue %d: no guest memory", i)
	}
	// The used index the driver last saw is the one in guest RAM (the
	// previous backend may have completed descriptors we never saw popped).
	b, err := c.Mem.Slice(c.Used+2, 2)
	if err != nil {
		return nil, fmt.Errorf("dataplane: queue %d: used ring at %#x: %w", i, c.Used, err)
	}
	usedIdx := binary.LittleEndian.Uint16(b)
	lastAvail := c.LastAvail
	switch {
	case c.Resume:
		// ResumeInflight below finds the position; the vring base the
		// frontend gave at ring start is stale.
	case c.BaseFromUsed:
		lastAvail = usedIdx
	case usedIdx != c.LastAvail:
		d.log.Warn("used index differs from the vring base: requests in flight at the previous stop are lost",
			"queue", i, "used_idx", usedIdx, "base", c.LastAvail)
	}
	vq, err := vring.New(c.Mem, vring.Config{
		Size: c.Size, Desc: c.Desc, Avail: c.Avail, Used: c.Used,
		EventIdx: c.EventIdx, MaxChain: d.o.MaxChain,
	}, lastAvail, usedIdx)
	if err != nil {
		return nil, fmt.Errorf("dataplane: queue %d: %w", i, err)
	}
	nq := &queue{d: d, idx: i, vq: vq, kick: c.Kick, call: c.Call, errFD: c.Err,
		ctl: -1, done: -1, epfd: -1, exited: make(chan struct{}), m: d.o.Metrics.Queue(i),
		poller: poller{max: d.pollMax()}}
	if i == hiprioQueue {
		// Nobody waits for a FORGET's completion (the guest frees the
		// buffers later, or never looks): polling for the next one buys no
		// latency and takes a CPU from the threads that serve requests.
		// On 2 cores it lifts CREATE+RELEASE+UNLINK+FORGET at depth 1
		// by 15-30% and cuts its CPU per operation by 30%.
		nq.poller.max = 0
	}
	q = nq
	defer func() {
		if err != nil {
			nq.release() // q is nil here: the error returns set it
		}
	}()
	if q.ctl, err = newEventfd(); err != nil {
		return nil, fmt.Errorf("dataplane: queue %d: eventfd: %w", i, err)
	}
	if q.done, err = newEventfd(); err != nil {
		return nil, fmt.Errorf("dataplane: queue %d: eventfd: %w", i, err)
	}
	if q.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("dataplane: queue %d: epoll: %w", i, err)
	}
	for _, fd := range [...]int{q.kick, q.ctl, q.done} {
		if fd < 0 {
			continue
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if fd == q.kick {
			// Edge-triggered, and never read: every eventfd write wakes
			// an edge-triggered waiter again, so the counter need not go
			// back to 0, and a wake-up costs one syscall (epoll_wait)
			// instead of two. A counter already non-zero when the fd is
			// added (kicks before a restart) reports one edge at once.
			// The counter saturates after 2^64-2 kicks.
			ev.Events |= unix.EPOLLET
		}
		if err = unix.EpollCtl(q.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("dataplane: queue %d: epoll add fd %d: %w", i, fd, err)
		}
	}
	q.req.Queue = i
	if c.Inflight != nil {
		if err = q.track(c); err != nil {
			return nil, err
		}
	}
	return q, nil
}

// track attaches the inflight tracker: resuming from what a previous backend
// left (the heads to resubmit are kept for the queue thread), or afresh.
// Runs before the queue thread starts.
func (q *queue) track(c vhostuser.QueueConfig) error {
	if c.Resume {
		heads, err := q.vq.ResumeInflight(c.Inflight)
		if err != nil {
			return fmt.Errorf("dataplane: queue %d: resume from the inflight region: %w", q.idx, err)
		}
		q.resubmit, q.resumed = heads, true
		q.d.log.Info("queue resumed from the inflight region", "queue", q.idx,
			"resubmit", len(heads), "last_avail", q.vq.LastAvail(), "used_idx", q.vq.UsedIdx())
	} else if err := q.vq.SetInflight(c.Inflight); err != nil {
		return fmt.Errorf("dataplane: queue %d: inflight tracking: %w", q.idx, err)
	}
	if crashpoint.Enabled() {
		c.Inflight.SetCrashHook(q.crashHook)
	}
	if c.Tracked != nil {
		c.Tracked()
	}
	return nil
}

// crashHook runs after every store to the inflight region (and every
// used-ring store vring reports) when crash points are configured: the
// stores of pushing and publishing are the mid-publish point.
func (q *queue) crashHook() {
	if !q.popping {
		crashpoint.Hit(crashpoint.MidPublish)
	}
}

// release closes the queue's own fds. Called after the thread exited (or
// never started). Taking mu first waits out a pool goroutine still inside
// complete, which signals done under mu.
func (q *queue) release() {
	q.mu.Lock()
	for _, fd := range [...]*int{&q.ctl, &q.done, &q.epfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	q.mu.Unlock()
}

// complete hands a finished blocking request to the queue thread. Called on
// pool goroutines.
func (q *queue) complete(c completion) {
	q.mu.Lock()
	q.comps = append(q.comps, c)
	signal(q.done) // under mu: release waits for it before closing done
	q.mu.Unlock()
}

// run is the queue thread.
func (q *queue) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(q.exited)
	defer queueExited()
	q.initReads()
	defer q.closeReads()
	if q.resumed {
		q.resume()
	}
	work := true // serve whatever is already available
	for {
		if q.control() {
			break
		}
		q.reap()
		if q.stopping && q.pendingCur+q.pendingOld == 0 {
			break
		}
		active := !q.stopping && !q.broken
		if work && active {
			work = q.drain()
		}
		work = work && active
		q.publish()
		timeout := -1
		switch {
		case work:
			timeout = 0
		case q.kick < 0 && active:
			timeout = pollMillis
		}
		if timeout != 0 && q.d.idle != nil {
			// Every queue, the hiprio one too: after a guest's last FORGET
			// nothing else may come to send the removes it queued (the
			// store would keep a deleted file's space allocated).
			if wake := q.d.idle.Idle(); wake > 0 {
				ms := int((wake + time.Millisecond - 1) / time.Millisecond)
				if timeout < 0 || ms < timeout {
					timeout = ms
				}
			}
		}
		q.yield.maybe()
		n, err := q.wait(timeout)
		if err != nil {
			q.exitErr = err
			q.fail(err)
			q.waitPending()
			break
		}
		if q.kick < 0 {
			work = true
		}
		for _, ev := range q.events[:n] {
			fd := int(ev.Fd)
			if fd == q.kick {
				work = true
				q.poller.woke()
				continue // edge-triggered, see newQueue
			}
			drainEventfd(fd, q.evbuf[:])
		}
	}
	q.publish()
	q.lastAvail = q.vq.LastAvail()
}

// resume serves again, in the order they were first popped, the chains the
// previous backend had popped and not answered, before anything new is
// popped; then it publishes and notifies the driver once, whatever Publish
// says: the previous backend may have died between publishing and notifying.
func (q *queue) resume() {
	for _, h := range q.resubmit {
		crashpoint.Hit(crashpoint.MidResume)
		if q.broken {
			break
		}
		if err := q.vq.Walk(h, &q.chain); err != nil {
			if errors.Is(err, vring.ErrBadChain) {
				q.d.log.Debug("malformed descriptor chain on resubmission", "queue", q.idx, "head", h, "err", err)
				q.push(h, 0)
				continue
			}
			q.fail(err)
			break
		}
		q.serve(true)
	}
	q.resubmit = nil
	q.publish()
	crashpoint.Hit(crashpoint.BeforeNotify)
	q.notifyMu.Lock()
	if q.call >= 0 {
		signal(q.call)
	}
	q.notifyMu.Unlock()
}

func (q *queue) wait(timeout int) (int, error) {
	for {
		n, err := unix.EpollWait(q.epfd, q.events[:], timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("dataplane: queue %d: epoll_wait: %w", q.idx, err)
		}
		return n, nil
	}
}

// waitPending blocks until every blocking request of the queue completed
// (used when the queue thread cannot poll any more).
func (q *queue) waitPending() {
	for q.pendingCur+q.pendingOld > 0 {
		var fds [1]unix.PollFd
		fds[0] = unix.PollFd{Fd: int32(q.done), Events: unix.POLLIN}
		unix.Poll(fds[:], -1)
		drainEventfd(q.done, q.evbuf[:])
		q.reap()
		q.control()
	}
	q.publish()
}

// control applies requests from the device goroutine and reports whether the
// thread must exit (stop requested and nothing in flight).
func (q *queue) control() bool {
	q.mu.Lock()
	stop, t, ack := q.stopReq, q.memReq, q.memAck
	q.memReq, q.memAck = nil, nil
	q.mu.Unlock()
	if t != nil {
		var err error
		if !q.broken {
			if err = q.vq.SetMem(t); err != nil {
				q.fail(err)
			}
		}
		q.pendingOld += q.pendingCur
		q.pendingCur = 0
		q.epoch++
		q.memWait, q.memErr = ack, err
		q.ackMem()
	}
	if stop {
		q.stopping = true
	}
	return q.stopping && q.pendingCur+q.pendingOld == 0
}

// ackMem answers a pending SetMem once no old-epoch request is in flight.
func (q *queue) ackMem() {
	if q.memWait != nil && q.pendingOld == 0 {
		q.memWait <- q.memErr
		q.memWait, q.memErr = nil, nil
	}
}

// reap pushes the blocking requests that completed.
func (q *queue) reap() {
	q.mu.Lock()
	list := q.comps
	q.comps = q.spare[:0]
	q.mu.Unlock()
	for _, c := range list {
		if c.epoch == q.epoch {
			q.pendingCur--
		} else {
			q.pendingOld--
		}
		q.blocking.Add(-1)
		q.push(c.head, c.written)
	}
	q.spare = list[:0]
	q.ackMem()
}

func (q *queue) push(head uint16, written uint32) {
	if q.broken {
		return
	}
	q.vq.Push(head, written)
	q.pushed++
}

// publish makes the pushed used elements visible and notifies the driver
// once if it asked for it.
func (q *queue) publish() {
	q.flushReads()
	if q.pushed == 0 || q.broken {
		return
	}
	q.pushed = 0
	if q.d.flush != nil {
		q.d.flush.Flush() // what the replies rely on reaches the fd store first
	}
	crashpoint.Hit(crashpoint.MidPublish)
	kick := q.vq.Publish()
	crashpoint.Hit(crashpoint.AfterPublish)
	if kick {
		crashpoint.Hit(crashpoint.BeforeNotify)
		q.notifyMu.Lock()
		if q.call >= 0 {
			signal(q.call)
		}
		q.notifyMu.Unlock()
	}
}

// Early publishing. A batch is published when it ends, with one
// notification if the driver asked for one; a long batch is also published
// on the way, once it holds earlyMin answers and has run earlyAfter since it
// began or was last published. Without it a driver with 32 requests in
// flight got nothing back until all 32 were done and only then refilled the
// ring, while the queue thread ran dry and polled: the two alternated
// instead of overlapping. earlyAfter keeps the extra notification (a
// wake-up of the driver, about 13 µs of the queue thread's time on the
// development VM) a small share of the batch's time, and earlyMin keeps
// short batches and lone large requests at one notification: with
// publishing after every 16 answers regardless of time, GETATTR at depth
// 32 fell 27%; with publishing every 100 µs regardless of count,
// READDIRPLUS at depth 32 fell 40% (its every answer notified, and the
// driver's FORGETs then came between the queue's lookups).
//
// tools/loadgen at depth 32, vfsd --no-supervisor, interleaved runs: WRITE
// 4 KiB 80.4k -> 99.0k ops/s (geometric mean of 8 pairs; CPU per operation
// 10.95 -> 9.02 µs), LOOKUP 109k -> 125k, READ 4 KiB 184k -> 198k (3
// pairs); GETATTR, READ/WRITE 128 KiB and 1 MiB, CREATE and READDIRPLUS
// within the runs' noise. A batch shorter than earlyMin is as before.
const (
	earlyMin   = 16
	earlyAfter = 100 * time.Microsecond
)

// publishEarly publishes the batch so far when it is long enough (see
// earlyMin); since is when the batch began or was last published.
func (q *queue) publishEarly(since *time.Time) {
	if q.pushed+q.rd.n < earlyMin {
		return
	}
	if now := time.Now(); now.Sub(*since) >= earlyAfter {
		q.publish()
		*since = now
	}
}

// fail marks the ring broken: nothing more is popped or pushed.
func (q *queue) fail(err error) {
	if q.broken {
		return
	}
	q.broken = true
	q.d.log.Error("virtqueue broken, processing stopped", "queue", q.idx, "err", err)
	q.notifyMu.Lock()
	if q.errFD >= 0 {
		signal(q.errFD)
	}
	q.notifyMu.Unlock()
}

// drain serves available chains until the ring is empty (returns false, with
// notifications enabled) or the batch budget is spent (returns true, with
// notifications still disabled: the caller comes back without sleeping).
func (q *queue) drain() bool {
	budget := q.vq.Size()
	defer func(size int) {
		if q.m != nil && budget < size {
			q.m.Batch(size - budget)
		}
	}(budget)
	for {
		q.vq.DisableNotify()
		since := time.Now()
		for budget > 0 {
			q.popping = true
			ok, err := q.vq.Pop(&q.chain)
			q.popping = false
			if err != nil {
				if errors.Is(err, vring.ErrBadChain) {
					q.d.log.Debug("malformed descriptor chain", "queue", q.idx, "head", q.chain.Head, "err", err)
					q.push(q.chain.Head, 0)
					budget--
					continue
				}
				q.fail(err)
				return false
			}
			if !ok {
				break
			}
			budget--
			crashpoint.Hit(crashpoint.AfterPop)
			q.serve(false)
			q.publishEarly(&since)
		}
		q.publish()
		if budget == 0 {
			return true
		}
		// Work found by polling comes with notifications still off (the
		// driver did not kick); EnableNotify re-checks the ring after
		// turning them on.
		if !q.poller.poll(q.vq.HasAvail) && !q.vq.EnableNotify() {
			return false // sleep; run calls woke on the kick
		}
		q.poller.woke()
		q.yield.maybe() // run yields on the ways out
	}
}

// serve answers the chain just popped (resumed: re-read after a restart).
func (q *queue) serve(resumed bool) {
	c, req, rep := &q.chain, &q.req, q.rep()
	req.Head, req.Resumed = c.Head, resumed
	if err := req.Decode(c.Readable); err != nil {
		if err == fuse.ErrShortHeader {
			q.push(c.Head, 0)
			return
		}
		rep.Reset(c.Writable, req.Unique)
		rep.Error(unix.EINVAL)
		q.push(c.Head, rep.Written())
		return
	}
	req.Queue = q.idx
	crashpoint.Hit(crashpoint.AfterDecode)
	var start time.Time
	if q.m != nil {
		q.m.Inflight(1)
		start = time.Now()
	}
	if fuse.Blocking(req.Opcode) {
		q.submit(start)
		return
	}
	rep.Reset(c.Writable, req.Unique)
	q.d.handle(req, rep, c.Writable)
	if rep.Deferred() {
		q.deferred(c.Head, start)
		return
	}
	q.record(req.Opcode, c.Writable, rep.Written(), start)
	q.push(c.Head, rep.Written())
}

// record counts an answered request in the queue's metrics (any
// goroutine). Whether it failed is read back from the out header the reply
// wrote into guest RAM: a guest that rewrites it only skews its own
// figures.
func (q *queue) record(op uint32, out [][]byte, written uint32, start time.Time) {
	if q.m == nil {
		return
	}
	failed := false
	if written >= fuse.OutHeaderSize && len(out) > 0 && len(out[0]) >= 8 {
		failed = binary.LittleEndian.Uint32(out[0][4:8]) != 0
	}
	q.m.Request(op, failed, time.Since(start))
	q.m.Inflight(-1)
}

// submit hands the current request to the blocking pool.
func (q *queue) submit(start time.Time) {
	j := jobs.Get().(*job)
	j.q, j.head, j.epoch, j.start = q, q.chain.Head, q.epoch, start
	j.req = q.req.Clone()
	j.out = append(j.out[:0], q.chain.Writable...)
	q.pendingCur++
	q.blocking.Add(1)
	q.d.pool.submit(j)
}
