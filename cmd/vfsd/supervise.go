package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
	"vfsd/engine/supervisor"
	"vfsd/engine/worker"
)

// runSupervisor is the default mode: listen, accept one frontend, and keep
// it across worker deaths with engine/supervisor. It exits 0 when the
// frontend disconnects (or on SIGINT/SIGTERM), 1 when the crash budget is
// spent or the frontend breaks the protocol.
func runSupervisor(ctx context.Context, c config, stderr io.Writer, sd sysd) int {
	log := c.Logger.With("supervisor", os.Getpid())
	fail := func(err error) int {
		log.Error("vfsd failed", "err", err)
		return 1
	}
	lfd := c.ListenFD
	if c.SocketPath != "" {
		var err error
		if lfd, err = worker.Listen(c.Options); err != nil {
			return fail(err)
		}
		defer os.Remove(c.SocketPath)
	}
	ctl, err := newControl(c.controlPath(), log)
	if err != nil {
		unix.Close(lfd)
		return fail(err)
	}
	defer ctl.close()
	// --metrics-addr/--pprof-addr: listened on here, once, and handed to
	// every worker (it may run in its own mount and net namespaces, where
	// it could not open them).
	inherit, closeObs, err := c.observerListeners()
	if err != nil {
		unix.Close(lfd)
		return fail(err)
	}
	defer closeObs()

	// Under systemd, the fd store is mirrored to PID 1 and fds it handed
	// back are adopted (engine/fdstore, "Forwarding to systemd"); READY=1
	// means listening, and the watchdog is fed while the supervisor
	// answers (sup.Stats takes its lock).
	upstream, restored := sd.up, sd.restored
	var sup atomic.Pointer[supervisor.Supervisor]
	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	go runWatchdog(wctx, upstream, sd.watchdog, func() {
		if s := sup.Load(); s != nil {
			s.Stats()
		}
	}, log)
	where := c.SocketPath
	if where == "" {
		where = fmt.Sprintf("fd %d", lfd)
	}
	if upstream != nil {
		if err := upstream.Ready(); err != nil {
			log.Warn("notify READY=1", "err", err)
		}
		_ = upstream.Status("waiting for a vhost-user connection on " + where)
	}

	log.Info("waiting for a vhost-user connection", "socket", c.SocketPath, "fd", c.ListenFD, "control", c.controlPath())
	conn, err := worker.AcceptOne(ctx, lfd)
	unix.Close(lfd)
	if err != nil {
		for _, f := range restored {
			unix.Close(f.FD)
		}
		if errors.Is(err, context.Canceled) {
			return 0
		}
		return fail(err)
	}
	if c.SocketPath != "" {
		// One connection, like virtiofsd: nobody else may connect.
		os.Remove(c.SocketPath)
	}
	var errFile *os.File
	if f, ok := stderr.(*os.File); ok {
		errFile = f
	}
	s, err := supervisor.New(supervisor.Config{
		FrontendFD: conn, WorkerArgs: c.workerArgs(), PrepareWorker: c.prepareWorker(),
		Stdout: errFile, Stderr: errFile,
		MaxRestarts: c.MaxRestarts, RestartWindow: c.RestartWindow,
		BackoffMin: min(supervisor.DefaultBackoffMin, c.BackoffMax), BackoffMax: c.BackoffMax,
		Upstream: upstream, Restored: restored, Inherit: inherit, Logger: log,
	})
	if err != nil {
		return fail(err)
	}
	ctl.attach(s)
	sup.Store(s)
	if upstream != nil {
		_ = upstream.Status("serving the vhost-user connection from " + where)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: upgrading the worker")
			if err := s.Upgrade(); err != nil {
				log.Error("upgrade failed", "err", err)
			}
		}
	}()
	if err := s.Run(ctx); err != nil {
		if errors.Is(err, supervisor.ErrBudgetExhaust) {
			fmt.Fprintf(stderr, "vfsd: %v\n", err)
			return 1
		}
		return fail(err)
	}
	return 0
}

// observerListeners opens the listeners of --metrics-addr and --pprof-addr
// (one for both when they are the same) for the workers, named
// worker.MetricsListenerName / worker.PprofListenerName. closeAll closes
// them (a unix socket's file is removed).
func (c config) observerListeners() (fds []fdstore.NamedFD, closeAll func(), err error) {
	var lns []net.Listener
	closeAll = func() {
		for _, l := range lns {
			l.Close()
		}
		for _, f := range fds {
			unix.Close(f.FD)
		}
	}
	for _, e := range []struct{ name, addr string }{
		{worker.MetricsListenerName, c.MetricsAddr}, {worker.PprofListenerName, c.PprofAddr},
	} {
		if e.addr == "" || (e.name == worker.PprofListenerName && e.addr == c.MetricsAddr) {
			continue
		}
		l, err := worker.ListenAddr(e.addr)
		if err != nil {
			closeAll()
			return nil, func() {}, fmt.Errorf("listen on %s: %w", e.addr, err)
		}
		lns = append(lns, l)
		f, err := l.(interface{ File() (*os.File, error) }).File() // a duplicate
		if err != nil {
			closeAll()
			return nil, func() {}, fmt.Errorf("listener %s: %w", e.addr, err)
		}
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		f.Close()
		if err != nil {
			closeAll()
			return nil, func() {}, fmt.Errorf("listener %s: %w", e.addr, err)
		}
		fds = append(fds, fdstore.NamedFD{Name: e.name, FD: fd})
	}
	return fds, closeAll, nil
}
