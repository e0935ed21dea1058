package frontend

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/vring/driver"
)

// indirectArea is the guest RAM reserved per queue for indirect descriptor
// tables (16 bytes per descriptor).
const indirectArea = 256 << 10

// reapTimeoutMs bounds how long a lost call notification can delay a
// completion: the used ring is polled at least this often.
const reapTimeoutMs = 20

// Buf is one guest buffer: {guest-physical address, length}.
type Buf = [2]uint64

// Completion is the result of one submitted chain. It may be reused after
// Wait returned.
type Completion struct {
	// Written is the length the backend put in the used element.
	Written uint32
	// Err is set when the chain will never complete (ErrDisconnected) or the
	// backend misbehaved on it (written > writable bytes).
	Err error
	// Head is the descriptor head the chain was placed at.
	Head uint16

	writable uint64
	indirect uint64 // GPA of the indirect table, 0 if none
	done     chan struct{}

	q         *Queue // set by Submit
	completed bool   // off the used ring, done sent or about to be; guarded by q.mu
	following bool   // in q.followers; guarded by q.mu
}

// NewCompletion returns a Completion ready for Submit.
func NewCompletion() *Completion { return &Completion{done: make(chan struct{}, 1)} }

// Wait blocks until the chain completed or ctx is done. After a ctx error the
// chain is still outstanding: the Completion (and its buffers) must not be
// reused until Done.
//
// Waiting goroutines reap the used ring themselves (leader and followers): a
// Wait that finds nobody reaping leads, sleeping on the call eventfd,
// draining the used ring and completing every chain it finds; a Wait that
// finds a leader follows, sleeping on its own Completion. When the leading
// Wait's chain is done it hands the lead to the queue's reaper goroutine if
// others follow, or leaves none. At depth 1 a reply thus wakes the thread
// that waits for it, not a reaper thread that then wakes the waiter through
// the Go scheduler: on the 2-core development machine that hand-off doubled
// the round trip for either backend. With many chains in flight the reaper
// leads, as a dedicated completion thread serves those best.
func (c *Completion) Wait(ctx context.Context) error {
	q := c.q
	if q == nil {
		return errors.New("frontend: Wait on a Completion never submitted")
	}
	q.mu.Lock()
	switch {
	case c.completed:
		q.mu.Unlock()
		<-c.done
		return c.Err
	case !q.leading:
		q.leading = true
		q.mu.Unlock()
		return q.lead(ctx, c)
	}
	c.following = true
	q.followers = append(q.followers, c)
	q.mu.Unlock()
	select {
	case <-c.done:
		return c.Err
	case <-ctx.Done():
	}
	q.mu.Lock()
	if c.following {
		q.unfollowLocked(c)
		q.mu.Unlock()
		return ctx.Err()
	}
	q.mu.Unlock()
	<-c.done // completed meanwhile: done is sent right after
	return c.Err
}

// Done returns a channel that receives once when the chain completes. A
// chain nobody Waits for is completed by the queue's reaper.
func (c *Completion) Done() <-chan struct{} { return c.done }

// Stats are counters of one queue.
type Stats struct {
	Submitted, Completed, Kicks, Calls, Polls uint64
}

// Queue is the driver side of one virtqueue plus its eventfds. Submit may be
// called from any goroutine.
type Queue struct {
	Index int
	fe    *Frontend
	size  int
	kick  int // eventfd: we write, backend reads
	call  int // eventfd: backend writes, we read
	errfd int // eventfd: backend writes on a ring error
	stop  int // eventfd: stops the reaper
	epfd  int

	ringGPA, ringLen uint64
	arena            *driver.Arena // indirect tables

	mu      sync.Mutex
	space   *sync.Cond
	ring    *driver.Ring  // +checklocks:mu
	waiting []*Completion // by head; +checklocks:mu
	failed  error         // +checklocks:mu

	leading    bool          // a Wait or the reaper reaps; +checklocks:mu
	followers  []*Completion // Waits sleeping on their own chain; +checklocks:mu
	noLeader   *sync.Cond    // signalled when leading goes false
	reaperLead chan struct{} // hands the lead to the reaper
	quit       chan struct{} // closed to stop the reaper

	reaper    sync.WaitGroup
	errEvents atomic.Uint64
	stats     struct{ submitted, completed, kicks, calls, polls atomic.Uint64 }
}

