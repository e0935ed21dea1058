package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
	"vfsd/vring/driver"
)

// Hostile-guest tests: malformed rings and requests through the real
// daemon. Each case gets an error reply, or its chain returned with nothing
// written where the spec drops it; afterwards the daemon serves well-formed
// requests on every queue, the worker is the same process (no crash and
// silent restart), and its RSS stays bounded.

// hostile is one daemon with raw access to its rings.
type hostile struct {
	t   *testing.T
	e   *Env
	pid int // the process serving the rings (the worker under a supervisor)
	rss uint64
}

func startHostile(t *testing.T, o Options) *hostile {
	t.Helper()
	e := Start(t, o)
	if e.Kind != daemon.Vfsd {
		t.Skip("hostile ring tests target vfsd (the reference daemon exits on some malformed chains)")
	}
	h := &hostile{t: t, e: e}
	h.pid = h.servingPID()
	h.healthy("start")
	h.rss = vmRSS(t, h.pid)
	return h
}

// servingPID finds the worker (supervisor mode) or the daemon itself.
func (h *hostile) servingPID() int {
	h.t.Helper()
	if pid, ok := h.e.Daemon.WorkerPID(); ok {
		return pid
	}
	return h.e.Daemon.PID()
}

// vmRSS reads VmRSS of pid, in bytes.
func vmRSS(t testing.TB, pid int) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	must(t, "open status", err)
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			must(t, "parse VmRSS", err)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

const maxRSSGrowth = 200 << 20

// healthy checks that every queue serves a well-formed request, that the
// serving process did not change (a crash the supervisor hid) and that its
// RSS is bounded.
func (h *hostile) healthy(what string) {
	h.t.Helper()
	select {
	case <-h.e.Daemon.Done():
		h.t.Fatalf("%s: daemon exited: %v\n%s", what, h.e.Daemon.ExitErr(), h.e.Daemon.Output())
	default:
	}
	for q := range h.e.FE.NumQueues() {
		ctx, cancel := context.WithTimeout(h.e.Ctx, 10*time.Second)
		rep, err := h.e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpGetattr, NodeID: root, Queue: q,
			Args: [][]byte{make([]byte, 16)}, Out: fuse.AttrOutSize}, nil)
		cancel()
		if err != nil || rep.Error != 0 {
			h.t.Fatalf("%s: GETATTR on queue %d: %v %v (queue err %v)\n%s", what, q, err, rep.Err(), h.e.FE.Queue(q).Err(), h.e.Daemon.Output())
		}
	}
	if pid := h.servingPID(); pid != h.pid {
		h.t.Fatalf("%s: the serving process changed from %d to %d: it crashed\n%s", what, h.pid, pid, h.e.Daemon.Output())
	}
	if h.rss != 0 {
		if rss := vmRSS(h.t, h.pid); rss > h.rss+maxRSSGrowth {
			h.t.Fatalf("%s: worker RSS grew from %d to %d MiB", what, h.rss>>20, rss>>20)
		}
	}
}

// buf allocates guest RAM holding b (n bytes of room when b is shorter).
func (h *hostile) buf(b []byte, n int) uint64 {
	h.t.Helper()
	n = max(n, len(b), 1)
	gpa, err := h.e.FE.Mem.Alloc(uint64(n), true)
	must(h.t, "alloc guest RAM", err)
	h.t.Cleanup(func() { h.e.FE.Mem.Free(gpa, uint64(n)) })
	if len(b) > 0 {
		must(h.t, "write guest RAM", h.e.FE.Mem.WriteAt(b, gpa))
	}
	return gpa
}

// request is a FUSE request: in header (len = the real length unless
// length != 0) and args.
func request(op uint32, nodeid uint64, unique uint64, length uint32, args ...[]byte) []byte {
	b := make([]byte, fuse.InHeaderSize)
	for _, a := range args {
		b = append(b, a...)
	}
	if length == 0 {
		length = uint32(len(b))
	}
	le := binary.LittleEndian
	le.PutUint32(b[0:], length)
	le.PutUint32(b[4:], op)
	le.PutUint64(b[8:], unique)
	le.PutUint64(b[16:], nodeid)
	return b
}

var hostileUnique uint64 = 1 << 40

