package vhostuser

import (
	"encoding/binary"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/vring/inflight"
	"vfsd/vring/mem"
)

func inflightPayload(size, offset uint64, queues, queueSize uint16) []byte {
	b := make([]byte, sizeInflight)
	binary.LittleEndian.PutUint64(b[0:], size)
	binary.LittleEndian.PutUint64(b[8:], offset)
	binary.LittleEndian.PutUint16(b[16:], queues)
	binary.LittleEndian.PutUint16(b[18:], queueSize)
	return b
}

// recvFDs reads one reply with its fds.
func (f *frontend) recvFDs(req uint32) ([]byte, []int) {
	f.t.Helper()
	b := make([]byte, HeaderSize+64)
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	n, oobn, _, _, err := unix.Recvmsg(f.fd, b, oob, 0)
	for err == unix.EINTR { // SO_RCVTIMEO: not restarted after a signal
		n, oobn, _, _, err = unix.Recvmsg(f.fd, b, oob, 0)
	}
	if err != nil {
		f.t.Fatalf("reply to %s: %v", RequestName(req), err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			f.t.Fatal(err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				f.t.Fatal(err)
			}
			fds = append(fds, got...)
		}
	}
	h, _ := ParseHeader(append([]byte(nil), b[:HeaderSize]...))
	if n < HeaderSize || binary.LittleEndian.Uint32(b[0:]) != req || int(binary.LittleEndian.Uint32(b[8:])) != n-HeaderSize {
		f.t.Fatalf("reply to %s: %d bytes, header %+v", RequestName(req), n, h)
	}
	return b[HeaderSize:n], fds
}

// startRing sets up ring q (size 128, base) with memory already in place.
func (f *frontend) startRing(q uint32, base uint32) {
	f.t.Helper()
	for _, m := range []struct {
		req uint32
		p   []byte
		fds []int
	}{
		{ReqSetVringNum, stateMsg(q, 128), nil},
		{ReqSetVringBase, stateMsg(q, base), nil},
		{ReqSetVringAddr, addrMsg(q, uvaBase+0x10000*uint64(q+1), uvaBase+0x10000*uint64(q+1)+0x2000, uvaBase+0x10000*uint64(q+1)+0x1000), nil},
		{ReqSetVringKick, u64Bytes(uint64(q)), []int{eventfd(f.t)}},
	} {
		if r := f.ack(m.req, m.p, m.fds...); r != 0 {
			f.t.Fatalf("%s queue %d: ack %d", RequestName(m.req), q, r)
		}
	}
}

func (f *frontend) addMem() {
	f.t.Helper()
	region := mem.Region{GuestAddr: 0, Size: guestSize, UserAddr: uvaBase}
	if r := f.ack(ReqAddMemReg, memRegMsg(region), memfd(f.t, guestSize)); r != 0 {
		f.t.Fatalf("ADD_MEM_REG ack %d", r)
	}
}

func (f *frontend) running(i int) QueueConfig {
	f.t.Helper()
	f.getU64(ReqGetQueueNum) // orders the device's handling before the check
	f.be.mu.Lock()
	defer f.be.mu.Unlock()
	c, ok := f.be.running[i]
	if !ok {
		f.t.Fatalf("queue %d not running", i)
	}
	return c
}

const inflightProto = ProtocolMQ | ProtocolReplyAck | ProtocolConfigureMemSlots | ProtocolInflightShmFD