func newQueue(f *Frontend, index, size int, eventIdx bool) (q *Queue, err error) {
	q = &Queue{Index: index, fe: f, size: size, kick: -1, call: -1, errfd: -1, stop: -1, epfd: -1}
	q.space = sync.NewCond(&q.mu)
	q.noLeader = sync.NewCond(&q.mu)
	q.reaperLead, q.quit = make(chan struct{}, 1), make(chan struct{})
	defer func() {
		if err != nil {
			q.close()
		}
	}()
	for _, p := range []*int{&q.kick, &q.call, &q.errfd, &q.stop} {
		if *p, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			return nil, fmt.Errorf("eventfd: %w", err)
		}
	}
	q.ringLen = uint64(driver.Layout(size)) + indirectArea
	if q.ringGPA, err = f.Mem.Alloc(q.ringLen, true); err != nil {
		return nil, fmt.Errorf("queue %d rings: %w", index, err)
	}
	mem, err := f.Mem.Bytes(q.ringGPA, q.ringLen)
	if err != nil {
		return nil, err
	}
	if q.ring, err = driver.New(mem, q.ringGPA, size, eventIdx); err != nil {
		return nil, err
	}
	if q.arena, err = driver.NewArena(q.ring.End(), q.ringGPA+q.ringLen-q.ring.End(), 16); err != nil {
		return nil, err
	}
	q.waiting = make([]*Completion, size)
	if q.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	for _, fd := range []int{q.call, q.errfd, q.stop} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(q.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	return q, nil
}

// Size returns the number of ring entries.
func (q *Queue) Size() int { return q.size }

// KickFD, CallFD and ErrFD return the queue's eventfds (owned by the queue).
func (q *Queue) KickFD() int { return q.kick }
func (q *Queue) CallFD() int { return q.call }
func (q *Queue) ErrFD() int  { return q.errfd }

// ErrEvents counts writes the backend made to the error eventfd.
func (q *Queue) ErrEvents() uint64 { return q.errEvents.Load() }

// Stats returns the queue's counters.
func (q *Queue) Stats() Stats {
	return Stats{
		Submitted: q.stats.submitted.Load(), Completed: q.stats.completed.Load(),
		Kicks: q.stats.kicks.Load(), Calls: q.stats.calls.Load(), Polls: q.stats.polls.Load(),
	}
}

// Err returns the ring's record of backend misbehaviour (a used element that
// names a head not outstanding, an impossible used.idx), or the reason the
// queue failed.
func (q *Queue) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.ring.Err(); err != nil {
		return err
	}
	return q.failed
}

// Submit adds a chain of readable then writable buffers and kicks the backend
// if the ring asks for it. It blocks while the ring lacks free descriptors.
// Wait (or Done) then gives the result.
func (q *Queue) Submit(readable, writable []Buf, c *Completion) error {
	if c.done == nil {
		c.done = make(chan struct{}, 1)
	}
	var wlen uint64
	for _, b := range writable {
		wlen += b[1]
	}
	c.writable, c.Err, c.Written, c.indirect = wlen, nil, 0, 0
	n := len(readable) + len(writable)
	indirect := q.fe.opts.Indirect
	if indirect {
		gpa, err := q.arena.Alloc(uint64(n) * 16)
		if err != nil {
			return fmt.Errorf("queue %d indirect table: %w", q.Index, err)
		}
		c.indirect = gpa
		n = 1
	}
	if n > q.size {
		return fmt.Errorf("frontend: chain of %d descriptors on a queue of %d", n, q.size)
	}
	q.mu.Lock()
	for q.failed == nil && q.ring.NumFree() < n {
		q.space.Wait()
	}
	if q.failed != nil {
		err := q.failed
		q.mu.Unlock()
		q.freeIndirect(c)
		return err
	}
	var head uint16
	var err error
	if indirect {
		head, err = q.ring.AddIndirect(c.indirect, readable, writable)
	} else {
		head, err = q.ring.Add(readable, writable)
	}
	if err != nil {
		q.mu.Unlock()
		q.freeIndirect(c)
		return fmt.Errorf("queue %d: %w", q.Index, err)
	}
	c.Head, c.q, c.completed, c.following = head, q, false, false
	q.waiting[head] = c
	kick := q.ring.NeedKick()
	q.mu.Unlock()
	q.stats.submitted.Add(1)
	if kick {
		q.Kick()
	}
	return nil
}

