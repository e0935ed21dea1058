package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/metrics"
	"vfsd/engine/vhostuser"
	"vfsd/vring/mem"
)

// Options configures a Dataplane.
type Options struct {
	Handler  fuse.Handler
	PoolSize int          // goroutines for Blocking requests; 0 means DefaultPoolSize
	MaxChain int          // cap on descriptors per chain; 0 means the queue size
	Logger   *slog.Logger // nil means slog.Default()
	// Metrics, when not nil, receives per-queue figures (engine/metrics):
	// requests by opcode, errors, latency, batch sizes, inflight.
	Metrics *metrics.Registry
	// PollMax is the largest adaptive polling window of a queue that ran
	// dry (poll.go): 0 means DefaultPollMax, negative turns polling off.
	PollMax time.Duration
	// NoUring makes every READ a preadv of its own, not one of a batch
	// submitted with io_uring (reads.go).
	NoUring bool
}

// Canceller is implemented by handlers whose blocking requests can wait
// without bound (a SETLKW on a lock another host process holds):
// CancelWaits makes every such pending wait answer now (EINTR). Safe from
// any goroutine, any number of times; later waits are not prevented.
type Canceller interface{ CancelWaits() }

// Flusher is implemented by handlers that defer work a reply depends on
// (the passthrough FS queues its fd-store messages): Flush completes it.
// A queue calls it before publishing used elements, from the queue thread.
type Flusher interface{ Flush() }

// Idler is implemented by handlers with deferred work that may wait while
// requests flow but not while the queue sleeps: a queue calls Idle before
// it blocks without a timeout of zero, from the queue thread, and then
// sleeps at most the duration Idle returns (0: no limit) before it calls
// Idle again.
type Idler interface{ Idle() time.Duration }

// Stopping a queue whose blocking requests have not all completed within
// stopGrace cancels the handler's waits (Canceller), again every
// cancelEvery until they have: a request still in the pool's FIFO at the
// first cancel may start waiting after it.
const (
	stopGrace   = 20 * time.Millisecond
	cancelEvery = 50 * time.Millisecond
)

// Dataplane runs the queues of one device. Its vhostuser.Backend methods are
// called by the device's goroutine; Close by whoever owns the Dataplane.
type Dataplane struct {
	h     fuse.Handler
	flush Flusher // h's, or nil
	idle  Idler   // h's, or nil
	log   *slog.Logger
	o     Options
	pool  *pool

	mu     sync.Mutex
	queues map[int]*queue // +checklocks:mu
	closed bool           // +checklocks:mu
}

var _ vhostuser.Backend = (*Dataplane)(nil)

// New returns a Dataplane serving requests with o.Handler.
func New(o Options) (*Dataplane, error) {
	if o.Handler == nil {
		return nil, errors.New("dataplane: no handler")
	}
	if o.PoolSize == 0 {
		o.PoolSize = DefaultPoolSize
	}
	if o.PoolSize < 1 {
		return nil, fmt.Errorf("dataplane: pool size %d", o.PoolSize)
	}
	if o.MaxChain < 0 {
		return nil, fmt.Errorf("dataplane: max chain %d", o.MaxChain)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	d := &Dataplane{h: o.Handler, log: o.Logger, o: o, queues: make(map[int]*queue)}
	d.flush, _ = o.Handler.(Flusher)
	d.idle, _ = o.Handler.(Idler)
	d.pool = newPool(o.PoolSize, d.runJob)
	return d, nil
}

// StartQueue starts a queue thread for queue i.
func (d *Dataplane) StartQueue(i int, c vhostuser.QueueConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("dataplane: closed")
	}
	if _, ok := d.queues[i]; ok {
		return fmt.Errorf("dataplane: queue %d already running", i)
	}
	q, err := newQueue(d, i, c)
	if err != nil {
		return err
	}
	d.queues[i] = q
	queueStarted()
	go q.run()
	return nil
}

// StopQueue stops queue i after its outstanding requests completed and
// returns its last avail index.
func (d *Dataplane) StopQueue(i int) (uint16, error) {
	d.mu.Lock()
	q, ok := d.queues[i]
	delete(d.queues, i)
	d.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("dataplane: queue %d not running", i)
	}
	q.mu.Lock()
	q.stopReq = true
	q.mu.Unlock()
	signal(q.ctl)
	d.awaitExit(q)
	q.release()
	return q.lastAvail, q.exitErr
}

