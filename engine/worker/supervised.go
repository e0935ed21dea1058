package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
	"vfsd/engine/metrics"
	"vfsd/engine/passthrough"
	"vfsd/engine/sandbox"
)

// runSupervised is Run for a child of engine/supervisor: the connection is
// o.ConnFD, state lives in memfds kept by the supervisor's fd store.
//
// Start-up order (a crash at any point leaves a state the next worker can
// use): raise RLIMIT_NOFILE; take the handed-back fds; map and validate the
// ring state and inflight region (resume), or create and store them (first
// start, or a predecessor that died before storing both); build the
// filesystem (it maps or creates and stores its own state); then serve, and
// report READY=1 once the device is ready for messages.
func runSupervised(ctx context.Context, o Options, log *slog.Logger) error {
	start := time.Now()
	if err := raiseNofile(); err != nil {
		log.Warn("raise RLIMIT_NOFILE", "err", err)
	}
	handed, err := fdstore.ListenFDs(true)
	if err != nil {
		unix.Close(o.ConnFD)
		return fmt.Errorf("fds handed over by the supervisor: %w", err)
	}
	// The supervisor's listeners for --metrics-addr/--pprof-addr are not
	// stored fds: take them out first.
	o.listeners = map[string]int{}
	kept := handed[:0:0]
	for _, f := range handed {
		if IsListenerName(f.Name) {
			if old, dup := o.listeners[f.Name]; dup {
				unix.Close(old)
			}
			o.listeners[f.Name] = f.FD
			continue
		}
		kept = append(kept, f)
	}
	handed = kept
	byName := make(map[string]int, len(handed))
	closeRest := func() {
		for _, fd := range byName {
			unix.Close(fd)
		}
		clear(byName)
	}
	for _, f := range handed {
		if sandbox.IsHeld(f.Name) { // the sandbox's, used before exec (engine/sandbox)
			unix.Close(f.FD)
			continue
		}
		if old, dup := byName[f.Name]; dup {
			// Names are unique in what this worker stores; keep the newest.
			unix.Close(old)
		}
		byName[f.Name] = f.FD
	}
	store, err := fdstore.Default()
	if err != nil || store == nil {
		closeRest()
		unix.Close(o.ConnFD)
		if err == nil {
			err = fmt.Errorf("%s not set", fdstore.EnvNotifyFD)
		}
		return fmt.Errorf("fd store: %w", err)
	}
	rings := 1 + o.RequestQueues
	counted := newStoreCounter(store, handed) // for metrics
	reqFD, ok := byName[metrics.SharedName]
	if !ok {
		reqFD = -1
	}
	delete(byName, metrics.SharedName)
	st, resume, err := loadState(byName, counted, rings, o.Resume, log)
	if err != nil {
		if reqFD >= 0 {
			unix.Close(reqFD)
		}
		closeRest()
		unix.Close(o.ConnFD)
		return err
	}
	defer st.close()
	st.stored = counted
	if st.reqs, err = loadRequestCounters(reqFD, counted, rings, log); err != nil {
		log.Error("request counters (vfsd status) unavailable", "err", err)
	}
	po := passthrough.Options{Root: o.SharedDir, Cache: o.Cache, Xattr: !o.NoXattr,
		Writeback: o.Writeback, AllowDirectIO: o.AllowDirectIO, EagerInodes: o.EagerInodes,
		Queues: journalQueues(o.RequestQueues), FDStore: fsStore(counted),
		ProcSelfFD: sandbox.ProcSelfFD()} // > 0 in the chroot sandbox only
	if resume {
		po.Resume = byName // the filesystem owns them from here on
	} else {
		closeRest()
	}
	fs, err := passthrough.New(po)
	if err != nil {
		unix.Close(o.ConnFD)
		return fmt.Errorf("shared directory %s: %w", o.SharedDir, err)
	}
	defer fs.Close()
	o.Resume = resume
	log.Info("worker state ready", "resume", resume, "took", time.Since(start).Round(time.Microsecond))
	return serve(ctx, o.ConnFD, fs, o, log, st)
}

// loadState takes the ring state and inflight region out of byName (resume)
// or creates and stores them. It reports whether the worker resumes: a
// predecessor that died before storing both had not served anything, so
// the worker then starts afresh even with VFSD_RESUME=1.
func loadState(byName map[string]int, store fdStore, rings int, resume bool, log *slog.Logger) (*state, bool, error) {
	sfd, okS := byName[StateFDName]
	ifd, okI := byName[InflightFDName]
	delete(byName, StateFDName)
	delete(byName, InflightFDName)
	if resume && okS && okI {
		st, err := openState(sfd, ifd, rings)
		if err != nil {
			return nil, false, err
		}
		return st, true, nil
	}
	for _, fd := range []int{sfd, ifd} {
		if fd > 0 {
			unix.Close(fd)
		}
	}
	if resume {
		log.Warn("no persisted worker state: the previous worker died before storing it; starting afresh")
	}
	st, err := createState(rings)
	if err != nil {
		return nil, false, err
	}
	if err := st.store(store); err != nil {
		st.close()
		return nil, false, err
	}
	return st, false, nil
}

// raiseNofile sets the soft RLIMIT_NOFILE to the hard limit: the
// filesystem keeps an fd per inode and per open file.
func raiseNofile() error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= rl.Max {
		return nil
	}
	rl.Cur = rl.Max
	return unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
}

// fsStore is the fd store the filesystem gets: one that sends batches when
// the supervisor says it applies them (fdstore.EnvBatch), else one message
// per store and remove.
func fsStore(c *storeCounter) passthrough.FDStore {
	if os.Getenv(fdstore.EnvBatch) == "1" {
		return batchCounter{c}
	}
	return c
}
