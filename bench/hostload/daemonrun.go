package hostload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
)

// DaemonConfig is one measured run of a workload on a daemon.
type DaemonConfig struct {
	Kind  daemon.Kind
	Bin   string // the daemon binary (virtiofsd: default daemon.VirtiofsdPath)
	Cache string // daemon cache mode (default auto)
	// Extra daemon arguments (e.g. vfsd's --pprof-addr).
	Extra    []string
	Workload Workload
	// Depth is the number of requests kept in flight per request queue,
	// Queues the number of request queues (the reference serves one).
	Depth, Queues    int
	Warmup, Duration time.Duration
	Share            *Share
	// SockDir is where the vhost-user socket is made (default: a new
	// temporary directory).
	SockDir string
	// ReaddirSize is the room offered to each READDIRPLUS (default 4096,
	// one page, as a Linux 6.1 guest does).
	ReaddirSize int
	// ClientPoll is the frontend's PollCompletions (see tools/frontend).
	ClientPoll time.Duration
	// During runs from the start of the measured window, with the running
	// daemon; the window lasts until it returns.
	During func(ctx context.Context, d *daemon.Daemon)
}

var sockSeq atomic.Uint64

// RunDaemon starts the daemon on the share, connects the frontend, sends
// INIT, runs the workload and stops the daemon (it must exit on hang-up).
func RunDaemon(ctx context.Context, c DaemonConfig) (res Result, err error) {
	if c.Share == nil {
		return res, errors.New("hostload: no share")
	}
	c.Depth, c.Queues = max(c.Depth, 1), max(c.Queues, 1)
	if c.ReaddirSize <= 0 {
		c.ReaddirSize = 4096
	}
	if c.Kind == daemon.Virtiofsd && c.Queues > 1 {
		return res, fmt.Errorf("hostload: the reference daemon serves one request queue, %d asked", c.Queues)
	}
	if err := c.Share.CleanNew(); err != nil {
		return res, err
	}
	n := c.Depth * c.Queues
	s, err := startSession(ctx, c, n, max(c.Workload.Size, c.ReaddirSize, 64<<10))
	if err != nil {
		return res, err
	}
	defer func() { err = s.stop(err) }()
	cl, init := s.cl, s.init
	if w := c.Workload; w.IsIO() {
		if w.Write && w.Size > int(init.MaxWrite) {
			return res, fmt.Errorf("hostload: %s: %d bytes exceed the daemon's max_write %d", w.Name, w.Size, init.MaxWrite)
		}
		if !w.Write && init.MaxPages > 0 && w.Size > int(init.MaxPages)*4096 {
			return res, fmt.Errorf("hostload: %s: %d bytes exceed the daemon's max_pages %d", w.Name, w.Size, init.MaxPages)
		}
	}
	ops, err := daemonOps(ctx, cl, c, n)
	if err != nil {
		return res, err
	}
	d := s.d
	dcfg := driveConfig{Warmup: c.Warmup, Duration: c.Duration, CPU: d.CPUTime}
	if c.During != nil {
		dcfg.During = func(ctx context.Context) { c.During(ctx, d) }
	}
	res, err = drive(ctx, ops, dcfg)
	res.MaxWrite, res.Minor = init.MaxWrite, init.Minor
	if err == nil {
		select {
		case <-d.Done():
			err = fmt.Errorf("hostload: %s exited during the run: %v", c.Kind, d.ExitErr())
		default:
			if m, merr := d.Memory(frontend.MemfdName); merr == nil {
				res.MemPSS = m.PSS
			}
		}
	}
	return res, err
}

// session is a started daemon with a connected frontend and an initialised
// FUSE client.
type session struct {
	kind daemon.Kind
	d    *daemon.Daemon
	fe   *frontend.Frontend
	cl   *fuseclient.Client
	init fuseclient.InitOut
	sock string
	rm   string // a socket directory to remove at stop
}

