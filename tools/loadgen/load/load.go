package load

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
)

// Ops lists the operations Run knows.
var Ops = []string{"getattr", "lookup", "read4k", "write4k", "read128k", "write128k", "read1m", "write1m", "create", "readdirplus",
	"statfs", "lookup-missing"}

// Config is one load run.
type Config struct {
	Daemon daemon.Kind
	Bin    string // daemon binary (default: virtiofsd's path; for vfsd, built from ./cmd/vfsd)
	Cache  string // daemon cache mode (default auto)
	Op     string
	// Depth is the number of requests kept in flight per request queue.
	Depth int
	// Queues is the number of request queues (virtiofsd: 1).
	Queues   int
	Duration time.Duration
	// Warmup runs the load this long before measuring (default 500ms).
	Warmup time.Duration
	// FileSize is the size of the data file for reads and writes (default 64 MiB).
	FileSize int64
	// ClientPoll is the frontend's PollCompletions: how long a waiting
	// request polls for its reply before sleeping.
	ClientPoll time.Duration
	// Dir is where the shared directory and socket are made (default: a
	// new temporary directory, removed afterwards).
	Dir string
	// Log receives the daemon's output (default: discarded unless it fails).
	Log func(string)
}

// Result is what one run measured.
type Result struct {
	Config
	Ops, Errors     uint64
	FirstError      string
	Elapsed         time.Duration
	OpsPerSec       float64
	MBPerSec        float64
	Mean, P50, P99  time.Duration
	P999, Max       time.Duration
	DaemonCPU       time.Duration
	DaemonCPUPerOp  time.Duration
	MaxWrite        uint32
	NegotiatedMinor uint32
}

// String renders r as one line.
func (r Result) String() string {
	s := fmt.Sprintf("%-9s %-11s depth=%-3d queues=%d  %10.0f ops/s", r.Daemon, r.Op, r.Depth, r.Queues, r.OpsPerSec)
	if r.MBPerSec > 0 {
		s += fmt.Sprintf(" %8.1f MB/s", r.MBPerSec)
	}
	s += fmt.Sprintf("  p50=%v p99=%v p99.9=%v max=%v  cpu/op=%v", r.P50, r.P99, r.P999, r.Max, r.DaemonCPUPerOp)
	if r.Errors > 0 {
		s += fmt.Sprintf("  errors=%d (first: %s)", r.Errors, r.FirstError)
	}
	return s
}

func opSize(op string) int {
	switch op {
	case "read4k", "write4k":
		return 4 << 10
	case "read128k", "write128k":
		return 128 << 10
	case "read1m", "write1m":
		return 1 << 20
	}
	return 0
}

const dirEntries = 1000

// Run prepares the shared directory, starts the daemon, runs the load and
// stops the daemon.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if !slices.Contains(Ops, cfg.Op) {
		return res, fmt.Errorf("load: unknown op %q (have %s)", cfg.Op, strings.Join(Ops, ", "))
	}
	if cfg.Depth <= 0 {
		cfg.Depth = 1
	}
	if cfg.Queues <= 0 {
		cfg.Queues = 1
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 5 * time.Second
	}
	if cfg.Warmup == 0 {
		cfg.Warmup = 500 * time.Millisecond
	}
	if cfg.FileSize == 0 {
		cfg.FileSize = 64 << 20
	}
	if cfg.Daemon == "" {
		cfg.Daemon = daemon.Vfsd
	}
	if cfg.Daemon == daemon.Virtiofsd && cfg.Queues > 1 {
		return res, fmt.Errorf("load: virtiofsd serves one request queue, %d asked", cfg.Queues)
	}
	res.Config = cfg
	base := cfg.Dir
	if base == "" {
		if base, err = os.MkdirTemp("", "vfsd-load-"); err != nil {
			return res, err
		}
		defer os.RemoveAll(base)
	}
	shared := filepath.Join(base, "shared")
	if err := prepare(shared, cfg); err != nil {
		return res, err
	}
	bin := cfg.Bin
	if bin == "" && cfg.Daemon == daemon.Vfsd {
		if bin, err = daemon.BuildVfsd(base); err != nil {
			return res, err
		}
	}
	sock := filepath.Join(base, "vhost.sock")
	d, err := daemon.Start(daemon.Config{Kind: cfg.Daemon, Bin: bin, Socket: sock, SharedDir: shared,
		Cache: cfg.Cache, RequestQueues: cfg.Queues})
	if err != nil {
		return res, err
	}
	var fe *frontend.Frontend
	defer func() {
		if fe != nil {
			fe.Close()
		}
		if !d.Wait(5*time.Second) && err == nil {
			err = fmt.Errorf("load: %s did not exit after the frontend hung up", cfg.Daemon)
		}
		if cfg.Log != nil {
			cfg.Log(d.Output())
		} else if err != nil {
			err = fmt.Errorf("%w\n%s output:\n%s", err, cfg.Daemon, d.Output())
		}
	}()
	memSize := uint64(cfg.Depth*cfg.Queues)*uint64(max(opSize(cfg.Op), 64<<10)+8192) + 32<<20
	qsize := 256
	for qsize < 4*cfg.Depth {
		qsize *= 2
	}
	fe, err = frontend.Dial(sock, frontend.Options{Mem: frontend.MemOptions{Size: memSize}, QueueSize: qsize,
		RequestQueues: cfg.Queues, PollCompletions: cfg.ClientPoll})
	if err != nil {
		return res, err
	}
	c := fuseclient.New(fe, fuseclient.Options{Depth: cfg.Depth})
	init, err := c.Init(ctx, 0)
	if err != nil {
		return res, fmt.Errorf("INIT: %w", err)
	}
	res.MaxWrite, res.NegotiatedMinor = init.MaxWrite, init.Minor
	if n := opSize(cfg.Op); n > 0 {
		if strings.HasPrefix(cfg.Op, "write") && n > int(init.MaxWrite) {
			return res, fmt.Errorf("load: %s exceeds max_write %d", cfg.Op, init.MaxWrite)
		}
		if strings.HasPrefix(cfg.Op, "read") && init.MaxPages > 0 && n > int(init.MaxPages)*4096 {
			return res, fmt.Errorf("load: %s exceeds max_pages %d", cfg.Op, init.MaxPages)
		}
	}
	return measure(ctx, c, d, cfg, res)
}

