package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/dataplane"
	"vfsd/seccomp"
)

// Cache modes (virtiofsd's -o cache=none is accepted as "never").
var CacheModes = []string{"auto", "always", "never", "metadata"}

// Limits.
const (
	MaxRequestQueues = 255 // the queue index in SET_VRING_{KICK,CALL,ERR} is 8 bits
	MaxPoolSize      = 1 << 16
)

// Options configures one worker run.
type Options struct {
	SocketPath  string // listen here (exactly one of SocketPath, ListenFD, ConnFD)
	ListenFD    int    // inherited listening socket; -1: none
	ConnFD      int    // inherited connected vhost-user socket; -1: none
	SocketGroup string // group owning the socket file (SocketPath only)

	SharedDir     string
	Tag           string // accepted for compatibility: the tag is QEMU's (vhost-user-fs-pci tag=)
	Cache         string // one of CacheModes
	RequestQueues int    // request virtqueues besides hiprio, 1..MaxRequestQueues
	PoolSize      int    // goroutines for blocking requests, 1..MaxPoolSize
	// PollMax caps each queue's adaptive polling window before it sleeps
	// (engine/dataplane poll.go); 0 turns polling off.
	PollMax time.Duration
	// NoUring: every READ is its own preadv; by default the READs of a
	// batch go to the kernel together through io_uring where it is
	// available (engine/dataplane reads.go).
	NoUring bool

	// Supervised: this worker is a child of engine/supervisor (vfsd's
	// default mode): the connection is ConnFD, state memfds and open fds go
	// to the fd store (VFSD_NOTIFY_FD), and stored fds come back as
	// LISTEN_FDS. Resume: a predecessor died or was upgraded
	// (VFSD_RESUME=1): take its state back and resume the rings.
	Supervised, Resume bool

	// Seccomp is what the syscall filter, installed as the last step of
	// start-up, does with a syscall the allowlist lacks (the zero value is
	// seccomp.ActionKill; ActionNone installs nothing).
	Seccomp seccomp.Action

	// PprofAddr and MetricsAddr ("" off): serve net/http/pprof and
	// Prometheus /metrics on a loopback TCP address or unix:/path
	// (CheckAddr); opened before the seccomp filter, which then allows
	// what the HTTP server needs.
	PprofAddr, MetricsAddr string
	// listeners: listening sockets for those addresses the supervisor
	// opened and handed over (MetricsListenerName, PprofListenerName), by
	// name; set by runSupervised.
	listeners map[string]int

	// Filesystem switches handed to engine/passthrough (virtiofsd's
	// -o no_xattr, --writeback, --allow-direct-io,
	// --inode-file-handles=never). vfsd serves extended attributes unless
	// NoXattr is set.
	NoXattr, Writeback, AllowDirectIO, EagerInodes bool

	Logger *slog.Logger // nil means slog.Default()
}

// DefaultOptions returns the defaults: cache auto, one request queue, a
// pool of dataplane.DefaultPoolSize, no socket.
func DefaultOptions() Options {
	return Options{ListenFD: -1, ConnFD: -1, Cache: "auto", RequestQueues: 1, PoolSize: dataplane.DefaultPoolSize,
		PollMax: dataplane.DefaultPollMax}
}

// Validate checks o: one connection source, a shared directory that exists
// and can be opened, known cache mode, counts in range.
func (o *Options) Validate() error {
	n := 0
	if o.SocketPath != "" {
		n++
	}
	if o.ListenFD >= 0 {
		n++
	}
	if o.ConnFD >= 0 {
		n++
	}
	switch {
	case n == 0:
		return errors.New("no vhost-user socket: give --socket-path or --fd")
	case n > 1:
		return errors.New("give only one of --socket-path, --fd and --vhost-fd")
	}
	if o.Supervised && o.ConnFD < 0 {
		return errors.New("a supervised worker needs --vhost-fd")
	}
	if o.Resume && !o.Supervised {
		return errors.New("resume needs a supervisor")
	}
	if o.SocketGroup != "" && o.SocketPath == "" {
		return errors.New("--socket-group needs --socket-path")
	}
	for _, fd := range []int{o.ListenFD, o.ConnFD} {
		if fd >= 0 {
			if fd <= 2 {
				return fmt.Errorf("socket fd %d is a standard stream", fd)
			}
			if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_STREAM {
				return fmt.Errorf("fd %d is not a stream socket", fd)
			}
		}
	}
	if o.SharedDir == "" {
		return errors.New("no shared directory: give --shared-dir (or -o source=DIR)")
	}
	fi, err := os.Stat(o.SharedDir)
	if err != nil {
		return fmt.Errorf("shared directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("shared directory %s is not a directory", o.SharedDir)
	}
	dfd, err := unix.Open(o.SharedDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("shared directory %s: %w", o.SharedDir, err)
	}
	unix.Close(dfd)
	ok := false
	for _, c := range CacheModes {
		ok = ok || c == o.Cache
	}
	if !ok {
		return fmt.Errorf("cache mode %q: want auto, always, never or metadata", o.Cache)
	}
	if o.RequestQueues < 1 || o.RequestQueues > MaxRequestQueues {
		return fmt.Errorf("%d request queues: want 1..%d", o.RequestQueues, MaxRequestQueues)
	}
	if o.PoolSize < 1 || o.PoolSize > MaxPoolSize {
		return fmt.Errorf("thread pool size %d: want 1..%d", o.PoolSize, MaxPoolSize)
	}
	for _, a := range [...]struct{ flag, addr string }{{"--pprof-addr", o.PprofAddr}, {"--metrics-addr", o.MetricsAddr}} {
		if a.addr != "" {
			if err := CheckAddr(a.addr); err != nil {
				return fmt.Errorf("%s %v", a.flag, err)
			}
		}
	}
	return nil
}
