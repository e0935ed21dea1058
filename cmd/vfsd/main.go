package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"vfsd/engine/supervisor"
	"vfsd/engine/worker"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its streams, returning the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "worker":
			return runWorker(args[1:], stderr)
		case "status", "upgrade":
			return runControlClient(args[0], args[1:], stdout, stderr)
		}
	}
	c, err := parseArgs(args)
	info := err == nil && (c.Help || c.PrintCaps || c.Version || c.Man)
	var sd sysd
	var notes []string
	if err == nil && !info {
		// Socket activation may supply the listening socket, so systemd's
		// hand-over comes before the check for one.
		sd, notes, err = takeSystemd(&c)
	}
	if err == nil && !info {
		err = c.Validate()
	}
	if err == nil && c.ConnFD >= 0 && !c.NoSupervisor {
		err = errors.New("--vhost-fd needs --no-supervisor (it is the worker's)")
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "vfsd: %v\n", err)
		return 2
	case c.Help:
		fmt.Fprint(stdout, usageText())
		return 0
	case c.Version:
		fmt.Fprintf(stdout, "vfsd %s\n", versionString())
		return 0
	case c.Man:
		fmt.Fprint(stdout, manPage(versionString()))
		return 0
	case c.PrintCaps:
		fmt.Fprint(stdout, capabilities)
		return 0
	}
	log, note := newLogger(c, stderr)
	c.Logger = log
	if note != "" {
		notes = append(notes, note)
	}
	for _, n := range notes {
		log.Warn(n)
	}
	for _, w := range c.Warnings {
		log.Warn(w)
	}
	if err := applyRlimit(c.RlimitNofile, log); err != nil {
		log.Error("vfsd failed", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if !c.NoSupervisor {
		return runSupervisor(ctx, c, stderr, sd)
	}
	return runSingle(ctx, c, sd)
}

// runSingle is --no-supervisor: the worker serves in this process. Under
// systemd it listens here first so that READY=1 means "listening".
func runSingle(ctx context.Context, c config, sd sysd) int {
	if sd.up != nil {
		if c.SocketPath != "" {
			lfd, err := worker.Listen(c.Options)
			if err != nil {
				c.Logger.Error("vfsd failed", "err", err)
				return 1
			}
			defer os.Remove(c.SocketPath)
			c.SocketPath, c.SocketGroup, c.ListenFD = "", "", lfd
		}
		_ = sd.up.Ready()
		_ = sd.up.Status("serving (no supervisor)")
		wctx, wstop := context.WithCancel(ctx)
		defer wstop()
		go runWatchdog(wctx, sd.up, sd.watchdog, func() {}, c.Logger)
	}
	if err := worker.Run(ctx, c.Options); err != nil {
		c.Logger.Error("vfsd failed", "err", err)
		return 1
	}
	return 0
}

// runWorker is the hidden "vfsd worker ... --vhost-fd=N" subcommand the
// supervisor starts (engine/supervisor's worker interface).
func runWorker(args []string, stderr io.Writer) int {
	c, err := parseArgs(args)
	if err == nil && c.ConnFD < 0 {
		err = errors.New("worker: --vhost-fd is required")
	}
	if err == nil {
		c.Supervised = true
		c.Resume = os.Getenv(supervisor.EnvResume) == "1"
		err = c.enterSandbox() // re-executes the worker inside its sandbox
	}
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "vfsd worker: %v\n", err)
		return 2
	}
	log, note := newLogger(c, stderr)
	c.Logger = log.With("worker", os.Getpid())
	if note != "" {
		c.Logger.Warn(note)
	}
	// The supervisor ends a worker with SIGTERM (upgrade, shutdown) and
	// SIGKILL after a grace period. Exiting at once is safe at any
	// instruction (that is the point of the design), and the successor
	// resumes the rings exactly as after a crash. SIGINT from a terminal
	// is the supervisor's to handle.
	signal.Ignore(syscall.SIGINT)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		os.Exit(0)
	}()
	if err := worker.Run(context.Background(), c.Options); err != nil {
		c.Logger.Error("worker failed", "err", err)
		return 1
	}
	return 0
}