// startSession starts c's daemon on c.Share, connects a frontend with guest
// RAM for n requests of up to size bytes in flight and sends INIT. On error
// nothing is left running.
func startSession(ctx context.Context, c DaemonConfig, n, size int) (s *session, err error) {
	s = &session{kind: c.Kind}
	sockDir := c.SockDir
	if sockDir == "" {
		if sockDir, err = os.MkdirTemp("", "vfsd-bench-sock-"); err != nil {
			return nil, err
		}
		s.rm = sockDir
	}
	s.sock = filepath.Join(sockDir, fmt.Sprintf("%s-%d.sock", c.Kind, sockSeq.Add(1)))
	os.Remove(s.sock)
	dc := daemon.Config{Kind: c.Kind, Bin: c.Bin, Socket: s.sock, SharedDir: c.Share.Dir, Cache: c.Cache, Extra: c.Extra}
	if c.Kind == daemon.Vfsd && c.Queues > 1 {
		dc.RequestQueues = c.Queues
	}
	if s.d, err = daemon.Start(dc); err != nil {
		if s.rm != "" {
			os.RemoveAll(s.rm)
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			err = s.stop(err)
			s = nil
		}
	}()
	memSize := uint64(n)*uint64(size+16<<10) + 32<<20
	qsize := 256
	for qsize < 8*c.Depth {
		qsize *= 2
	}
	s.fe, err = frontend.Dial(s.sock, frontend.Options{Mem: frontend.MemOptions{Size: memSize}, QueueSize: qsize,
		RequestQueues: c.Queues, PollCompletions: c.ClientPoll})
	if err != nil {
		return s, err
	}
	s.cl = fuseclient.New(s.fe, fuseclient.Options{Depth: c.Depth})
	if s.init, err = s.cl.Init(ctx, 0); err != nil {
		return s, fmt.Errorf("INIT: %w", err)
	}
	return s, nil
}

