package dataplane

import (
	"sync"
	"time"

	"vfsd/engine/fuse"
)

// DefaultPoolSize is the default number of goroutines running blocking
// requests.
const DefaultPoolSize = 64

// job is one blocking request handed from a queue thread to the pool.
type job struct {
	q       *queue
	req     *fuse.Request
	out     [][]byte // copy of the chain's writable segment headers
	rep     fuse.Reply
	head    uint16
	epoch   uint64
	written uint32
	start   time.Time // decode time, when metrics are on
}

var jobs = sync.Pool{New: func() any { return new(job) }}

// pool runs jobs on at most max goroutines, started on demand. Its FIFO is
// not bounded by itself, but every job holds a descriptor chain, so it never
// holds more jobs than the started queues have entries.
type pool struct {
	mu      sync.Mutex
	cond    sync.Cond
	fifo    []*job // +checklocks:mu
	next    int    // +checklocks:mu: first unserved entry of fifo
	idle    int    // +checklocks:mu
	running int    // +checklocks:mu
	max     int
	closed  bool // +checklocks:mu
	wg      sync.WaitGroup
	run     func(*job)
}

func newPool(max int, run func(*job)) *pool {
	p := &pool{max: max, run: run}
	p.cond.L = &p.mu
	return p
}

func (p *pool) submit(j *job) {
	p.mu.Lock()
	p.fifo = append(p.fifo, j)
	if p.idle == 0 && p.running < p.max {
		p.running++
		p.wg.Add(1)
		go p.worker()
	} else {
		p.cond.Signal()
	}
	p.mu.Unlock()
}

func (p *pool) worker() {
	defer p.wg.Done()
	p.mu.Lock()
	for {
		for p.next == len(p.fifo) && !p.closed {
			p.idle++
			p.cond.Wait()
			p.idle--
		}
		if p.next == len(p.fifo) { // closed and empty
			p.running--
			p.mu.Unlock()
			return
		}
		j := p.fifo[p.next]
		p.fifo[p.next] = nil
		p.next++
		if p.next == len(p.fifo) {
			p.fifo, p.next = p.fifo[:0], 0
		}
		p.mu.Unlock()
		p.run(j)
		p.mu.Lock()
	}
}

// close lets the workers finish the queued jobs and waits for them to exit.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}