func (q *Queue) freeIndirect(c *Completion) {
	if c.indirect != 0 {
		q.arena.Free(c.indirect)
		c.indirect = 0
	}
}

// Kick writes the kick eventfd.
func (q *Queue) Kick() {
	q.stats.kicks.Add(1)
	unix.Write(q.kick, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// Do submits a chain and waits for it.
func (q *Queue) Do(ctx context.Context, readable, writable []Buf) (uint32, error) {
	c := NewCompletion()
	if err := q.Submit(readable, writable, c); err != nil {
		return 0, err
	}
	err := c.Wait(ctx)
	return c.Written, err
}

// WithRing runs fn with the queue's driver ring locked, for hostile tests
// that write raw descriptors or indices. Chains published by fn outside Add
// are not tracked: their used elements make the ring fail (see Err).
func (q *Queue) WithRing(fn func(r *driver.Ring)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	fn(q.ring)
}

// Outstanding returns the number of submitted, uncompleted chains.
func (q *Queue) Outstanding() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, c := range q.waiting {
		if c != nil {
			n++
		}
	}
	return n
}

// lead reaps until c completes or ctx ends, then passes the lead on; with c
// nil (the reaper), until no Wait follows. The caller was made the leader.
func (q *Queue) lead(ctx context.Context, c *Completion) error {
	var evs [4]unix.EpollEvent
	var buf [8]byte
	var done []*Completion
	for {
		done = q.reap(done)
		q.mu.Lock()
		if c == nil && len(q.followers) == 0 {
			q.dropLeadLocked()
			q.mu.Unlock()
			return nil
		}
		if c != nil && (c.completed || ctx.Err() != nil) {
			q.passLeadLocked()
			completed := c.completed
			q.mu.Unlock()
			if completed {
				<-c.done
				return c.Err
			}
			return ctx.Err()
		}
		q.mu.Unlock()
		if c != nil && q.pollUsed() {
			continue
		}
		n, err := unix.EpollWait(q.epfd, evs[:], reapTimeoutMs)
		if err != nil && err != unix.EINTR {
			q.fail(fmt.Errorf("queue %d: epoll_wait: %w", q.Index, err))
		}
		for _, ev := range evs[:max(n, 0)] {
			switch int(ev.Fd) {
			case q.call:
				if n, _ := unix.Read(q.call, buf[:]); n == 8 {
					q.stats.calls.Add(1)
				}
			case q.errfd:
				q.readErrFD()
			}
			// q.stop: close has failed every chain.
		}
	}
}

// pollUsed watches the used ring for Options.PollCompletions and reports
// whether an element showed up. Only a lone request polls: with others in
// flight the spinning thread would hold a P their goroutines need.
func (q *Queue) pollUsed() bool {
	window := q.fe.opts.PollCompletions
	if window <= 0 {
		return false
	}
	q.mu.Lock()
	alone := q.ring.Inflight() == 1
	q.mu.Unlock()
	if !alone {
		return false
	}
	for start := time.Now(); time.Since(start) < window; {
		q.mu.Lock()
		used := q.ring.HasUsed()
		q.mu.Unlock()
		if used {
			return true
		}
		runtime.Gosched() // goroutines about to submit more go first
	}
	return false
}

// passLeadLocked hands the lead to the reaper while a Wait follows, or
// leaves none.
// Precondition: q.mu held by a Wait that leads.
func (q *Queue) passLeadLocked() {
	if len(q.followers) > 0 {
		q.reaperLead <- struct{}{}
		return
	}
	q.dropLeadLocked()
}

// dropLeadLocked leaves the queue without a leader.
// Precondition: q.mu held by the leader.
func (q *Queue) dropLeadLocked() {
	q.leading = false
	q.noLeader.Broadcast()
}

// Precondition: q.mu held, c.following.
func (q *Queue) unfollowLocked(c *Completion) {
	c.following = false
	i := slices.Index(q.followers, c)
	q.followers = slices.Delete(q.followers, i, i+1)
}

func (q *Queue) readErrFD() {
	var buf [8]byte
	if n, _ := unix.Read(q.errfd, buf[:]); n == 8 {
		q.errEvents.Add(1)
	}
}

// reap drains the used ring and completes what it found; buf is scratch
// space, returned for reuse.
func (q *Queue) reap(buf []*Completion) []*Completion {
	q.stats.polls.Add(1)
	buf = q.drain(buf[:0])
	for _, c := range buf {
		q.freeIndirect(c)
		c.done <- struct{}{}
	}
	return buf
}

func (q *Queue) startReaper() {
	q.reaper.Add(1)
	go q.reapLoop()
}

// reapLoop leads when handed the lead, and while nobody leads completes
// chains no Wait is for (chains only watched through Done, chains whose Wait
// gave up on its ctx) and counts error notifications, every reapTimeoutMs.
func (q *Queue) reapLoop() {
	defer q.reaper.Done()
	tick := time.NewTicker(reapTimeoutMs * time.Millisecond)
	defer tick.Stop()
	var done []*Completion
	for {
		select {
		case <-q.quit:
			select {
			case <-q.reaperLead: // handed the lead as the queue closed
				q.lead(context.Background(), nil) // nobody follows: gives it up
			default:
			}
			return
		case <-q.reaperLead:
			q.lead(context.Background(), nil)
		case <-tick.C:
			q.mu.Lock()
			idle := !q.leading
			q.mu.Unlock()
			if idle {
				q.readErrFD()
				done = q.reap(done)
			}
		}
	}
}

// drain appends the completions of all used elements on the ring to done,
// marked completed.
func (q *Queue) drain(done []*Completion) []*Completion {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		head, written, ok := q.ring.PollUsed()
		if !ok {
			break
		}
		c := q.waiting[head]
		q.waiting[head] = nil
		if c == nil {
			// PollUsed only returns heads the ring has outstanding, which
			// are exactly those in waiting: cannot happen.
			panic(fmt.Sprintf("frontend: queue %d: completion for untracked head %d", q.Index, head))
		}
		c.Written = written
		q.completeLocked(c)
		if uint64(written) > c.writable {
			c.Err = fmt.Errorf("%w: used length %d > %d writable bytes", ErrBadUsed, written, c.writable)
		}
		done = append(done, c)
	}
	if len(done) > 0 {
		q.stats.completed.Add(uint64(len(done)))
		q.space.Broadcast()
	}
	if err := q.ring.Err(); err != nil && q.failed == nil {
		q.failLocked(err)
	}
	return done
}