// stop hangs up, waits for the daemon to exit (it must on hang-up) and
// returns err, or the failure to exit, with the daemon's last output.
func (s *session) stop(err error) error {
	if s.fe != nil {
		s.fe.Close()
	}
	if !s.d.Wait(5*time.Second) && err == nil {
		err = fmt.Errorf("hostload: %s did not exit after the frontend hung up", s.kind)
	}
	os.Remove(s.sock)
	if s.rm != "" {
		os.RemoveAll(s.rm)
	}
	if err != nil {
		err = fmt.Errorf("%w\n--- %s output (last 2000 bytes):\n%s", err, s.kind, tail(s.d.Output(), 2000))
	}
	return err
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// daemonOps looks up the share's names and builds one operation per worker.
func daemonOps(ctx context.Context, cl *fuseclient.Client, c DaemonConfig, n int) ([]opFunc, error) {
	const root = 1
	look := func(name string) (uint64, error) {
		e, err := cl.Lookup(ctx, root, name)
		if err != nil {
			return 0, fmt.Errorf("LOOKUP %s: %w", name, err)
		}
		return e.NodeID, nil
	}
	data, err := look(DataName)
	if err != nil {
		return nil, err
	}
	bigDir, err := look(BigDirName)
	if err != nil {
		return nil, err
	}
	newDir, err := look(NewDirName)
	if err != nil {
		return nil, err
	}
	w := c.Workload
	ops := make([]opFunc, n)
	for i := range ops {
		qc := cl.OnQueue(1 + i%c.Queues)
		switch w.Name {
		case "getattr":
			ops[i] = func(func() bool) (int, int, error) {
				_, err := qc.Getattr(ctx, data, nil)
				return 0, 0, err
			}
		case "lookup":
			ops[i] = func(func() bool) (int, int, error) {
				_, err := qc.Lookup(ctx, root, DataName)
				return 0, 0, err
			}
		case "create":
			id, seq := i, 0
			ops[i] = func(func() bool) (int, int, error) {
				seq++
				name := fmt.Sprintf("w%d-%d", id, seq)
				ent, o, err := qc.Create(ctx, newDir, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
				if err != nil {
					return 0, 0, fmt.Errorf("CREATE: %w", err)
				}
				if err := qc.Release(ctx, ent.NodeID, o.FH, unix.O_RDWR, 0, 0); err != nil {
					return 0, 0, fmt.Errorf("RELEASE: %w", err)
				}
				if err := qc.Unlink(ctx, newDir, name); err != nil {
					return 0, 0, fmt.Errorf("UNLINK: %w", err)
				}
				return 0, 0, qc.Forget(ctx, ent.NodeID, 1)
			}
		case "readdirplus":
			o, err := cl.Opendir(ctx, bigDir, unix.O_RDONLY)
			if err != nil {
				return nil, fmt.Errorf("OPENDIR %s: %w", BigDirName, err)
			}
			ops[i] = readdirplusOp(ctx, qc, bigDir, o.FH, c.ReaddirSize, c.Share.DirEntries)
		default:
			if !w.IsIO() {
				return nil, fmt.Errorf("hostload: workload %q has no daemon operation", w.Name)
			}
			o, err := cl.Open(ctx, data, unix.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("OPEN %s: %w", DataName, err)
			}
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			offs := newOffsets(c.Share.FileSize, w.Size, w.Seq, i, n, rng.Int64N)
			buf := make([]byte, w.Size)
			for j := range buf {
				buf[j] = byte(i + j)
			}
			fh := o.FH
			if w.Write {
				ops[i] = func(func() bool) (int, int, error) {
					got, err := qc.Write(ctx, data, fh, uint64(offs.next()), buf, 0)
					if err == nil && int(got) != len(buf) {
						err = fmt.Errorf("short WRITE: %d of %d", got, len(buf))
					}
					return int(got), 0, err
				}
			} else {
				ops[i] = func(func() bool) (int, int, error) {
					got, err := qc.Read(ctx, data, fh, uint64(offs.next()), buf)
					if err == nil && got != len(buf) {
						err = fmt.Errorf("short READ: %d of %d", got, len(buf))
					}
					return got, 0, err
				}
			}
		}
	}
	return ops, nil
}

// forgetBatch is the number of looked-up nodes after which a readdirplus
// worker sends one BATCH_FORGET for them (4 KiB of payload), as a guest
// under dentry-cache pressure would.
const forgetBatch = 256

// readdirplusOp returns one READDIRPLUS per call, walking the directory
// through its own open handle from offset 0 to the end and around again;
// the call that collected forgetBatch nodes also sends their BATCH_FORGET.
func readdirplusOp(ctx context.Context, qc *fuseclient.Client, dir, fh uint64, size, want int) opFunc {
	forget := make([]fuseclient.ForgetOne, 0, forgetBatch+size/64)
	off := uint64(0)
	seen := 0 // entries since offset 0, to check a full pass
	return func(func() bool) (int, int, error) {
		var ents []fuseclient.Direntplus
		for range 2 { // at the end, once more from the start
			var err error
			ents, err = qc.Readdirplus(ctx, dir, fh, off, size)
			if err != nil {
				return 0, 0, fmt.Errorf("READDIRPLUS at %d: %w", off, err)
			}
			if len(ents) > 0 {
				break
			}
			if off == 0 {
				return 0, 0, errors.New("READDIRPLUS of the directory returned nothing at offset 0")
			}
			got := seen
			off, seen = 0, 0
			if got != want {
				return 0, 0, fmt.Errorf("READDIRPLUS pass listed %d entries, the directory has %d", got, want)
			}
		}
		names := 0
		for _, e := range ents {
			if e.Name == "." || e.Name == ".." {
				continue
			}
			names++
			if e.Entry.NodeID != 0 {
				forget = append(forget, fuseclient.ForgetOne{NodeID: e.Entry.NodeID, Nlookup: 1})
			}
		}
		seen += names
		off = ents[len(ents)-1].Off
		if len(forget) >= forgetBatch {
			err := qc.BatchForget(ctx, forget)
			forget = forget[:0]
			if err != nil {
				return 0, names, fmt.Errorf("BATCH_FORGET: %w", err)
			}
		}
		return 0, names, nil
	}
}
