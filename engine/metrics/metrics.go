package metrics

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// NumOpcodes is the size of the per-opcode tables: FUSE opcodes at or
// above it (CUSE_INIT, unknown ones) are counted under opcode 0, "other".
const NumOpcodes = 64

// LatencyBuckets are the upper bounds of the request latency histogram
// (the +Inf bucket is implicit).
var LatencyBuckets = [...]time.Duration{
	5 * time.Microsecond, 10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 10 * time.Second,
}

// BatchBuckets are the upper bounds of the batch size histogram.
var BatchBuckets = [...]uint64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 32768}

type opStats struct {
	count, errors, sumNanos atomic.Uint64
	buckets                 [len(LatencyBuckets) + 1]atomic.Uint64 // per bucket, not cumulative
}

// Queue holds one ring's figures. Its methods are safe from any goroutine
// and allocate nothing; a nil *Queue records nothing.
type Queue struct {
	ops      [NumOpcodes]opStats
	batches  [len(BatchBuckets) + 1]atomic.Uint64
	batchSum atomic.Uint64
	inflight atomic.Int64
	// READs read through the queue's io_uring ring, and the submissions
	// that carried them (engine/dataplane reads.go).
	ringReads, ringSubmits atomic.Uint64

	shared    *atomic.Uint64 // the ring's counter in a Shared memfd, or nil
	countOnly bool           // record nothing but shared (NewCounting)
}

// Request records one answered request: its opcode, whether the answer was
// an error, and how long it took from decode to answer.
func (q *Queue) Request(opcode uint32, failed bool, d time.Duration) {
	if q == nil {
		return
	}
	if q.shared != nil {
		q.shared.Add(1)
	}
	if q.countOnly {
		return
	}
	if opcode >= NumOpcodes {
		opcode = 0
	}
	s := &q.ops[opcode]
	s.count.Add(1)
	if failed {
		s.errors.Add(1)
	}
	if d < 0 {
		d = 0
	}
	s.sumNanos.Add(uint64(d))
	i := 0
	for i < len(LatencyBuckets) && d > LatencyBuckets[i] {
		i++
	}
	s.buckets[i].Add(1)
}

// Batch records the number of chains served in one wake-up (n > 0).
func (q *Queue) Batch(n int) {
	if q == nil || n <= 0 || q.countOnly {
		return
	}
	i := 0
	for i < len(BatchBuckets) && uint64(n) > BatchBuckets[i] {
		i++
	}
	q.batches[i].Add(1)
	q.batchSum.Add(uint64(n))
}

// RingSubmit records one io_uring submission that carried n READs.
func (q *Queue) RingSubmit(n int) {
	if q == nil || n <= 0 || q.countOnly {
		return
	}
	q.ringSubmits.Add(1)
	q.ringReads.Add(uint64(n))
}

// RingReads returns the READs recorded by RingSubmit (for tests and tools).
func (q *Queue) RingReads() uint64 { return q.ringReads.Load() }

// Inflight adds delta to the requests popped and not yet answered.
func (q *Queue) Inflight(delta int) {
	if q != nil && !q.countOnly {
		q.inflight.Add(int64(delta))
	}
}

// Count returns the requests recorded for opcode (for tests and tools).
func (q *Queue) Count(opcode uint32) uint64 {
	if opcode >= NumOpcodes {
		opcode = 0
	}
	return q.ops[opcode].count.Load()
}

type value struct {
	name, help, kind string // kind: gauge or counter
	fn               func() float64
}

// Registry is the worker's set of metrics.
type Registry struct {
	queues []*Queue
	opName func(uint32) string

	mu     sync.Mutex
	values []value // +checklocks:mu
}

// New returns a registry with one Queue per ring; opName names opcodes in
// labels (nil: OpName).
func New(rings int, opName func(uint32) string) *Registry {
	if opName == nil {
		opName = OpName
	}
	r := &Registry{queues: make([]*Queue, rings), opName: opName}
	for i := range r.queues {
		r.queues[i] = new(Queue)
	}
	return r
}

// NewCounting returns a registry that only counts requests into shared
// (see ShareCounts), for a worker that serves no metrics endpoint.
func NewCounting(shared *Shared) *Registry {
	r := New(shared.Rings(), nil)
	for _, q := range r.queues {
		q.countOnly = true
	}
	r.ShareCounts(shared)
	return r
}

// ShareCounts makes ring i's Request also count into shared's counter i
// (rings beyond shared's count nothing there). Call it before serving.
func (r *Registry) ShareCounts(shared *Shared) {
	for i, q := range r.queues {
		q.shared = shared.Counter(i)
	}
}

// Queue returns ring i's figures, or nil (records nothing) when i is out of
// range.
func (r *Registry) Queue(i int) *Queue {
	if r == nil || i < 0 || i >= len(r.queues) {
		return nil
	}
	return r.queues[i]
}

// Gauge registers a value read at every scrape. name must be a valid
// Prometheus metric name, unique in r.
func (r *Registry) Gauge(name, help string, fn func() float64) { r.add(name, help, "gauge", fn) }