// submit places a chain on queue qi and waits for the device to return
// it. mutate, when set, rewrites the chain's descriptors (head given)
// before the device may look at them: the kick is held back while it runs.
func (h *hostile) submit(qi int, rd, wr []frontend.Buf, mutate func(r *driver.Ring, head uint16)) uint32 {
	h.t.Helper()
	q := h.e.FE.Queue(qi)
	for deadline := time.Now().Add(5 * time.Second); q.Outstanding() != 0; {
		if time.Now().After(deadline) {
			h.t.Fatalf("queue %d never went idle", qi)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(2 * time.Millisecond) // the device is back in epoll_wait
	if mutate != nil {
		// Make NeedKick say no: with EVENT_IDX an avail_event the new
		// index does not pass, else NO_NOTIFY. (The device writes both
		// only while it runs, and it is idle.)
		q.WithRing(func(r *driver.Ring) {
			_, _, used := r.Addrs()
			b, err := r.Bytes(used, uint64(4+8*r.Size()+2))
			must(h.t, "used ring", err)
			binary.LittleEndian.PutUint16(b[0:], binary.LittleEndian.Uint16(b[0:])|driver.UsedFNoNotify)
			binary.LittleEndian.PutUint16(b[4+8*r.Size():], r.AvailIdx()+0x4000)
		})
	}
	c := frontend.NewCompletion()
	must(h.t, "submit", q.Submit(rd, wr, c))
	if mutate != nil {
		q.WithRing(func(r *driver.Ring) {
			mutate(r, c.Head)
			_, _, used := r.Addrs()
			b, _ := r.Bytes(used, 2)
			binary.LittleEndian.PutUint16(b, binary.LittleEndian.Uint16(b)&^driver.UsedFNoNotify)
		})
		q.Kick()
	}
	ctx, cancel := context.WithTimeout(h.e.Ctx, 10*time.Second)
	defer cancel()
	if err := c.Wait(ctx); err != nil && !errors.Is(err, frontend.ErrBadUsed) {
		h.t.Fatalf("queue %d: chain never returned: %v (queue err %v)\n%s", qi, err, q.Err(), h.e.Daemon.Output())
	}
	return c.Written
}

// reply reads the out header at gpa.
func (h *hostile) reply(gpa uint64) (n uint32, errno int32, unique uint64) {
	var b [fuse.OutHeaderSize]byte
	must(h.t, "read reply", h.e.FE.Mem.ReadAt(b[:], gpa))
	le := binary.LittleEndian
	return le.Uint32(b[0:]), int32(le.Uint32(b[4:])), le.Uint64(b[8:])
}

// wantDropped: the chain came back with nothing written.
func (h *hostile) wantDropped(what string, written uint32) {
	h.t.Helper()
	if written != 0 {
		h.t.Fatalf("%s: %d bytes written, want the chain returned empty", what, written)
	}
	h.healthy(what)
}

// wantError: the chain came back with exactly an error reply (or was
// dropped, when dropOK).
func (h *hostile) wantError(what string, written uint32, out uint64, dropOK bool) {
	h.t.Helper()
	if written == 0 && dropOK {
		h.healthy(what)
		return
	}
	n, eno, _ := h.reply(out)
	if written != fuse.OutHeaderSize || n != fuse.OutHeaderSize || eno >= 0 {
		h.t.Fatalf("%s: written %d, reply len %d error %d; want an error reply", what, written, n, eno)
	}
	h.healthy(what)
}

func getattrReq() []byte { return request(fuse.OpGetattr, root, hostileUnique, 0, make([]byte, 16)) }

func TestHostileChains(t *testing.T) {
	h := startHostile(t, Options{RequestQueues: 2, QueueSize: 16})
	req := h.buf(getattrReq(), 0)
	reqLen := uint64(fuse.InHeaderSize + 16)
	out := h.buf(nil, 4096)
	good := func() ([]frontend.Buf, []frontend.Buf) {
		return []frontend.Buf{{req, reqLen}}, []frontend.Buf{{out, fuse.OutHeaderSize + fuse.AttrOutSize}}
	}
	// A well-formed chain through submit itself works (and the mutate
	// path does not disturb it).
	rd, wr := good()
	if n := h.submit(1, rd, wr, func(*driver.Ring, uint16) {}); n != fuse.OutHeaderSize+fuse.AttrOutSize {
		t.Fatalf("well-formed raw GETATTR: %d bytes", n)
	}
	next := func(r *driver.Ring, i uint16) uint16 { return binary.LittleEndian.Uint16(r.RawDesc(int(i))[14:]) }
	setNext := func(r *driver.Ring, i, to uint16) {
		d := r.RawDesc(int(i))
		binary.LittleEndian.PutUint16(d[12:], binary.LittleEndian.Uint16(d[12:])|driver.DescFNext)
		binary.LittleEndian.PutUint16(d[14:], to)
	}
	for qi := 1; qi <= 2; qi++ {
		// Loops: the last descriptor back to the head, a descriptor to
		// itself, a loop through every descriptor of the queue.
		rd, wr = good()
		h.wantDropped("loop to the head", h.submit(qi, rd, wr, func(r *driver.Ring, head uint16) {
			setNext(r, next(r, head), head)
		}))
		rd, wr = good()
		h.wantDropped("self loop", h.submit(qi, rd, wr, func(r *driver.Ring, head uint16) {
			setNext(r, next(r, head), next(r, head))
		}))
		many := make([]frontend.Buf, 16)
		for i := range many {
			many[i] = frontend.Buf{out, 16}
		}
		many[0] = frontend.Buf{req, reqLen}
		h.wantDropped("loop through the whole queue", h.submit(qi, many[:1], many[1:], func(r *driver.Ring, head uint16) {
			last := head
			for range 15 {
				last = next(r, last)
			}
			setNext(r, last, head)
		}))
		// next out of the table.
		rd, wr = good()
		h.wantDropped("next beyond the queue", h.submit(qi, rd, wr, func(r *driver.Ring, head uint16) {
			setNext(r, next(r, head), 16+3)
		}))
		// Addresses outside guest RAM, lengths that run off its end.
		for _, b := range []frontend.Buf{{1 << 50, reqLen}, {^uint64(0) - 8, reqLen},
			{req, 1<<32 - 1}, {1 << 40, 0}} {
			what := fmt.Sprintf("readable buffer %#x+%#x", b[0], b[1])
			h.wantDropped(what, h.submit(qi, []frontend.Buf{b}, wr, nil))
		}
		for _, b := range []frontend.Buf{{1 << 50, 256}, {^uint64(0) - 8, 256}, {out, 1<<32 - 1}} {
			what := fmt.Sprintf("writable buffer %#x+%#x", b[0], b[1])
			h.wantDropped(what, h.submit(qi, rd, []frontend.Buf{b}, nil))
		}
		// GPA 0 is guest RAM (the rings): whatever is there is a request
		// like any other; a buffer running past a small allocation reads
		// the next bytes of RAM.
		h.wantError("readable buffer at GPA 0", h.submit(qi, []frontend.Buf{{0, reqLen}}, wr, nil), out, true)
		// Zero-length descriptors around a whole request are harmless.
		n := h.submit(qi, []frontend.Buf{{req, 0}, {req, reqLen}, {req, 0}},
			[]frontend.Buf{{out, 0}, {out, fuse.OutHeaderSize + fuse.AttrOutSize}}, nil)
		if n != fuse.OutHeaderSize+fuse.AttrOutSize {
			t.Fatalf("zero-length descriptors around a GETATTR: %d bytes", n)
		}
		// No room at all for a reply, or too little.
		h.wantDropped("no writable descriptor", h.submit(qi, rd, nil, nil))
		h.wantDropped("only zero-length writable", h.submit(qi, rd, []frontend.Buf{{out, 0}}, nil))
		h.submit(qi, rd, []frontend.Buf{{out, 8}}, nil) // 8 bytes: whatever fits, or nothing
		h.healthy("8-byte writable")
		// A write-only header: nothing readable.
		h.wantDropped("write-only chain", h.submit(qi, nil, []frontend.Buf{{req, reqLen}, {out, 256}}, nil))
		// A readable descriptor after a writable one.
		h.wantDropped("readable after writable", h.submit(qi, rd, wr, func(r *driver.Ring, head uint16) {
			w := next(r, head)
			setNext(r, w, head^1) // some other descriptor ...
			r.SetDesc(int(head^1), req, uint32(reqLen), 0, 0)
			// ... readable; the driver bookkeeping does not care.
		}))
		// Truncated header, with room for a reply: dropped.
		h.wantDropped("truncated header", h.submit(qi, []frontend.Buf{{req, 20}}, wr, nil))
		// Header split over many descriptors is fine.
		parts := []frontend.Buf{{req, 1}, {req + 1, 7}, {req + 8, 30}, {req + 38, reqLen - 38}}
		if n := h.submit(qi, parts, wr, nil); n != fuse.OutHeaderSize+fuse.AttrOutSize {
			t.Fatalf("header over 4 descriptors: %d bytes", n)
		}
	}
}

func TestHostileIndirect(t *testing.T) {
	h := startHostile(t, Options{RequestQueues: 1, QueueSize: 16, Indirect: true})
	req := h.buf(getattrReq(), 0)
	reqLen := uint64(fuse.InHeaderSize + 16)
	out := h.buf(nil, 4096)
	wr := []frontend.Buf{{out, fuse.OutHeaderSize + fuse.AttrOutSize}}
	rd := []frontend.Buf{{req, reqLen}}
	if n := h.submit(1, rd, wr, nil); n != fuse.OutHeaderSize+fuse.AttrOutSize {
		t.Fatalf("indirect GETATTR: %d bytes", n)
	}
	// A chain longer than the queue, through one indirect table.
	long := make([]frontend.Buf, 64)
	for i := range long {
		long[i] = frontend.Buf{out, 8}
	}
	h.wantDropped("indirect chain of 65 on a queue of 16", h.submit(1, rd, long, nil))
	table := func(r *driver.Ring, head uint16) []byte {
		d := r.RawDesc(int(head))
		b, err := r.Bytes(binary.LittleEndian.Uint64(d[0:]), uint64(binary.LittleEndian.Uint32(d[8:])))
		must(t, "indirect table", err)
		return b
	}
	h.wantDropped("loop inside the indirect table", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		tb := table(r, head)
		binary.LittleEndian.PutUint16(tb[16+12:], driver.DescFWrite|driver.DescFNext)
		binary.LittleEndian.PutUint16(tb[16+14:], 0)
	}))
	h.wantDropped("indirect inside indirect", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		tb := table(r, head)
		binary.LittleEndian.PutUint16(tb[12:], driver.DescFIndirect|driver.DescFNext)
	}))
	h.wantDropped("indirect table length not a multiple of 16", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		binary.LittleEndian.PutUint32(r.RawDesc(int(head))[8:], 17)
	}))
	h.wantDropped("indirect table outside guest RAM", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		binary.LittleEndian.PutUint64(r.RawDesc(int(head))[0:], 1<<50)
	}))
	h.wantDropped("indirect table of 4 GiB", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		binary.LittleEndian.PutUint32(r.RawDesc(int(head))[8:], 1<<32-16)
	}))
	h.wantDropped("empty indirect table", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		binary.LittleEndian.PutUint32(r.RawDesc(int(head))[8:], 0)
	}))
	h.wantDropped("indirect next beyond the table", h.submit(1, rd, wr, func(r *driver.Ring, head uint16) {
		binary.LittleEndian.PutUint16(table(r, head)[14:], 9)
	}))
}

