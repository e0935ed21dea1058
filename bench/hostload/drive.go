package hostload

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Result is what one run measured.
type Result struct {
	Ops        uint64        `json:"ops"`    // operations completed in the measured window
	Errors     uint64        `json:"errors"` // of those, how many failed
	FirstError string        `json:"first_error,omitempty"`
	Bytes      uint64        `json:"bytes"` // file data moved in the window
	Entries    uint64        `json:"entries,omitempty"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	OpsPerSec  float64       `json:"ops_per_sec"`
	MBPerSec   float64       `json:"mb_per_sec,omitempty"`
	Mean       time.Duration `json:"mean_ns"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	P999       time.Duration `json:"p999_ns"`
	Max        time.Duration `json:"max_ns"`
	// CPU is the daemon tree's user+system time in the window (daemon
	// runs), or the worker threads' (floor runs); CPUPerOp divides it by
	// the operations it covered.
	CPU      time.Duration `json:"cpu_ns"`
	CPUPerOp time.Duration `json:"cpu_per_op_ns"`
	// MemPSS is the daemon tree's proportional set size at the end of the
	// window, guest RAM left out (daemon runs; 0 when unreadable).
	MemPSS uint64 `json:"mem_pss_bytes,omitempty"`
	// MaxWrite and Minor are the daemon's INIT answer (daemon runs).
	MaxWrite uint32 `json:"max_write,omitempty"`
	Minor    uint32 `json:"minor,omitempty"`
	// Lat holds every latency sample of the window, sorted.
	Lat []time.Duration `json:"-"`
}

// errAborted ends an operation that the end of the run cut short; it is
// neither counted nor an error.
var errAborted = errors.New("hostload: operation cut short by the end of the run")

// opFunc runs one operation. stop reports that the run is over, for
// operations made of many requests (a listing) to give up early.
type opFunc func(stop func() bool) (bytes, entries int, err error)

type driveConfig struct {
	// Warmup is the least time before measuring; the warm-up also lasts
	// until every worker finished one operation (at most maxWarmupWait
	// more), so a slow first request does not fall into the window.
	Warmup, Duration time.Duration
	// During, when set, runs from the start of the measured window; the
	// window lasts until it returns (and at least Duration).
	During func(ctx context.Context)
	// CPU returns a process CPU clock read at both ends of the window
	// (the daemon's); nil makes each worker lock its OS thread and count
	// its own RUSAGE_THREAD time (the floor).
	CPU func() (time.Duration, error)
}

// maxWarmupWait bounds how long the warm-up waits past Warmup for every
// worker's first operation.
const maxWarmupWait = 5 * time.Second

type driveWorker struct {
	op      opFunc
	warm    bool
	lat     []time.Duration
	ops     uint64
	errs    uint64
	bytes   uint64
	entries uint64
	first   error
	// thread CPU (floor runs): time used from the first operation started
	// in the window to the end of the last one, and how many operations
	// that covers (every one started in the window).
	cpu    time.Duration
	cpuOps uint64
}

