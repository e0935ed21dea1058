package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"vfsd/engine/supervisor"
	"vfsd/engine/worker"
)

// config is the parsed command line.
type config struct {
	worker.Options
	LogLevel  slog.Level
	PrintCaps bool
	Help      bool

	// Supervisor mode (the default): the process that holds the frontend
	// connection and restarts the worker.
	NoSupervisor  bool
	MaxRestarts   int
	RestartWindow time.Duration
	BackoffMax    time.Duration // longest wait before a restart (0: the supervisor's default)
	ControlSocket string        // "" with --socket-path: <socket-path>.ctl
}

const usageText = `usage: vfsd --socket-path=PATH|--fd=N --shared-dir=DIR [options]
       vfsd status|upgrade --socket-path=PATH|--control-socket=PATH

By default vfsd runs as a supervisor that keeps the vhost-user connection
and serves it through a worker process; a worker that dies is replaced and
resumes where it stopped, without the frontend noticing. SIGHUP (or
"vfsd upgrade") replaces the worker with the binary now on disk.

  --socket-path=PATH       listen on this vhost-user unix socket (one connection)
  --fd=N                   use the already listening socket fd N instead
  --socket-group=GROUP     give the socket file to GROUP, mode 0660
  --shared-dir=DIR         the host directory to share (also -o source=DIR)
  --tag=TAG                accepted for compatibility; with vhost-user-fs-pci
                           the tag is set on QEMU's device (tag=) and lives in
                           its config space
  --cache=MODE             auto (default), always, never or metadata
                           (also -o cache=MODE; none means never)
  --thread-pool-size=N     goroutines running blocking requests (fsync,
                           SETLKW, fallocate, ...) off the queue threads
                           (default 64; 0 is taken as 1)
  --num-request-queues=N   request virtqueues offered (default 1)
  --log-level=LEVEL        error, warn, info (default) or debug
  --no-supervisor          serve in this one process (no restarts)
  --max-restarts=N         crash budget: give up after more than N worker
                           deaths within --restart-window (default 10)
  --restart-window=D       the crash budget's window (default 60s)
  --restart-backoff-max=D  the wait before restarting a worker doubles with
                           each death in the window, from 5ms up to D
                           (default 1s)
  --control-socket=PATH    control socket answering "status" and "upgrade"
                           (default PATH.ctl with --socket-path; none with
                           --fd)
  --seccomp=ACTION         what the worker's syscall filter does with a call
                           outside its allowlist: kill (default), trap,
                           errno, log or none (no filter)
  --print-capabilities     print the vhost-user backend JSON and exit
  -o OPT[,OPT...]          virtiofsd options: source=DIR, cache=MODE,
                           log_level=LEVEL, thread_pool_size=N; xattr,
                           posix_lock, flock (always on) and their no_ forms
                           are accepted
  -h, --help               this text
`

// capabilities is the vhost-user backend description (vhost-user.rst,
// "Backend program conventions").
const capabilities = `{
  "type": "fs",
  "features": []
}
`

