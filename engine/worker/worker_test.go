package worker

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/seccomp"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	dgram, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dgram)
	base := func() Options {
		o := DefaultOptions()
		o.SocketPath, o.SharedDir = "/s", dir
		return o
	}
	cases := []struct {
		name string
		mod  func(o *Options)
		err  string
	}{
		{"ok", func(o *Options) {}, ""},
		{"conn fd", func(o *Options) { o.SocketPath, o.ConnFD = "", sp[1] }, ""},
		{"no socket", func(o *Options) { o.SocketPath = "" }, "no vhost-user socket"},
		{"two sockets", func(o *Options) { o.ListenFD = sp[0] }, "only one"},
		{"stdio fd", func(o *Options) { o.SocketPath, o.ListenFD = "", 0 }, "standard stream"},
		{"datagram fd", func(o *Options) { o.SocketPath, o.ListenFD = "", dgram }, "not a stream socket"},
		{"group without path", func(o *Options) { o.SocketPath, o.ConnFD, o.SocketGroup = "", sp[1], "kvm" }, "needs --socket-path"},
		{"no dir", func(o *Options) { o.SharedDir = "" }, "no shared directory"},
		{"missing dir", func(o *Options) { o.SharedDir = filepath.Join(dir, "nope") }, "no such file"},
		{"file", func(o *Options) { o.SharedDir = file }, "not a directory"},
		{"cache", func(o *Options) { o.Cache = "none" }, "cache mode"},
		{"queues", func(o *Options) { o.RequestQueues = 256 }, "request queues"},
		{"pool", func(o *Options) { o.PoolSize = 0 }, "thread pool"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := base()
			c.mod(&o)
			err := o.Validate()
			if c.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("err = %v, want %q", err, c.err)
			}
		})
	}
}

// Run on a connected socket answers messages and returns nil when the
// frontend hangs up.
func TestRunConnFD(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.ConnFD, o.SharedDir, o.Logger, o.RequestQueues = sp[1], t.TempDir(), quiet(), 3
	o.Seccomp = seccomp.ActionNone // in-process: a filter would outlive the test
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), o) }()
	// GET_QUEUE_NUM: 1 hiprio + 3 request queues.
	msg := make([]byte, 12)
	binary.LittleEndian.PutUint32(msg[0:], 17)
	binary.LittleEndian.PutUint32(msg[4:], 1)
	unix.Write(sp[0], msg)
	reply := make([]byte, 20)
	if n, err := io.ReadFull(fdReader(sp[0]), reply); err != nil {
		t.Fatal(n, err)
	}
	if q := binary.LittleEndian.Uint64(reply[12:]); q != 4 {
		t.Fatalf("GET_QUEUE_NUM = %d", q)
	}
	unix.Close(sp[0])
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after disconnect")
	}
}

// Cancelling the context ends the wait for a connection and removes the
// socket file.
func TestRunCancelWhileListening(t *testing.T) {
	o := DefaultOptions()
	o.SocketPath = filepath.Join(t.TempDir(), "s.sock")
	o.SharedDir, o.Logger = t.TempDir(), quiet()
	o.Seccomp = seccomp.ActionNone
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(o.SocketPath); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket never appeared")
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := os.Stat(o.SocketPath); !os.IsNotExist(err) {
		t.Fatalf("socket file left behind: %v", err)
	}
}

// A regular file at the socket path is never replaced.
func TestListenRefusesNonSocket(t *testing.T) {
	o := DefaultOptions()
	o.SocketPath = filepath.Join(t.TempDir(), "file")
	os.WriteFile(o.SocketPath, []byte("keep"), 0o644)
	if fd, err := Listen(o); err == nil {
		unix.Close(fd)
		t.Fatal("Listen replaced a regular file")
	}
}

type fdReader int

// Read retries EINTR, as a blocking read interrupted by one of the runtime's
// signals may answer it.
func (r fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(r), p)
	for err == unix.EINTR {
		n, err = unix.Read(int(r), p)
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}
