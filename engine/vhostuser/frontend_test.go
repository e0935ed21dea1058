package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/vring/mem"
)

// fakeBackend records what the Device asks of it.
type fakeBackend struct {
	mu      sync.Mutex
	running map[int]QueueConfig
	events  []string
	advance uint16 // StopQueue reports LastAvail+advance
	tables  []*mem.Table
}

func newFakeBackend() *fakeBackend { return &fakeBackend{running: map[int]QueueConfig{}} }

func (b *fakeBackend) log(f string, a ...any) { b.events = append(b.events, fmt.Sprintf(f, a...)) }

func (b *fakeBackend) StartQueue(i int, c QueueConfig) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.running[i]; ok {
		return errors.New("already running")
	}
	if c.Mem == nil {
		return errors.New("no memory")
	}
	b.running[i] = c
	if c.Tracked != nil { // as the data plane does, once tracking is attached
		c.Tracked()
	}
	b.log("start %d size=%d desc=%#x avail=%#x used=%#x base=%d eventidx=%v kick=%v call=%v",
		i, c.Size, c.Desc, c.Avail, c.Used, c.LastAvail, c.EventIdx, c.Kick >= 0, c.Call >= 0)
	return nil
}

func (b *fakeBackend) StopQueue(i int) (uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.running[i]
	if !ok {
		return 0, errors.New("not running")
	}
	delete(b.running, i)
	b.log("stop %d", i)
	return c.LastAvail + b.advance, nil
}

func (b *fakeBackend) SetMem(t *mem.Table) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tables = append(b.tables, t)
	b.log("setmem %d regions", len(t.Regions()))
	return nil
}

func (b *fakeBackend) SetCall(i int, fd int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.running[i]; !ok {
		return errors.New("not running")
	}
	b.log("setcall %d", i)
	return nil
}

func (b *fakeBackend) SetErr(i int, fd int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log("seterr %d", i)
	return nil
}

func (b *fakeBackend) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.events
	b.events = nil
	return e
}

// frontend is a minimal test-side vhost-user frontend on a socketpair.
type frontend struct {
	t    *testing.T
	fd   int
	dev  *Device
	be   *fakeBackend
	done chan error
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newFrontend(t *testing.T) *frontend {
	t.Helper()
	return newFrontendOpts(t, Options{RequestQueues: 2})
}

// newFrontendOpts is newFrontend with device options (Backend and Logger
// are filled in).
func newFrontendOpts(t *testing.T, o Options) *frontend {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(sp[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	be := newFakeBackend()
	o.Backend, o.Logger = be, quietLogger()
	dev, err := NewDevice(o)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(sp[1])
	if err != nil {
		t.Fatal(err)
	}
	f := &frontend{t: t, fd: sp[0], dev: dev, be: be, done: make(chan error, 1)}
	go func() {
		err := dev.Serve(c)
		c.Close()
		f.done <- err
	}()
	t.Cleanup(func() {
		if f.fd >= 0 {
			unix.Close(f.fd)
			f.fd = -1
			<-f.done
		}
	})
	return f
}

// sendRaw sends b with fds and closes fds.
func (f *frontend) sendRaw(b []byte, fds ...int) {
	f.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	err := unix.Sendmsg(f.fd, b, oob, nil, unix.MSG_NOSIGNAL)
	for _, fd := range fds { // the frontend gives its fds away
		unix.Close(fd)
	}
	if err != nil {
		f.t.Fatalf("sendmsg: %v", err)
	}
}

func (f *frontend) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	f.sendRaw(EncodeMessage(req, Version|flags, payload), fds...)
}

// recv reads one reply and checks its header.
func (f *frontend) recv(req uint32) []byte {
	f.t.Helper()
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(fdReader(f.fd), hb[:]); err != nil {
		f.t.Fatalf("reply to %s: %v", RequestName(req), err)
	}
	r := binary.LittleEndian.Uint32(hb[0:])
	flags := binary.LittleEndian.Uint32(hb[4:])
	size := binary.LittleEndian.Uint32(hb[8:])
	if r != req || flags != Version|FlagReply || size > 64 {
		f.t.Fatalf("reply header %d %#x %d to %s", r, flags, size, RequestName(req))
	}
	p := make([]byte, size)
	if _, err := io.ReadFull(fdReader(f.fd), p); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *frontend) getU64(req uint32) uint64 {
	f.t.Helper()
	f.send(req, 0, nil)
	p := f.recv(req)
	if len(p) != 8 {
		f.t.Fatalf("%s: reply of %d bytes", RequestName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// ack sends a message with NEED_REPLY and returns the REPLY_ACK value.
func (f *frontend) ack(req uint32, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, FlagNeedReply, payload, fds...)
	p := f.recv(req)
	if len(p) != 8 {
		f.t.Fatalf("%s: ack of %d bytes", RequestName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// disconnect closes the frontend's socket and returns Serve's result.
func (f *frontend) disconnect() error {
	f.t.Helper()
	unix.Close(f.fd)
	f.fd = -1
	select {
	case err := <-f.done:
		return err
	case <-time.After(5 * time.Second):
		f.t.Fatal("Serve did not return after disconnect")
		return nil
	}
}

// closed waits for Serve to end by itself and returns its error.
func (f *frontend) closed() error {
	f.t.Helper()
	select {
	case err := <-f.done:
		unix.Close(f.fd)
		f.fd = -1
		return err
	case <-time.After(5 * time.Second):
		f.t.Fatal("Serve did not return")
		return nil
	}
}

type fdReader int

// Read retries EINTR: the socket has SO_RCVTIMEO, and a read with a timeout
// is not restarted after the runtime's signals (SIGURG preemption).
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

func stateMsg(idx, num uint32) []byte { return VringState{idx, num}.bytes() }

func addrMsg(idx uint32, desc, used, avail uint64) []byte {
	b := make([]byte, sizeVringAddr)
	binary.LittleEndian.PutUint32(b[0:], idx)
	binary.LittleEndian.PutUint64(b[8:], desc)
	binary.LittleEndian.PutUint64(b[16:], used)
	binary.LittleEndian.PutUint64(b[24:], avail)
	return b
}

func memRegion(b []byte, r mem.Region) {
	binary.LittleEndian.PutUint64(b[0:], r.GuestAddr)
	binary.LittleEndian.PutUint64(b[8:], r.Size)
	binary.LittleEndian.PutUint64(b[16:], r.UserAddr)
	binary.LittleEndian.PutUint64(b[24:], r.MmapOffset)
}

func memTable(regs ...mem.Region) []byte {
	b := make([]byte, sizeMemHeader+len(regs)*sizeMemRegion)
	binary.LittleEndian.PutUint32(b, uint32(len(regs)))
	for i, r := range regs {
		memRegion(b[sizeMemHeader+i*sizeMemRegion:], r)
	}
	return b
}

func memRegMsg(r mem.Region) []byte {
	b := make([]byte, sizeMemRegMsg)
	memRegion(b[8:], r)
	return b
}

func memfd(t *testing.T, size uint64) int {
	t.Helper()
	fd, err := mem.NewMemfd("guest", size)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// openFDs counts the process's open fds.
func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