// GET_INFLIGHT_FD creates a region the rings are then tracked in; after a
// reconnect, SET_INFLIGHT_FD hands it back and the rings resume from it.
func TestInflightFD(t *testing.T) {
	before := openFDs(t)
	f := newFrontend(t)
	f.negotiate(allFeatures, inflightProto)
	f.send(ReqGetInflightFD, 0, inflightPayload(0, 0, 3, 128))
	p, fds := f.recvFDs(ReqGetInflightFD)
	if len(fds) != 1 || len(p) != sizeInflight {
		t.Fatalf("GET_INFLIGHT_FD: %d bytes, %d fds", len(p), len(fds))
	}
	size := binary.LittleEndian.Uint64(p[0:])
	if size != uint64(inflight.Size(3, 128)) || binary.LittleEndian.Uint64(p[8:]) != 0 ||
		binary.LittleEndian.Uint16(p[16:]) != 3 || binary.LittleEndian.Uint16(p[18:]) != 128 {
		t.Fatalf("GET_INFLIGHT_FD reply %x", p)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil || uint64(st.Size) < size {
		t.Fatalf("inflight fd: size %d, %v", st.Size, err)
	}
	f.addMem()
	f.startRing(1, 0)
	if c := f.running(1); c.Inflight == nil || c.Resume || c.BaseFromUsed {
		t.Fatalf("ring after GET_INFLIGHT_FD: inflight %v resume %v", c.Inflight != nil, c.Resume)
	}
	// The region cannot change under a running ring.
	f.send(ReqSetInflightFD, FlagNeedReply, inflightPayload(size, 0, 3, 128), dup(t, fds[0]))
	if r := f.recv(ReqSetInflightFD); binary.LittleEndian.Uint64(r) == 0 {
		t.Fatal("SET_INFLIGHT_FD with a running ring acked")
	}
	if err := f.disconnect(); err != nil {
		t.Fatal(err)
	}

	// Reconnect: a new device, the frontend hands the region back.
	g := newFrontend(t)
	g.negotiate(allFeatures, inflightProto)
	if r := g.ack(ReqSetInflightFD, inflightPayload(size-1, 0, 3, 128), dup(t, fds[0])); r == 0 {
		t.Fatal("SET_INFLIGHT_FD with a short mmap_size acked")
	}
	if r := g.ack(ReqSetInflightFD, inflightPayload(size, 0, 3, 100), dup(t, fds[0])); r == 0 {
		t.Fatal("SET_INFLIGHT_FD with queue size 100 acked")
	}
	if r := g.ack(ReqSetInflightFD, inflightPayload(size, 0, 4, 128), dup(t, fds[0])); r == 0 {
		t.Fatal("SET_INFLIGHT_FD with more queues than the device acked")
	}
	if r := g.ack(ReqSetInflightFD, inflightPayload(size, 0, 3, 128), fds[0]); r != 0 {
		t.Fatalf("SET_INFLIGHT_FD ack %d", r)
	}
	g.addMem()
	g.startRing(1, 7)
	if c := g.running(1); c.Inflight == nil || !c.Resume {
		t.Fatalf("ring after SET_INFLIGHT_FD: inflight %v resume %v", c.Inflight != nil, c.Resume)
	}
	// Resuming is for the first start only.
	g.send(ReqGetVringBase, 0, stateMsg(1, 0))
	g.recv(ReqGetVringBase)
	g.send(ReqSetVringKick, 0, u64Bytes(1), eventfd(t))
	if c := g.running(1); c.Resume {
		t.Fatal("ring resumed again after a stop")
	}
	// A malformed GET_INFLIGHT_FD (queue size not a power of two) ends the
	// connection: the request has a reply of its own.
	g.send(ReqGetInflightFD, 0, inflightPayload(0, 0, 3, 100))
	if err := g.closed(); err == nil {
		t.Fatal("bad GET_INFLIGHT_FD did not close the connection")
	}
	if n := openFDs(t); n != before {
		t.Fatalf("%d fds open before, %d after", before, n)
	}
}

func dup(t *testing.T, fd int) int {
	t.Helper()
	n, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type fakeRings struct {
	mu      sync.Mutex
	tracked []bool
}

func (r *fakeRings) Tracked(i int) bool { r.mu.Lock(); defer r.mu.Unlock(); return r.tracked[i] }
func (r *fakeRings) SetTracked(i int, on bool) {
	r.mu.Lock()
	r.tracked[i] = on
	r.mu.Unlock()
}
func (r *fakeRings) get(i int) bool { return r.Tracked(i) }

// A resuming device (worker restart) resumes rings the ring state says were
// tracked, starts the others at used.idx, and keeps the ring state in step:
// tracked from start, untracked after a stop.
func TestResumeRingState(t *testing.T) {
	region, err := inflight.Create(3, 256)
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	rings := &fakeRings{tracked: []bool{false, true, false}}
	f := newFrontendOpts(t, Options{RequestQueues: 2, Inflight: region, Rings: rings, Resume: true})
	f.negotiate(allFeatures, inflightProto)
	f.addMem()
	f.startRing(0, 3)
	f.startRing(1, 3)
	c0, c1 := f.running(0), f.running(1)
	if c0.Inflight == nil || c0.Resume || !c0.BaseFromUsed {
		t.Fatalf("untracked ring: resume %v base_from_used %v", c0.Resume, c0.BaseFromUsed)
	}
	if c1.Inflight == nil || !c1.Resume || c1.BaseFromUsed {
		t.Fatalf("tracked ring: resume %v base_from_used %v", c1.Resume, c1.BaseFromUsed)
	}
	if !rings.get(0) || !rings.get(1) || rings.get(2) {
		t.Fatalf("ring state %v after starting rings 0 and 1", rings.tracked)
	}
	f.send(ReqGetVringBase, 0, stateMsg(1, 0))
	f.recv(ReqGetVringBase)
	if rings.get(1) {
		t.Fatal("ring 1 still tracked after GET_VRING_BASE stopped it")
	}
	// The frontend restarts it: its own base now, no resume.
	f.send(ReqSetVringBase, 0, stateMsg(1, 9))
	f.send(ReqSetVringKick, 0, u64Bytes(1), eventfd(t))
	if c := f.running(1); c.Resume || c.BaseFromUsed || c.LastAvail != 9 {
		t.Fatalf("restarted ring: resume %v base_from_used %v base %d", c.Resume, c.BaseFromUsed, c.LastAvail)
	}
	if err := f.disconnect(); err != nil {
		t.Fatal(err)
	}
	if rings.get(0) || rings.get(1) {
		t.Fatalf("ring state %v after disconnect stopped every ring", rings.tracked)
	}
}
