package dataplane

import (
	"encoding/binary"
	"io"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/vhostuser"
	"vfsd/vring/driver"
	"vfsd/vring/mem"
)

const (
	guestBase = 0x100000
	guestSize = 4 << 20
	attrOut   = 104 // sizeof(struct fuse_attr_out)
	opPanic   = 60  // test opcode: the handler panics
	opSilent  = 61  // test opcode: the handler leaves the reply undone
)

// fakeFS answers GETATTR with a 104-byte payload and FSYNC (a Blocking
// opcode) once its gate lets it, and misbehaves on request for the test
// opcodes.
type fakeFS struct {
	gate    chan struct{} // FSYNC waits for a receive on gate (nil: no wait)
	started chan uint64   // FSYNC reports its unique when it starts (nil: no report)
	attr    [attrOut]byte
}

func (f *fakeFS) Handle(req *fuse.Request, rep *fuse.Reply) {
	switch req.Opcode {
	case fuse.OpGetattr:
		rep.Ok(f.attr[:])
	case fuse.OpFsync:
		if f.started != nil {
			f.started <- req.Unique
		}
		if f.gate != nil {
			<-f.gate
		}
		rep.Error(0)
	case opPanic:
		panic("handler bug")
	case opSilent:
	default:
		rep.Error(unix.ENOSYS)
	}
}

type used struct {
	head    uint16
	written uint32
}

// harness plays the guest and the frontend for one queue.
type harness struct {
	t     testing.TB
	mp    mem.Mapped
	tab   *mem.Table
	ring  *driver.Ring
	arena *driver.Arena
	kick  int
	call  int
	errFD int
	dp    *Dataplane
	cfg   vhostuser.QueueConfig
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newHarness(t testing.TB, h fuse.Handler, size int, eventIdx bool) *harness {
	t.Helper()
	fd, err := mem.NewMemfd("guest", guestSize)
	if err != nil {
		t.Fatal(err)
	}
	mp, err := mem.Map(fd, mem.Region{GuestAddr: guestBase, Size: guestSize, UserAddr: 0x7f0000000000})
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := mem.NewTable([]mem.Mapped{mp})
	if err != nil {
		t.Fatal(err)
	}
	r, err := driver.New(mp.Data, guestBase, size, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	arena, err := driver.NewArena(r.End(), guestBase+guestSize-r.End(), 64)
	if err != nil {
		t.Fatal(err)
	}
	hs := &harness{t: t, mp: mp, tab: tab, ring: r, arena: arena}
	for _, p := range []*int{&hs.kick, &hs.call, &hs.errFD} {
		if *p, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			t.Fatal(err)
		}
	}
	hs.dp, err = New(Options{Handler: h, PoolSize: 4, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	desc, avail, usedAddr := r.Addrs()
	hs.cfg = vhostuser.QueueConfig{Size: size, Desc: desc, Avail: avail, Used: usedAddr, EventIdx: eventIdx,
		Mem: tab, Kick: hs.kick, Call: hs.call, Err: hs.errFD}
	t.Cleanup(hs.close)
	return hs
}

func (h *harness) start(i int) {
	h.t.Helper()
	if err := h.dp.StartQueue(i, h.cfg); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) close() {
	h.dp.Close()
	for _, fd := range []int{h.kick, h.call, h.errFD} {
		unix.Close(fd)
	}
	h.mp.Unmap()
}

func (h *harness) bytes(gpa, n uint64) []byte {
	b, err := h.ring.Bytes(gpa, n)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// request lays out a FUSE request (in header + arg) and a reply buffer of
// outLen bytes and returns the {gpa,len} lists for driver.Add.
func (h *harness) request(op uint32, unique uint64, arg []byte, outLen uint64) (rd, wr [][2]uint64) {
	n := uint64(fuse.InHeaderSize + len(arg))
	in, err := h.arena.Alloc(n)
	if err != nil {
		h.t.Fatal(err)
	}
	b := h.bytes(in, n)
	binary.LittleEndian.PutUint32(b[0:], uint32(n))
	binary.LittleEndian.PutUint32(b[4:], op)
	binary.LittleEndian.PutUint64(b[8:], unique)
	binary.LittleEndian.PutUint64(b[16:], fuse.RootID)
	copy(b[fuse.InHeaderSize:], arg)
	out, err := h.arena.Alloc(outLen)
	if err != nil {
		h.t.Fatal(err)
	}
	return [][2]uint64{{in, n}}, [][2]uint64{{out, outLen}}
}

func (h *harness) add(rd, wr [][2]uint64) uint16 {
	h.t.Helper()
	head, err := h.ring.Add(rd, wr)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.ring.NeedKick() {
		signal(h.kick)
	}
	return head
}

// waitUsed collects n used elements, failing after timeout.
func (h *harness) waitUsed(n int, timeout time.Duration) []used {
	h.t.Helper()
	var got []used
	deadline := time.Now().Add(timeout)
	for len(got) < n {
		for {
			head, w, ok := h.ring.PollUsed()
			if !ok {
				break
			}
			got = append(got, used{head, w})
		}
		if err := h.ring.Err(); err != nil {
			h.t.Fatal(err)
		}
		if len(got) >= n {
			break
		}
		left := time.Until(deadline)
		if left <= 0 {
			h.t.Fatalf("got %d of %d used elements: %v", len(got), n, got)
		}
		fds := []unix.PollFd{{Fd: int32(h.call), Events: unix.POLLIN}}
		unix.Poll(fds, int(min(left, 20*time.Millisecond)/time.Millisecond)+1)
		var buf [8]byte
		unix.Read(h.call, buf[:])
	}
	return got
}

// outHeader reads the FUSE out header at gpa.
func (h *harness) outHeader(gpa uint64) (length uint32, errno int32, unique uint64) {
	b := h.bytes(gpa, fuse.OutHeaderSize)
	return binary.LittleEndian.Uint32(b[0:]), int32(binary.LittleEndian.Uint32(b[4:])), binary.LittleEndian.Uint64(b[8:])
}