// ErrBadUsed marks a completion whose used element is impossible.
var ErrBadUsed = errors.New("frontend: backend wrote a bad used element")

// fail completes every outstanding chain with err and makes Submit fail.
func (q *Queue) fail(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.failLocked(err)
}

// Precondition: q.mu held.
func (q *Queue) failLocked(err error) {
	if q.failed != nil {
		return
	}
	q.failed = err
	for h, c := range q.waiting {
		if c != nil {
			q.waiting[h] = nil
			q.freeIndirect(c)
			c.Err = err
			q.completeLocked(c)
			c.done <- struct{}{}
		}
	}
	q.space.Broadcast()
}

// Precondition: q.mu held.
func (q *Queue) completeLocked(c *Completion) {
	c.completed = true
	if c.following {
		q.unfollowLocked(c)
	}
}

func (q *Queue) close() {
	// Fail every chain first: a leader then passes the lead to nobody (its
	// followers are all completed) and no Wait leads again.
	q.fail(ErrDisconnected)
	if q.stop >= 0 {
		close(q.quit)
		unix.Write(q.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		q.reaper.Wait()
	}
	q.mu.Lock()
	for q.leading {
		q.noLeader.Wait()
	}
	q.mu.Unlock()
	for _, p := range []*int{&q.epfd, &q.kick, &q.call, &q.errfd, &q.stop} {
		if *p >= 0 {
			unix.Close(*p)
			*p = -1
		}
	}
}
