package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"vfsd/engine/worker"
)

// config is the parsed command line.
type config struct {
	worker.Options
	LogLevel  slog.Level
	PrintCaps bool
	Help      bool
}

const usageText = `usage: vfsd --socket-path=PATH|--fd=N --shared-dir=DIR [options]

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
	c := config{Options: worker.DefaultOptions(), LogLevel: slog.LevelInfo}
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
