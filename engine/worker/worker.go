package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"

	"golang.org/x/sys/unix"

	"vfsd/engine/dataplane"
	"vfsd/engine/fdstore"
	"vfsd/engine/journal"
	"vfsd/engine/metrics"
	"vfsd/engine/passthrough"
	"vfsd/engine/vhostuser"
)

// Listen creates the listening vhost-user socket at o.SocketPath (replacing a
// stale socket file, never another kind of file) and gives it to
// o.SocketGroup, mode 0660, when set. It returns the socket fd.
func Listen(o Options) (int, error) {
	if fi, err := os.Lstat(o.SocketPath); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return -1, fmt.Errorf("socket path %s exists and is not a socket", o.SocketPath)
		}
		if err := os.Remove(o.SocketPath); err != nil {
			return -1, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: o.SocketPath}); err != nil {
		return fail(fmt.Errorf("bind %s: %w", o.SocketPath, err))
	}
	if o.SocketGroup != "" {
		gid, err := lookupGroup(o.SocketGroup)
		if err == nil {
			err = os.Chown(o.SocketPath, -1, gid)
		}
		if err == nil {
			err = os.Chmod(o.SocketPath, 0o660)
		}
		if err != nil {
			os.Remove(o.SocketPath)
			return fail(fmt.Errorf("socket group %s: %w", o.SocketGroup, err))
		}
	}
	if err := unix.Listen(fd, 1); err != nil {
		os.Remove(o.SocketPath)
		return fail(fmt.Errorf("listen %s: %w", o.SocketPath, err))
	}
	return fd, nil
}

func lookupGroup(name string) (int, error) {
	if g, err := user.LookupGroup(name); err == nil {
		return strconv.Atoi(g.Gid)
	}
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	return 0, fmt.Errorf("unknown group")
}

// AcceptOne waits for one connection on the listening socket lfd and
// returns it (close-on-exec); cancelling ctx ends the wait with ctx.Err().
// It does not close lfd.
func AcceptOne(ctx context.Context, lfd int) (int, error) {
	stop := context.AfterFunc(ctx, func() { unix.Shutdown(lfd, unix.SHUT_RDWR) })
	defer stop()
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if ctx.Err() != nil {
			if err == nil {
				unix.Close(fd)
			}
			return -1, ctx.Err()
		}
		if err == unix.EAGAIN {
			// An inherited non-blocking listener: wait for a connection.
			fds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
			unix.Poll(fds, -1)
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("accept: %w", err)
		}
		return fd, nil
	}
}

// canceller is implemented by filesystems that can end waits that would
// block a queue's stop (blocking lock requests).
type canceller interface{ CancelWaits() }

// Run serves one vhost-user connection as o describes and returns when the
// frontend disconnects (nil), ctx is cancelled (nil), or the connection
// breaks the protocol (an error). Validate o first.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Supervised {
		return runSupervised(ctx, o, log)
	}
	fs, err := passthrough.New(passthrough.Options{Root: o.SharedDir, Cache: o.Cache, Xattr: !o.NoXattr,
		Writeback: o.Writeback, AllowDirectIO: o.AllowDirectIO, EagerInodes: o.EagerInodes,
		Queues: journalQueues(o.RequestQueues)})
	if err != nil {
		return fmt.Errorf("shared directory %s: %w", o.SharedDir, err)
	}
	defer fs.Close()

	conn := o.ConnFD
	switch {
	case o.SocketPath != "":
		lfd, err := Listen(o)
		if err != nil {
			return err
		}
		defer os.Remove(o.SocketPath)
		log.Info("waiting for a vhost-user connection", "socket", o.SocketPath)
		conn, err = AcceptOne(ctx, lfd)
		unix.Close(lfd)
		if err != nil {
			return ignoreCancel(err)
		}
	case o.ListenFD >= 0:
		log.Info("waiting for a vhost-user connection", "fd", o.ListenFD)
		conn, err = AcceptOne(ctx, o.ListenFD)
		unix.Close(o.ListenFD)
		if err != nil {
			return ignoreCancel(err)
		}
	}
	return serve(ctx, conn, fs, o, log, nil)
}

func ignoreCancel(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// journalQueues is the number of rings the filesystem's journal covers.
func journalQueues(requestQueues int) int { return min(1+requestQueues, journal.MaxQueues) }

// serve runs the device on the connected socket fd (taking ownership). st,
// when not nil, is the persistent ring state of a supervised worker.
func serve(ctx context.Context, fd int, fs *passthrough.FS, o Options, log *slog.Logger, st *state) error {
	c, err := vhostuser.NewConn(fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	defer c.Close()
	ob := newObserver(o, 1+o.RequestQueues)
	reg := ob.reg
	if st != nil && st.reqs != nil { // request counts for the supervisor's status
		if reg != nil {
			reg.ShareCounts(st.reqs)
		} else {
			reg = metrics.NewCounting(st.reqs)
		}
	}
	pollMax := o.PollMax
	if pollMax == 0 {
		pollMax = -1 // dataplane: negative is off
	}
	dp, err := dataplane.New(dataplane.Options{Handler: fs, PoolSize: o.PoolSize, Logger: log, Metrics: reg, PollMax: pollMax,
		NoUring: o.NoUring})
	if err != nil {
		return err
	}
	defer dp.Close()
	ob.register(fs, st)
	if err := ob.start(o, log); err != nil {
		return err
	}
	defer ob.close()
	var h any = fs
	cancel, _ := h.(canceller)
	do := vhostuser.Options{
		Backend: dp, RequestQueues: o.RequestQueues, Logger: log,
		Disconnect: func() {
			if cancel != nil {
				cancel.CancelWaits()
			}
		},
	}
	if st != nil {
		do.Inflight, do.Rings, do.Resume = st.infl, st, o.Resume
	}
	dev, err := vhostuser.NewDevice(do)
	if err != nil {
		return err
	}
	if err := lockDown(o, log); err != nil {
		return err
	}
	log.Info("vhost-user frontend connected", "queues", dev.NumQueues(), "resume", o.Resume)
	if st != nil {
		if err := fdstore.Ready(); err != nil {
			log.Warn("notify READY=1", "err", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { c.Shutdown() })
	defer stop()
	return dev.Serve(c)
}