// TestHostileRegions: buffers that span two memory regions are served
// when the regions are adjacent in guest-physical space, refused across a
// hole.
func TestHostileRegions(t *testing.T) {
	for _, adjacent := range []bool{true, false} {
		t.Run(fmt.Sprintf("adjacent=%v", adjacent), func(t *testing.T) {
			h := startHostile(t, Options{RequestQueues: 1, Mem: frontend.MemOptions{Size: 64 << 20, Regions: 2, Adjacent: adjacent}})
			regs := h.e.FE.Mem.Regions()
			end0 := regs[0].GuestAddr + regs[0].Size
			out := h.buf(nil, 4096)
			wr := []frontend.Buf{{out, fuse.OutHeaderSize + fuse.AttrOutSize}}
			req := getattrReq()
			if adjacent {
				// Straddle the boundary: first 20 header bytes at the end of
				// region 0, the rest at the start of region 1. The pages are
				// taken by one allocation that crosses the boundary.
				big, err := h.e.FE.Mem.Alloc(regs[0].Size, false)
				must(t, "alloc across regions", err)
				defer h.e.FE.Mem.Free(big, regs[0].Size)
				if big >= end0 || big+regs[0].Size <= end0 {
					t.Fatalf("allocation %#x+%#x does not cross %#x", big, regs[0].Size, end0)
				}
				must(t, "write", h.e.FE.Mem.WriteAt(req[:20], end0-20))
				must(t, "write", h.e.FE.Mem.WriteAt(req[20:], end0))
				if n := h.submit(1, []frontend.Buf{{end0 - 20, uint64(len(req))}}, wr, nil); n != fuse.OutHeaderSize+fuse.AttrOutSize {
					t.Fatalf("GETATTR straddling two adjacent regions: %d bytes", n)
				}
				h.healthy("straddling request")
				return
			}
			// Across the hole between the regions.
			h.wantDropped("buffer across the hole", h.submit(1, []frontend.Buf{{end0 - 20, uint64(len(req))}}, wr, nil))
			h.wantDropped("buffer in the hole", h.submit(1, []frontend.Buf{{end0 + 4096, uint64(len(req))}}, wr, nil))
		})
	}
}