// parseArgs parses the command line (without the program name).
func parseArgs(args []string) (config, error) {
	c := config{Options: worker.DefaultOptions(), LogLevel: slog.LevelInfo,
		MaxRestarts: supervisor.DefaultMaxRestarts, RestartWindow: supervisor.DefaultRestartWindow}
	fs := flag.NewFlagSet("vfsd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	intFlag := func(name string, p *int, min int) {
		fs.Func(name, "", func(s string) error {
			n, err := strconv.Atoi(s)
			if err != nil || n < min {
				return fmt.Errorf("want an integer >= %d", min)
			}
			*p = n
			return nil
		})
	}
	fs.StringVar(&c.SocketPath, "socket-path", "", "")
	intFlag("fd", &c.ListenFD, 0)
	intFlag("vhost-fd", &c.ConnFD, 0)
	fs.StringVar(&c.SocketGroup, "socket-group", "", "")
	fs.StringVar(&c.SharedDir, "shared-dir", "", "")
	fs.StringVar(&c.Tag, "tag", "", "")
	fs.Func("cache", "", func(s string) error { return c.setCache(s) })
	fs.Func("thread-pool-size", "", func(s string) error { return c.setPool(s) })
	intFlag("num-request-queues", &c.RequestQueues, 1)
	fs.Func("log-level", "", func(s string) error { return c.setLevel(s) })
	fs.BoolVar(&c.PrintCaps, "print-capabilities", false, "")
	fs.BoolVar(&c.NoSupervisor, "no-supervisor", false, "")
	intFlag("max-restarts", &c.MaxRestarts, 1)
	fs.Func("restart-window", "", func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 60s")
		}
		c.RestartWindow = d
		return nil
	})
	fs.Func("restart-backoff-max", "", func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 1s")
		}
		c.BackoffMax = d
		return nil
	})
	fs.StringVar(&c.ControlSocket, "control-socket", "", "")
	fs.Var(&c.Seccomp, "seccomp", "")
	fs.BoolVar(&c.Help, "h", false, "")
	fs.BoolVar(&c.Help, "help", false, "")
	fs.Func("o", "", func(s string) error { return c.setOptions(s) })
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.Help = true
			return c, nil
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, nil
}

func (c *config) setCache(s string) error {
	if s == "none" { // virtiofsd's name
		s = "never"
	}
	for _, m := range worker.CacheModes {
		if s == m {
			c.Cache = s
			return nil
		}
	}
	return errors.New("want auto, always, never or metadata")
}

func (c *config) setPool(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > worker.MaxPoolSize {
		return fmt.Errorf("want 0..%d", worker.MaxPoolSize)
	}
	c.PoolSize = max(n, 1)
	return nil
}

func (c *config) setLevel(s string) error {
	switch s {
	case "error", "err":
		c.LogLevel = slog.LevelError
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "info":
		c.LogLevel = slog.LevelInfo
	case "debug":
		c.LogLevel = slog.LevelDebug
	default:
		return errors.New("want error, warn, info or debug")
	}
	return nil
}

// setOptions parses virtiofsd's -o list.
func (c *config) setOptions(list string) error {
	for _, o := range strings.Split(list, ",") {
		k, v, hasValue := strings.Cut(o, "=")
		var err error
		switch k {
		case "source":
			if v == "" {
				err = errors.New("empty directory")
			}
			c.SharedDir = v
		case "cache":
			err = c.setCache(v)
		case "log_level":
			err = c.setLevel(v)
		case "thread_pool_size":
			err = c.setPool(v)
		case "xattr", "no_xattr", "posix_lock", "no_posix_lock", "flock", "no_flock":
			if hasValue {
				err = errors.New("takes no value")
			}
		default:
			err = errors.New("unknown option")
		}
		if err != nil {
			return fmt.Errorf("-o %s: %v", o, err)
		}
	}
	return nil
}

// levelName is the --log-level spelling of l.
func levelName(l slog.Level) string {
	switch {
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warn"
	}
	return "error"
}

// workerArgs is the worker's command line (the supervisor appends
// --vhost-fd=N): the validated options that concern serving.
func (c *config) workerArgs() []string {
	return []string{"worker",
		"--shared-dir=" + c.SharedDir,
		"--cache=" + c.Cache,
		"--thread-pool-size=" + strconv.Itoa(c.PoolSize),
		"--num-request-queues=" + strconv.Itoa(c.RequestQueues),
		"--log-level=" + levelName(c.LogLevel),
		"--seccomp=" + c.Seccomp.String(),
	}
}

// controlPath is the control socket of a supervisor ("" for none).
func (c *config) controlPath() string {
	if c.ControlSocket != "" {
		return c.ControlSocket
	}
	if c.SocketPath != "" {
		return c.SocketPath + ".ctl"
	}
	return ""
}