// awaitExit waits for a stopping queue's thread to exit. The thread waits
// for the queue's blocking requests; if they take longer than stopGrace
// and the handler is a Canceller, their waits are cancelled (a SETLKW that
// would never return must not hold up a GET_VRING_BASE, a
// SET_VRING_ENABLE 0 or the shutdown). This may also end waits of other
// queues' requests: they answer EINTR, which the guest restarts or reports.
func (d *Dataplane) awaitExit(q *queue) {
	c, ok := d.h.(Canceller)
	if !ok {
		<-q.exited
		return
	}
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	for {
		select {
		case <-q.exited:
			return
		case <-t.C:
			if q.blocking.Load() == 0 {
				// Nothing on the pool: the thread is merely slow to exit.
				t.Reset(cancelEvery)
				continue
			}
			d.log.Debug("queue stop waits for blocking requests: cancelling waits", "queue", q.idx)
			c.CancelWaits()
			t.Reset(cancelEvery)
		}
	}
}

// SetMem switches every running queue to t and returns once none of them,
// nor any request they popped before, uses the previous table.
func (d *Dataplane) SetMem(t *mem.Table) error {
	type pending struct {
		q   *queue
		ack chan error
	}
	d.mu.Lock()
	waits := make([]pending, 0, len(d.queues))
	for _, q := range d.queues {
		ack := make(chan error, 1)
		q.mu.Lock()
		q.memReq, q.memAck = t, ack
		q.mu.Unlock()
		signal(q.ctl)
		waits = append(waits, pending{q, ack})
	}
	d.mu.Unlock()
	var first error
	for _, w := range waits {
		select {
		case err := <-w.ack:
			if err != nil && first == nil {
				first = err
			}
		case <-w.q.exited: // died on an epoll failure: nothing runs there
		}
	}
	return first
}

// SetCall replaces the call eventfd of running queue i.
func (d *Dataplane) SetCall(i int, fd int) error {
	q, err := d.queue(i)
	if err != nil {
		return err
	}
	q.notifyMu.Lock()
	q.call = fd
	if fd >= 0 {
		// A notification due while the queue had no (or another) call fd
		// would be lost; a spurious one is harmless to a virtio driver.
		signal(fd)
	}
	q.notifyMu.Unlock()
	return nil
}

// SetErr replaces the err eventfd of running queue i.
func (d *Dataplane) SetErr(i int, fd int) error {
	q, err := d.queue(i)
	if err != nil {
		return err
	}
	q.notifyMu.Lock()
	q.errFD = fd
	q.notifyMu.Unlock()
	return nil
}

func (d *Dataplane) queue(i int) (*queue, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q, ok := d.queues[i]
	if !ok {
		return nil, fmt.Errorf("dataplane: queue %d not running", i)
	}
	return q, nil
}

// Close stops every queue and the blocking-request pool.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	d.closed = true
	idx := make([]int, 0, len(d.queues))
	for i := range d.queues {
		idx = append(idx, i)
	}
	d.mu.Unlock()
	for _, i := range idx {
		d.StopQueue(i)
	}
	d.pool.close()
	return nil
}

// handle calls the Handler, turning a panic or a missing answer into EIO.
func (d *Dataplane) handle(req *fuse.Request, rep *fuse.Reply, out [][]byte) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("panic in FUSE handler", "opcode", req.Opcode, "unique", req.Unique,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			rep.Reset(out, req.Unique)
			rep.Error(unix.EIO)
		}
	}()
	d.h.Handle(req, rep)
	if !rep.Done() {
		d.log.Error("FUSE handler left a request unanswered", "opcode", req.Opcode, "unique", req.Unique)
		rep.Reset(out, req.Unique)
		rep.Error(unix.EIO)
	}
}

// runJob serves one blocking request on a pool goroutine.
func (d *Dataplane) runJob(j *job) {
	j.rep.Reset(j.out, j.req.Unique)
	d.handle(j.req, &j.rep, j.out)
	j.q.record(j.req.Opcode, j.out, j.rep.Written(), j.start)
	q, c := j.q, completion{head: j.head, written: j.rep.Written(), epoch: j.epoch}
	clear(j.out)
	*j = job{out: j.out[:0]}
	jobs.Put(j)
	q.complete(c)
}