// prepare fills the shared directory: a data file, a directory of
// dirEntries files, a directory for creates.
func prepare(shared string, cfg Config) error {
	if err := os.MkdirAll(filepath.Join(shared, "dir"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(shared, "new"), 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(shared, "data"))
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for off := int64(0); off < cfg.FileSize; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk[:min(int64(len(chunk)), cfg.FileSize-off)], off); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if cfg.Op == "readdirplus" {
		for i := 0; i < dirEntries; i++ {
			if err := os.WriteFile(filepath.Join(shared, "dir", fmt.Sprintf("entry-%04d", i)), nil, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

type worker struct {
	c      *fuseclient.Client
	id     int
	rng    *rand.Rand
	buf    []byte
	lat    []time.Duration
	ops    uint64
	errs   uint64
	bytes  uint64
	first  error
	seq    int
	node   uint64
	fh     uint64
	dirFH  uint64
	dirID  uint64
	newDir uint64
}

// measure runs the workers: warm-up, then the measured window.
func measure(ctx context.Context, c *fuseclient.Client, d *daemon.Daemon, cfg Config, res Result) (Result, error) {
	const root = 1
	data, err := c.Lookup(ctx, root, "data")
	if err != nil {
		return res, fmt.Errorf("LOOKUP data: %w", err)
	}
	dir, err := c.Lookup(ctx, root, "dir")
	if err != nil {
		return res, fmt.Errorf("LOOKUP dir: %w", err)
	}
	newDir, err := c.Lookup(ctx, root, "new")
	if err != nil {
		return res, fmt.Errorf("LOOKUP new: %w", err)
	}
	n := cfg.Depth * cfg.Queues
	workers := make([]*worker, n)
	for i := range workers {
		w := &worker{c: c.OnQueue(1 + i%cfg.Queues), id: i, rng: rand.New(rand.NewPCG(uint64(i), 42)),
			node: data.NodeID, dirID: dir.NodeID, newDir: newDir.NodeID}
		if sz := opSize(cfg.Op); sz > 0 {
			w.buf = make([]byte, sz)
			for j := range w.buf {
				w.buf[j] = byte(i + j)
			}
			o, err := c.Open(ctx, data.NodeID, unix.O_RDWR, 0)
			if err != nil {
				return res, fmt.Errorf("OPEN data: %w", err)
			}
			w.fh = o.FH
		}
		if cfg.Op == "readdirplus" {
			o, err := c.Opendir(ctx, dir.NodeID, unix.O_RDONLY)
			if err != nil {
				return res, fmt.Errorf("OPENDIR: %w", err)
			}
			w.dirFH = o.FH
		}
		workers[i] = w
	}
	var phase atomic.Int32 // 0 warm-up, 1 measuring, 2 stop
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.lat = make([]time.Duration, 0, 1<<16)
			for {
				p := phase.Load()
				if p == 2 || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				nb, err := w.op(ctx, cfg.Op, cfg.FileSize)
				dt := time.Since(t0)
				if p == 1 && phase.Load() == 1 {
					w.ops++
					w.bytes += uint64(nb)
					w.lat = append(w.lat, dt)
					if err != nil {
						w.errs++
						if w.first == nil {
							w.first = err
						}
					}
				}
			}
		}()
	}
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
	}
	cpu0, err0 := d.CPUTime()
	t0 := time.Now()
	phase.Store(1)
	select {
	case <-time.After(cfg.Duration):
	case <-ctx.Done():
	}
	phase.Store(2)
	elapsed := time.Since(t0)
	cpu1, err1 := d.CPUTime()
	wg.Wait()
	if err := errors.Join(err0, err1); err != nil {
		return res, fmt.Errorf("daemon CPU time: %w", err)
	}
	var all []time.Duration
	var bytes uint64
	for _, w := range workers {
		res.Ops += w.ops
		res.Errors += w.errs
		bytes += w.bytes
		all = append(all, w.lat...)
		if w.first != nil && res.FirstError == "" {
			res.FirstError = w.first.Error()
		}
	}
	res.Elapsed = elapsed
	if res.Ops == 0 {
		return res, fmt.Errorf("load: no operation completed in %v", elapsed)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration { return all[min(len(all)-1, int(p*float64(len(all))))] }
	var sum time.Duration
	for _, l := range all {
		sum += l
	}
	res.Mean = sum / time.Duration(len(all))
	res.P50, res.P99, res.P999, res.Max = pct(0.50), pct(0.99), pct(0.999), all[len(all)-1]
	res.OpsPerSec = float64(res.Ops) / elapsed.Seconds()
	res.MBPerSec = float64(bytes) / elapsed.Seconds() / 1e6
	res.DaemonCPU = cpu1 - cpu0
	res.DaemonCPUPerOp = res.DaemonCPU / time.Duration(res.Ops)
	return res, nil
}

// op runs one operation and returns the bytes it moved.
func (w *worker) op(ctx context.Context, op string, fileSize int64) (int, error) {
	const root = 1
	switch op {
	case "getattr":
		_, err := w.c.Getattr(ctx, w.node, nil)
		return 0, err
	case "lookup":
		_, err := w.c.Lookup(ctx, root, "data")
		return 0, err
	case "statfs":
		_, err := w.c.Statfs(ctx, root)
		return 0, err
	case "lookup-missing": // a negative lookup, as before every create
		_, err := w.c.Lookup(ctx, root, "missing")
		if errors.Is(err, unix.ENOENT) {
			err = nil
		}
		return 0, err
	case "read4k", "read128k", "read1m":
		off := w.offset(fileSize)
		n, err := w.c.Read(ctx, w.node, w.fh, off, w.buf)
		if err == nil && n != len(w.buf) {
			err = fmt.Errorf("short READ: %d of %d", n, len(w.buf))
		}
		return n, err
	case "write4k", "write128k", "write1m":
		off := w.offset(fileSize)
		n, err := w.c.Write(ctx, w.node, w.fh, off, w.buf, 0)
		if err == nil && int(n) != len(w.buf) {
			err = fmt.Errorf("short WRITE: %d of %d", n, len(w.buf))
		}
		return int(n), err
	case "create":
		w.seq++
		// The bench's create: CREATE+RELEASE+UNLINK+FORGET.
		name := fmt.Sprintf("w%d-%d", w.id, w.seq)
		ent, o, err := w.c.Create(ctx, w.newDir, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
		if err != nil {
			return 0, err
		}
		if err := w.c.Release(ctx, ent.NodeID, o.FH, unix.O_RDWR, 0, 0); err != nil {
			return 0, err
		}
		if err := w.c.Unlink(ctx, w.newDir, name); err != nil {
			return 0, err
		}
		return 0, w.c.Forget(ctx, ent.NodeID, 1)
	case "readdirplus":
		ents, err := w.c.Readdirplus(ctx, w.dirID, w.dirFH, 0, 32<<10)
		if err != nil {
			return 0, err
		}
		if len(ents) == 0 {
			return 0, errors.New("READDIRPLUS returned nothing")
		}
		var f []fuseclient.ForgetOne
		for _, e := range ents {
			if e.Entry.NodeID != 0 {
				f = append(f, fuseclient.ForgetOne{NodeID: e.Entry.NodeID, Nlookup: 1})
			}
		}
		if len(f) > 0 {
			return 0, w.c.BatchForget(ctx, f)
		}
		return 0, nil
	}
	return 0, fmt.Errorf("unknown op %q", op)
}

// offset picks a random block-aligned offset inside the data file.
func (w *worker) offset(fileSize int64) uint64 {
	blocks := fileSize / int64(len(w.buf))
	if blocks < 1 {
		return 0
	}
	return uint64(w.rng.Int64N(blocks)) * uint64(len(w.buf))
}