func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// drive runs ops (one goroutine each) through a warm-up and the measured
// window and summarises what they did.
func drive(ctx context.Context, ops []opFunc, c driveConfig) (Result, error) {
	var res Result
	var phase atomic.Int32 // 0 warm-up, 1 measuring, 2 stopping
	var warm atomic.Int32  // workers that finished an operation
	allWarm := make(chan struct{})
	stop := func() bool { return phase.Load() == 2 || ctx.Err() != nil }
	ws := make([]*driveWorker, len(ops))
	var wg sync.WaitGroup
	for i, op := range ops {
		w := &driveWorker{op: op, lat: make([]time.Duration, 0, 1<<14)}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := c.CPU == nil
			if own {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
			}
			var cpu0 time.Duration
			started := false
			for !stop() {
				p := phase.Load()
				if own && p == 1 && !started {
					cpu0, started = threadCPU(), true
				}
				t0 := time.Now()
				nb, ne, err := w.op(stop)
				dt := time.Since(t0)
				if !w.warm {
					w.warm = true
					if int(warm.Add(1)) == len(ops) {
						close(allWarm)
					}
				}
				if started {
					w.cpuOps++
				}
				if errors.Is(err, errAborted) {
					continue
				}
				if p == 1 && phase.Load() == 1 {
					w.ops++
					w.bytes += uint64(nb)
					w.entries += uint64(ne)
					w.lat = append(w.lat, dt)
					if err != nil {
						w.errs++
						if w.first == nil {
							w.first = err
						}
					}
				}
			}
			if started {
				w.cpu = threadCPU() - cpu0
			}
		}()
	}
	sleep(ctx, c.Warmup)
	select {
	case <-allWarm:
	case <-ctx.Done():
	case <-time.After(maxWarmupWait):
	}
	var cpu0 time.Duration
	var cpuErr error
	if c.CPU != nil {
		cpu0, cpuErr = c.CPU()
	}
	t0 := time.Now()
	phase.Store(1)
	var hook chan struct{}
	if c.During != nil {
		hook = make(chan struct{})
		go func() {
			defer close(hook)
			c.During(ctx)
		}()
	}
	sleep(ctx, c.Duration)
	if hook != nil {
		select {
		case <-hook:
		case <-ctx.Done():
		}
	}
	phase.Store(2)
	res.Elapsed = time.Since(t0)
	var cpu1 time.Duration
	if c.CPU != nil && cpuErr == nil {
		cpu1, cpuErr = c.CPU()
	}
	wg.Wait()
	if hook != nil {
		<-hook
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if cpuErr != nil {
		return res, cpuErr
	}
	var all []time.Duration
	var cpuOps uint64
	for _, w := range ws {
		res.Ops += w.ops
		res.Errors += w.errs
		res.Bytes += w.bytes
		res.Entries += w.entries
		all = append(all, w.lat...)
		if w.first != nil && res.FirstError == "" {
			res.FirstError = w.first.Error()
		}
		res.CPU += w.cpu
		cpuOps += w.cpuOps
	}
	if c.CPU != nil {
		res.CPU, cpuOps = cpu1-cpu0, res.Ops
	}
	if res.Ops == 0 {
		return res, errors.New("hostload: no operation completed in the measured window")
	}
	slices.Sort(all)
	res.Lat = all
	var sum time.Duration
	for _, l := range all {
		sum += l
	}
	res.Mean = sum / time.Duration(len(all))
	res.P50, res.P99, res.P999 = Percentile(all, 0.50), Percentile(all, 0.99), Percentile(all, 0.999)
	res.Max = all[len(all)-1]
	res.OpsPerSec = float64(res.Ops) / res.Elapsed.Seconds()
	res.MBPerSec = float64(res.Bytes) / res.Elapsed.Seconds() / 1e6
	if cpuOps > 0 {
		res.CPUPerOp = res.CPU / time.Duration(cpuOps)
	}
	return res, nil
}

// Percentile returns the nearest-rank p-quantile (0 < p <= 1) of sorted
// samples (0 when there are none).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	i := int(p*float64(n)+0.999999999) - 1
	return sorted[min(max(i, 0), n-1)]
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// offsets hands out I/O offsets: random aligned ones, or a sequential
// stream through worker i's own part of the file (the whole file, started
// at different places, when there are more workers than blocks).
type offsets struct {
	size        int64
	blocks      int64
	seq         bool
	lo, hi, cur int64
	rnd         func(n int64) int64
}

func newOffsets(fileSize int64, size int, seq bool, i, n int, rnd func(int64) int64) *offsets {
	o := &offsets{size: int64(size), blocks: max(fileSize/int64(size), 1), seq: seq, rnd: rnd}
	per := o.blocks / int64(n)
	if per < 1 {
		o.lo, o.hi, o.cur = 0, o.blocks, int64(i)%o.blocks
	} else {
		o.lo, o.hi = int64(i)*per, int64(i+1)*per
		o.cur = o.lo
	}
	return o
}

func (o *offsets) next() int64 {
	if !o.seq {
		return o.rnd(o.blocks) * o.size
	}
	off := o.cur * o.size
	if o.cur++; o.cur >= o.hi {
		o.cur = o.lo
	}
	return off
}
