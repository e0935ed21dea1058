package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
)

// Integration with the host: systemd (sd_notify, socket activation, the
// watchdog), syslog, RLIMIT_NOFILE, the version string.

// version is set at link time (-ldflags "-X main.version=..."); without it
// the module version or VCS revision the binary was built from is used.
var version string

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return bi.Main.Version
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// sysd is what systemd gave this process: the notify socket (nil when not
// under systemd) and the fds vfsd had stored in systemd's fd store.
type sysd struct {
	up       *fdstore.Client
	restored []fdstore.NamedFD
	watchdog time.Duration // WATCHDOG_USEC for this process; 0: none
}

// takeSystemd reads (and removes from the environment, so that workers do
// not see them) NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID and LISTEN_FDS.
// A listening stream socket among the handed fds (socket activation)
// becomes c.ListenFD. Fds that are neither that nor vfsd's own stored fds
// are closed and reported in the returned notes.
func takeSystemd(c *config) (sd sysd, notes []string, err error) {
	sd.up, err = fdstore.FromEnv(true)
	if err != nil {
		notes = append(notes, fmt.Sprintf("systemd notify socket unusable; continuing without it: %v", err))
		sd.up, err = nil, nil
	}
	if us, ok := os.LookupEnv("WATCHDOG_USEC"); ok {
		pidOK := true
		if ps, ok := os.LookupEnv("WATCHDOG_PID"); ok {
			pidOK = ps == strconv.Itoa(os.Getpid())
		}
		if n, perr := strconv.ParseUint(us, 10, 63); perr == nil && n > 0 && pidOK {
			sd.watchdog = time.Duration(n) * time.Microsecond
		} else if perr != nil || n == 0 {
			notes = append(notes, fmt.Sprintf("ignoring WATCHDOG_USEC=%q", us))
		}
		os.Unsetenv("WATCHDOG_USEC")
		os.Unsetenv("WATCHDOG_PID")
	}
	handed, lerr := fdstore.ListenFDs(true)
	if lerr != nil {
		return sd, notes, fmt.Errorf("LISTEN_FDS: %w", lerr)
	}
	stored, other := fdstore.SplitUpstream(handed)
	closeAll := func() {
		for _, f := range handed {
			unix.Close(f.FD)
		}
	}
	listener := -1
	for _, f := range other {
		if isListeningStream(f.FD) {
			if listener >= 0 {
				closeAll()
				return sd, notes, fmt.Errorf("LISTEN_FDS: more than one listening socket (fds %d and %d); vfsd serves one", listener, f.FD)
			}
			listener = f.FD
			continue
		}
		notes = append(notes, fmt.Sprintf("LISTEN_FDS: closing fd %d (%q): not a listening stream socket", f.FD, f.Name))
		unix.Close(f.FD)
	}
	if listener >= 0 {
		switch {
		case c.SocketPath != "":
			closeAll()
			return sd, notes, fmt.Errorf("systemd passed a listening socket (fd %d, LISTEN_FDS) and --socket-path was given; give only one", listener)
		case c.ListenFD >= 0 && c.ListenFD != listener:
			closeAll()
			return sd, notes, fmt.Errorf("systemd passed a listening socket as fd %d (LISTEN_FDS) but --fd=%d was given", listener, c.ListenFD)
		case c.ConnFD >= 0:
			closeAll()
			return sd, notes, errors.New("systemd passed a listening socket (LISTEN_FDS) and --vhost-fd was given")
		}
		c.ListenFD = listener
	}
	if len(stored) > 0 && (sd.up == nil || c.NoSupervisor) {
		// Only a supervisor under systemd can use them.
		for _, f := range stored {
			unix.Close(f.FD)
		}
		notes = append(notes, fmt.Sprintf("LISTEN_FDS: closed %d stored fds nobody can adopt here", len(stored)))
		stored = nil
	}
	sd.restored = stored
	return sd, notes, nil
}

func isListeningStream(fd int) bool {
	t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || t != unix.SOCK_STREAM {
		return false
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	return err == nil && acc == 1
}

// runWatchdog sends WATCHDOG=1 every interval/2 while alive returns
// (alive blocks when the supervisor is stuck, and the pings stop). It
// returns when ctx is done.
func runWatchdog(ctx context.Context, up *fdstore.Client, interval time.Duration, alive func(), log *slog.Logger) {
	if up == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		alive()
		if err := up.Watchdog(); err != nil {
			log.Warn("systemd watchdog ping", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// applyRlimit sets RLIMIT_NOFILE like virtiofsd's --rlimit-nofile: n > 0
// sets soft and hard limits to n (an error if not allowed); 0 leaves them;
// -1 raises the soft limit to min(1000000, nr_open) if allowed, and
// otherwise leaves the limits as they are. Workers inherit the result
// (syscall.Setrlimit, so that os/exec does not restore the old limit).
func applyRlimit(n int64, log *slog.Logger) error {
	if n == 0 {
		return nil
	}
	var cur syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if n > 0 {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: uint64(n), Max: uint64(n)}); err != nil {
			return fmt.Errorf("--rlimit-nofile=%d: setrlimit: %w", n, err)
		}
		return nil
	}
	target := uint64(rlimitDefault)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if m, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && m < target {
			target = m
		}
	}
	if cur.Cur >= target {
		return nil
	}
	want := syscall.Rlimit{Cur: target, Max: max(cur.Max, target)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		log.Debug("could not raise RLIMIT_NOFILE", "want", target, "soft", cur.Cur, "hard", cur.Max, "err", err)
	}
	return nil
}

// newLogger is the process's logger: slog text on stderr, or syslog with
// --syslog (falling back to stderr, with a note, when /dev/log is absent).
func newLogger(c config, stderr io.Writer) (*slog.Logger, string) {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.Syslog {
		w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "vfsd")
		if err == nil {
			return slog.New(newSyslogHandler(w, opts)), ""
		}
		return slog.New(slog.NewTextHandler(stderr, opts)), fmt.Sprintf("--syslog: %v; logging to stderr", err)
	}
	return slog.New(slog.NewTextHandler(stderr, opts)), ""
}

// syslogHandler formats records like slog's text handler (without the
// time, which syslog adds) and sends each at the priority of its level.
type syslogHandler struct {
	mu    *sync.Mutex
	buf   *bytes.Buffer
	inner slog.Handler
	w     *syslog.Writer
}

func newSyslogHandler(w *syslog.Writer, opts *slog.HandlerOptions) *syslogHandler {
	buf := &bytes.Buffer{}
	o := *opts
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	return &syslogHandler{mu: &sync.Mutex{}, buf: buf, inner: slog.NewTextHandler(buf, &o), w: w}
}

func (h *syslogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *syslogHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	msg := strings.TrimSuffix(h.buf.String(), "\n")
	switch {
	case r.Level >= slog.LevelError:
		return h.w.Err(msg)
	case r.Level >= slog.LevelWarn:
		return h.w.Warning(msg)
	case r.Level >= slog.LevelInfo:
		return h.w.Info(msg)
	}
	return h.w.Debug(msg)
}

func (h *syslogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &syslogHandler{mu: h.mu, buf: h.buf, inner: h.inner.WithAttrs(as), w: h.w}
}

func (h *syslogHandler) WithGroup(name string) slog.Handler {
	return &syslogHandler{mu: h.mu, buf: h.buf, inner: h.inner.WithGroup(name), w: h.w}
}