// TestHostileRequests: well-framed chains carrying hostile FUSE requests.
func TestHostileRequests(t *testing.T) {
	h := startHostile(t, Options{RequestQueues: 2})
	e := h.e
	writeHost(t, e.Path("f"), []byte("data"), 0o644)
	must(t, "mkdir", os.Mkdir(e.Path("d"), 0o755))
	f := lookup(t, e, root, "f")
	d := lookup(t, e, root, "d")
	fo, err := e.C.Open(e.Ctx, f.NodeID, unix.O_RDWR, 0)
	must(t, "OPEN", err)
	do, err := e.C.Opendir(e.Ctx, d.NodeID, 0)
	must(t, "OPENDIR", err)
	must(t, "SETXATTR", e.C.Setxattr(e.Ctx, f.NodeID, "user.k", []byte("value"), 0))
	out := h.buf(nil, 8192)
	wr := []frontend.Buf{{out, 8192}}

	// Header length field: larger than the buffer, smaller than a header,
	// zero, huge.
	for _, l := range []uint32{fuse.InHeaderSize + 17, 1 << 20, 1<<32 - 1, 12, 1} {
		req := h.buf(request(fuse.OpGetattr, root, 7, l, make([]byte, 16)), 0)
		n := h.submit(1, []frontend.Buf{{req, fuse.InHeaderSize + 16}}, wr, nil)
		h.wantError(fmt.Sprintf("header len %d", l), n, out, true)
	}
	// Unknown and unsupported opcodes.
	for _, op := range []uint32{0, 7, 19, fuse.OpBmap, fuse.OpIoctl, fuse.OpPoll, fuse.OpNotifyReply, fuse.OpSetupmapping, 63, 64, 4096, 1<<32 - 1} {
		req := h.buf(request(op, root, 9, 0, make([]byte, 64)), 0)
		n := h.submit(1, []frontend.Buf{{req, fuse.InHeaderSize + 64}}, wr, nil)
		h.wantError(fmt.Sprintf("opcode %d", op), n, out, false)
	}
	// Arguments shorter than the opcode's struct.
	for _, op := range []uint32{fuse.OpSetattr, fuse.OpRead, fuse.OpWrite, fuse.OpOpen, fuse.OpGetlk, fuse.OpSetxattr, fuse.OpRename2, fuse.OpCopyFileRange} {
		req := h.buf(request(op, f.NodeID, 11, 0, make([]byte, 3)), 0)
		n := h.submit(2, []frontend.Buf{{req, fuse.InHeaderSize + 3}}, wr, nil)
		h.wantError(fmt.Sprintf("opcode %d with 3 argument bytes", op), n, out, false)
	}

	ctx := e.Ctx
	errReply := func(what string, err error) {
		t.Helper()
		var eno unix.Errno
		if !errors.As(err, &eno) {
			t.Fatalf("%s: %v, want an errno", what, err)
		}
	}
	// Bad nodeids and fhs.
	// (A neighbouring slot may hold another inode the guest knows: inodes
	// created together share pages of the map, so nodeid+1 is not "bad".)
	for _, n := range []uint64{0, 2, 3, 1 << 32, 1<<32 | 1, f.NodeID&^0xffffffff | 0xfffffff0, (f.NodeID + 1) ^ 1<<40, f.NodeID ^ 1<<40, ^uint64(0)} {
		_, err := e.C.Getattr(ctx, n, nil)
		errReply(fmt.Sprintf("GETATTR nodeid %#x", n), err)
		_, err = e.C.Lookup(ctx, n, "f")
		errReply(fmt.Sprintf("LOOKUP in nodeid %#x", n), err)
		_, err = e.C.Open(ctx, n, unix.O_RDONLY, 0)
		errReply(fmt.Sprintf("OPEN nodeid %#x", n), err)
		_, err = e.C.Mkdir(ctx, n, "x", 0o755, 0)
		errReply(fmt.Sprintf("MKDIR in nodeid %#x", n), err)
		_, err = e.C.Link(ctx, n, root, "x")
		errReply(fmt.Sprintf("LINK nodeid %#x", n), err)
		errReply("RENAME to a bad nodeid", e.C.Rename(ctx, root, "f", n, "g"))
		e.C.Forget(ctx, n, 1<<40)
		e.C.BatchForget(ctx, []fuseclient.ForgetOne{{NodeID: n, Nlookup: 1}, {NodeID: n, Nlookup: ^uint64(0)}})
	}
	h.healthy("bad nodeids")
	for _, fh := range []uint64{0, 1, do.FH, fo.FH + 1, fo.FH ^ 1<<40, ^uint64(0)} {
		_, err := e.C.Read(ctx, f.NodeID, fh, 0, make([]byte, 10))
		errReply(fmt.Sprintf("READ fh %#x", fh), err)
		_, err = e.C.Write(ctx, f.NodeID, fh, 0, []byte("x"), 0)
		errReply(fmt.Sprintf("WRITE fh %#x", fh), err)
		errReply(fmt.Sprintf("FSYNC fh %#x", fh), e.C.Fsync(ctx, f.NodeID, fh, false))
		errReply(fmt.Sprintf("SETLK fh %#x", fh), e.C.Setlk(ctx, f.NodeID, fh, 1, fuseclient.FileLock{Type: unix.F_WRLCK, End: 10}, 0))
		errReply(fmt.Sprintf("FLUSH fh %#x", fh), e.C.Flush(ctx, f.NodeID, fh, 1))
		if fh != do.FH {
			errReply(fmt.Sprintf("RELEASE fh %#x", fh), e.C.Release(ctx, f.NodeID, fh, 0, 0, 0))
		}
		_, err = e.C.Readdir(ctx, d.NodeID, fh+7, 0, 4096)
		errReply(fmt.Sprintf("READDIR fh %#x", fh+7), err)
	}
	_, err = e.C.Readdir(ctx, d.NodeID, fo.FH, 0, 4096)
	errReply("READDIR of a file handle", err)
	h.healthy("bad fhs")
	// READDIR offsets from nowhere.
	for _, off := range []uint64{1, 3, 0xdeadbeef, 1 << 62, fuseclient.OffsetMax, 1 << 63, ^uint64(0)} {
		for _, plus := range []bool{false, true} {
			var err error
			if plus {
				_, err = e.C.Readdirplus(ctx, d.NodeID, do.FH, off, 4096)
			} else {
				_, err = e.C.Readdir(ctx, d.NodeID, do.FH, off, 4096)
			}
			var eno unix.Errno
			if err != nil && !errors.As(err, &eno) {
				t.Fatalf("READDIR offset %#x: %v", off, err)
			}
		}
	}
	if ents, err := e.C.ReaddirAll(ctx, d.NodeID, do.FH, 4096); err != nil || len(ents) != 2 {
		t.Fatalf("READDIR from 0 after bad offsets: %v %v", ents, err)
	}
	h.healthy("readdir offsets")
	// Sizes that ask for 4 GiB, over and over: nothing may be allocated
	// to match them.
	for i := range 300 {
		rep, err := e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpGetxattr, NodeID: f.NodeID,
			Args: [][]byte{fuse.Bytes(&fuse.GetxattrIn{Size: 1<<32 - 1}), []byte("user.k\x00")}, Out: 4096}, nil)
		if err != nil || rep.Error != 0 && rep.Error != -int32(unix.ERANGE) {
			t.Fatalf("GETXATTR size 4 GiB-1 (#%d): %v %v", i, err, rep.Err())
		}
		rep, err = e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpListxattr, NodeID: f.NodeID,
			Args: [][]byte{fuse.Bytes(&fuse.GetxattrIn{Size: 1<<32 - 1})}, Out: 4096}, nil)
		if err != nil || rep.Error != 0 && rep.Error != -int32(unix.ERANGE) {
			t.Fatalf("LISTXATTR size 4 GiB-1 (#%d): %v %v", i, err, rep.Err())
		}
		rep, err = e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpRead, NodeID: f.NodeID,
			Args: [][]byte{fuse.Bytes(&fuse.ReadIn{Fh: fo.FH, Size: 1<<32 - 1})}, Out: 4096}, nil)
		if err != nil {
			t.Fatalf("READ size 4 GiB-1: %v", err)
		}
		rep, err = e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpReaddirplus, NodeID: d.NodeID,
			Args: [][]byte{fuse.Bytes(&fuse.ReadIn{Fh: do.FH, Size: 1<<32 - 1})}, Out: 4096}, nil)
		if err != nil {
			t.Fatalf("READDIRPLUS size 4 GiB-1: %v", err)
		}
		// SETXATTR whose size field claims more than it carries.
		rep, err = e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpSetxattr, NodeID: f.NodeID,
			Args: [][]byte{fuse.Bytes(&fuse.SetxattrIn{Size: 1<<32 - 1}), []byte("user.big\x00"), []byte("v")}}, nil)
		if err != nil || rep.Error == 0 {
			t.Fatalf("SETXATTR size 4 GiB-1 with 1 byte: %v %v", err, rep.Err())
		}
	}
	h.healthy("4 GiB sizes")
	// WRITE larger than max_write, and WRITE whose size field lies.
	maxWrite := e.Init.MaxWrite
	big := make([]byte, 2*maxWrite+4096)
	for range 20 {
		rep, err := e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpWrite, NodeID: f.NodeID,
			Args: [][]byte{fuse.Bytes(&fuse.WriteIn{Fh: fo.FH, Size: uint32(len(big))})}, Data: big, Out: fuse.WriteOutSize}, nil)
		if err != nil || rep.Error == 0 {
			t.Fatalf("WRITE of %d bytes (max_write %d): %v %v, want an error", len(big), maxWrite, err, rep.Err())
		}
		for _, size := range []uint32{0, 1, 1 << 31, 1<<32 - 1} {
			rep, err = e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpWrite, NodeID: f.NodeID,
				Args: [][]byte{fuse.Bytes(&fuse.WriteIn{Fh: fo.FH, Size: size})}, Data: make([]byte, 100), Out: fuse.WriteOutSize}, nil)
			if err != nil || rep.Error == 0 {
				t.Fatalf("WRITE with size field %d and 100 bytes: %v %v", size, err, rep.Err())
			}
		}
	}
	h.healthy("big writes")
	if b := readHost(t, e.Path("f")); len(b) > 2*int(maxWrite)+4096 {
		t.Fatalf("file grew to %d bytes", len(b))
	}
	// INTERRUPT of nothing, INIT again, many lock owners.
	e.C.Interrupt(ctx, 12345)
	_, err = e.C.Init(ctx, 0)
	errReply("second INIT", err)
	for o := range 2000 {
		err := e.C.Setlk(ctx, f.NodeID, fo.FH, uint64(o)+100, fuseclient.FileLock{Type: unix.F_RDLCK, Start: uint64(o), End: uint64(o)}, 0)
		if err != nil && !errors.Is(err, unix.ENOLCK) {
			t.Fatalf("SETLK owner %d: %v", o, err)
		}
	}
	h.healthy("2000 lock owners")
	// After DESTROY every queue answers (EIO: no session) and never hangs.
	must(t, "DESTROY", e.C.Destroy(ctx))
	for q := range e.FE.NumQueues() {
		rep, err := e.C.Do(ctx, &fuseclient.Req{Op: fuse.OpGetattr, NodeID: root, Queue: q,
			Args: [][]byte{make([]byte, 16)}, Out: fuse.AttrOutSize}, nil)
		if err != nil || rep.Error == 0 {
			t.Fatalf("GETATTR on queue %d after DESTROY: %v %v", q, err, rep.Err())
		}
		_, err = e.C.OnQueue(max(q, 1)).Read(ctx, f.NodeID, fo.FH, 0, make([]byte, 10))
		errReply("READ after DESTROY", err)
	}
	if pid := h.servingPID(); pid != h.pid {
		t.Fatalf("the serving process changed across DESTROY: %d -> %d", h.pid, pid)
	}
	// A new session works.
	_, err = e.C.Init(ctx, 0)
	must(t, "INIT after DESTROY", err)
	h.healthy("after DESTROY and INIT")
}