// Counter registers a monotonic value read at every scrape (name should end
// in _total).
func (r *Registry) Counter(name, help string, fn func() float64) { r.add(name, help, "counter", fn) }

func (r *Registry) add(name, help, kind string, fn func() float64) {
	if !validName(name) {
		panic(fmt.Sprintf("metrics: invalid metric name %q", name))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range r.values {
		if v.name == name {
			panic(fmt.Sprintf("metrics: %s registered twice", name))
		}
	}
	r.values = append(r.values, value{name, help, kind, fn})
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		ok := c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9'
		if !ok {
			return false
		}
	}
	return true
}

// ContentType is the Prometheus text exposition format's.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// ServeHTTP answers GET (and HEAD) with the text exposition.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", ContentType)
	if req.Method == http.MethodHead {
		return
	}
	r.WriteText(w)
}

// WriteText writes every metric in the Prometheus text format. Series of
// opcodes never seen are left out.
func (r *Registry) WriteText(w io.Writer) error {
	b := bufio.NewWriter(w)
	r.mu.Lock()
	values := append([]value(nil), r.values...)
	r.mu.Unlock()
	sort.Slice(values, func(i, j int) bool { return values[i].name < values[j].name })
	for _, v := range values {
		header(b, v.name, v.help, v.kind)
		fmt.Fprintf(b, "%s %s\n", v.name, num(v.fn()))
	}

	header(b, "vfsd_requests_total", "FUSE requests answered, by queue and opcode.", "counter")
	r.eachOp(func(q, op string, s *opStats) {
		fmt.Fprintf(b, "vfsd_requests_total{queue=%q,op=%q} %d\n", q, op, s.count.Load())
	})
	header(b, "vfsd_request_errors_total", "FUSE requests answered with an error, by queue and opcode.", "counter")
	r.eachOp(func(q, op string, s *opStats) {
		fmt.Fprintf(b, "vfsd_request_errors_total{queue=%q,op=%q} %d\n", q, op, s.errors.Load())
	})
	header(b, "vfsd_request_duration_seconds", "Time from decoding a request to its answer, by queue and opcode.", "histogram")
	r.eachOp(func(q, op string, s *opStats) {
		var cum uint64
		for i := range s.buckets {
			cum += s.buckets[i].Load()
			le := "+Inf"
			if i < len(LatencyBuckets) {
				le = num(LatencyBuckets[i].Seconds())
			}
			fmt.Fprintf(b, "vfsd_request_duration_seconds_bucket{queue=%q,op=%q,le=%q} %d\n", q, op, le, cum)
		}
		fmt.Fprintf(b, "vfsd_request_duration_seconds_sum{queue=%q,op=%q} %s\n", q, op,
			num(float64(s.sumNanos.Load())/1e9))
		fmt.Fprintf(b, "vfsd_request_duration_seconds_count{queue=%q,op=%q} %d\n", q, op, cum)
	})
	header(b, "vfsd_batch_size", "Descriptor chains served per wake-up of a queue thread.", "histogram")
	for i, qu := range r.queues {
		q := strconv.Itoa(i)
		var cum uint64
		for j := range qu.batches {
			cum += qu.batches[j].Load()
			le := "+Inf"
			if j < len(BatchBuckets) {
				le = strconv.FormatUint(BatchBuckets[j], 10)
			}
			fmt.Fprintf(b, "vfsd_batch_size_bucket{queue=%q,le=%q} %d\n", q, le, cum)
		}
		fmt.Fprintf(b, "vfsd_batch_size_sum{queue=%q} %d\n", q, qu.batchSum.Load())
		fmt.Fprintf(b, "vfsd_batch_size_count{queue=%q} %d\n", q, cum)
	}
	header(b, "vfsd_ring_reads_total", "READs read through the queue's io_uring ring together with others of their batch.", "counter")
	for i, qu := range r.queues {
		fmt.Fprintf(b, "vfsd_ring_reads_total{queue=\"%d\"} %d\n", i, qu.ringReads.Load())
	}
	header(b, "vfsd_ring_submissions_total", "io_uring submissions of READs (one io_uring_enter each).", "counter")
	for i, qu := range r.queues {
		fmt.Fprintf(b, "vfsd_ring_submissions_total{queue=\"%d\"} %d\n", i, qu.ringSubmits.Load())
	}
	header(b, "vfsd_queue_inflight", "Requests popped from a queue and not yet answered.", "gauge")
	for i, qu := range r.queues {
		fmt.Fprintf(b, "vfsd_queue_inflight{queue=\"%d\"} %d\n", i, qu.inflight.Load())
	}
	return b.Flush()
}

// eachOp calls fn for every (queue, opcode) with at least one request.
func (r *Registry) eachOp(fn func(q, op string, s *opStats)) {
	for i, qu := range r.queues {
		for op := range qu.ops {
			s := &qu.ops[op]
			if s.count.Load() == 0 {
				continue
			}
			fn(strconv.Itoa(i), r.opName(uint32(op)), s)
		}
	}
}

func header(b *bufio.Writer, name, help, kind string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func num(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
