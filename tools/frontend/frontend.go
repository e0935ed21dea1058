package frontend

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure a Frontend. The zero value is a QEMU-like default: one
// request queue of 256 entries, 128 MiB of RAM in one region, EVENT_IDX and
// REPLY_ACK when the backend offers them.
type Options struct {
	Mem MemOptions
	// QueueSize is the number of entries of every virtqueue (power of two,
	// default 256; QEMU's vhost-user-fs-pci default is 128).
	QueueSize int
	// RequestQueues is the number of request queues to start (default 1).
	// Dial fails if the backend offers fewer.
	RequestQueues int
	// NoEventIdx leaves VIRTIO_RING_F_EVENT_IDX out even when offered.
	NoEventIdx bool
	// NoReplyAck leaves VHOST_USER_PROTOCOL_F_REPLY_ACK out even when offered.
	NoReplyAck bool
	// Indirect sends every chain through an indirect descriptor table
	// (requires VIRTIO_RING_F_INDIRECT_DESC from the backend).
	Indirect bool
	// PollCompletions is how long a Wait that reaps for its own chain polls
	// the used ring before it sleeps on the call eventfd (0: it sleeps at
	// once). A KVM vCPU waiting for an interrupt halt-polls the same way
	// before the host deschedules it (halt_poll_ns, 200 µs by default), so a
	// backend's notification then needs no wake-up.
	PollCompletions time.Duration
	// DialTimeout bounds waiting for the socket to appear (default 10s).
	DialTimeout time.Duration
	// Trace, if set, is called for every control message sent and received.
	Trace func(dir string, m *Msg)
}

// ErrDisconnected is the error of requests outstanding when the backend
// closed the connection (or Close was called).
var ErrDisconnected = errors.New("frontend: backend disconnected")

// Frontend is one vhost-user connection with its guest RAM and queues.
type Frontend struct {
	Mem *Memory
	// Negotiated state, fixed after Dial.
	BackendFeatures  uint64 // GET_FEATURES
	Features         uint64 // SET_FEATURES
	BackendProtocol  uint64 // GET_PROTOCOL_FEATURES (0 without F_PROTOCOL_FEATURES)
	ProtocolFeatures uint64 // SET_PROTOCOL_FEATURES
	QueueNum         int    // GET_QUEUE_NUM (0 when MQ is not offered)

	opts   Options
	queues []*Queue

	ctl  sync.Mutex // serialises control messages
	conn *conn      // +checklocks:ctl

	deadOnce sync.Once
	dead     chan struct{} // closed when the backend is gone or Close ran
	deadErr  error
	watchFD  int // eventfd that stops the hangup watcher
	watchWG  sync.WaitGroup
}

// Dial connects to the vhost-user socket at path (waiting for it to appear),
// creates guest RAM and runs the initialisation sequence QEMU 7.2 runs for a
// vhost-user-fs-pci device, leaving all queues started and enabled.
func Dial(path string, o Options) (*Frontend, error) {
	if o.QueueSize == 0 {
		o.QueueSize = 256
	}
	if o.RequestQueues == 0 {
		o.RequestQueues = 1
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.QueueSize < 1 || o.QueueSize > 32768 || o.QueueSize&(o.QueueSize-1) != 0 {
		return nil, fmt.Errorf("frontend: queue size %d not a power of two", o.QueueSize)
	}
	f := &Frontend{opts: o, dead: make(chan struct{}), watchFD: -1}
	if err := f.dial(path); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (f *Frontend) dial(path string) error {
	var err error
	if f.Mem, err = NewMemory(f.opts.Mem); err != nil {
		return err
	}
	if f.conn, err = dialUnix(path, time.Now().Add(f.opts.DialTimeout)); err != nil {
		return err
	}
	if err = f.negotiate(); err != nil {
		return err
	}
	if err = f.start(); err != nil {
		return err
	}
	return f.startWatch()
}

// negotiate runs vhost_user_backend_init and vhost_dev_init's messages.
func (f *Frontend) negotiate() error {
	m, err := f.Call(GetFeatures, nil, nil)
	if err != nil {
		return err
	}
	if f.BackendFeatures, err = m.U64(); err != nil {
		return err
	}
	if f.BackendFeatures&FeatProtocolFeatures != 0 {
		if m, err = f.Call(GetProtocolFeatures, nil, nil); err != nil {
			return err
		}
		if f.BackendProtocol, err = m.U64(); err != nil {
			return err
		}
		want := uint64(protoWanted)
		if f.opts.NoReplyAck {
			want &^= ProtoReplyAck
		}
		// SET_PROTOCOL_FEATURES itself is sent before REPLY_ACK is in force.
		if err := f.Send(SetProtocolFeatures, 0, U64Payload(f.BackendProtocol&want), nil); err != nil {
			return err
		}
		f.ProtocolFeatures = f.BackendProtocol & want
	}
	if f.ProtocolFeatures&ProtoMQ != 0 {
		if m, err = f.Call(GetQueueNum, nil, nil); err != nil {
			return err
		}
		n, err := m.U64()
		if err != nil {
			return err
		}
		f.QueueNum = int(n)
		// For vhost-user-fs, QEMU checks num_request_queues + 1 against it.
		if f.opts.RequestQueues+1 > f.QueueNum {
			return fmt.Errorf("frontend: backend offers %d queues, need %d", f.QueueNum, f.opts.RequestQueues+1)
		}
	} else if f.opts.RequestQueues > 1 {
		return fmt.Errorf("frontend: backend lacks VHOST_USER_PROTOCOL_F_MQ, cannot use %d request queues", f.opts.RequestQueues)
	}
	if _, err := f.Call(SetOwner, nil, nil); err != nil {
		return err
	}
	// vhost_dev_init reads the features again after SET_OWNER.
	if m, err = f.Call(GetFeatures, nil, nil); err != nil {
		return err
	}
	if again, err := m.U64(); err != nil {
		return err
	} else if again != f.BackendFeatures {
		return fmt.Errorf("frontend: backend features changed from %#x to %#x", f.BackendFeatures, again)
	}
	if f.BackendFeatures&FeatVersion1 == 0 {
		return fmt.Errorf("frontend: backend features %#x lack VIRTIO_F_VERSION_1", f.BackendFeatures)
	}
	want := uint64(fsFrontendFeatures)
	if f.opts.NoEventIdx {
		want &^= FeatEventIdx
	}
	f.Features = f.BackendFeatures&want | f.BackendFeatures&FeatProtocolFeatures
	if f.opts.Indirect && f.Features&FeatIndirectDesc == 0 {
		return errors.New("frontend: indirect descriptors requested, backend does not offer them")
	}
	return nil
}

// start creates the queues and runs vhost_dev_start's messages.
func (f *Frontend) start() error {
	nq := f.opts.RequestQueues + 1
	for i := 0; i < nq; i++ {
		q, err := newQueue(f, i, f.opts.QueueSize, f.Features&FeatEventIdx != 0)
		if err != nil {
			return err
		}
		f.queues = append(f.queues, q)
		// vhost_virtqueue_init: the error notifier and the (masked) call
		// notifier are set before the device starts.
		if err := f.setVringFD(SetVringErr, i, q.errfd); err != nil {
			return err
		}
		if err := f.setVringFD(SetVringCall, i, q.call); err != nil {
			return err
		}
	}
	if _, err := f.Call(SetFeatures, U64Payload(f.Features), nil); err != nil {
		return err
	}
	if _, err := f.Call(SetMemTable, MemTablePayload(f.Mem.Regions()), f.memFDs()); err != nil {
		return err
	}
	for i, q := range f.queues {
		if _, err := f.Call(SetVringNum, VringStatePayload(uint32(i), uint32(q.size)), nil); err != nil {
			return err
		}
		if _, err := f.Call(SetVringBase, VringStatePayload(uint32(i), 0), nil); err != nil {
			return err
		}
		if err := f.setVringAddr(q); err != nil {
			return err
		}
		if err := f.setVringFD(SetVringKick, i, q.kick); err != nil {
			return err
		}
		if err := f.setVringFD(SetVringCall, i, q.call); err != nil {
			return err
		}
	}
	if f.Features&FeatProtocolFeatures != 0 {
		for i := range f.queues {
			if _, err := f.Call(SetVringEnable, VringStatePayload(uint32(i), 1), nil); err != nil {
				return err
			}
		}
	}
	for _, q := range f.queues {
		q.startReaper()
	}
	f.reserveProcs(f.opts.RequestQueues + 1)
	return nil
}

// reserveProcs keeps GOMAXPROCS at least n while the frontend is open
// (releaseProcs gives it back). Each request queue's leading Wait sleeps in
// epoll_wait holding a P, and the goroutines it wakes go on that P's run
// queue: with as many request queues as Ps, all of them can sleep at once
// and the woken goroutines wait for sysmon to take a P back (up to 10 ms).
// getattr at depth 32 on 2 request queues, GOMAXPROCS 2 (this machine's
// cores): 56-72k ops/s, p99 11-12 ms; with 3: 134-147k, p99 1.8 ms. One
// request queue does best with no spare P (depth-32 getattr 227-246k ops/s
// at 2 Ps, 154-157k at 3), so the floor is queues + 1.
func (f *Frontend) reserveProcs(n int) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if len(procs.floors) == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.floors[f] = n
	procs.setLocked()
}

func (f *Frontend) releaseProcs() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if _, ok := procs.floors[f]; ok {
		delete(procs.floors, f)
		procs.setLocked()
	}
}

// procs holds the GOMAXPROCS floors of the open frontends.
var procs = procsState{floors: map[*Frontend]int{}}

type procsState struct {
	mu     sync.Mutex
	base   int               // +checklocks:mu; GOMAXPROCS before the first floor
	set    int               // +checklocks:mu; what setLocked last set (0: nothing)
	floors map[*Frontend]int // +checklocks:mu
}

// setLocked sets GOMAXPROCS to the base or the highest floor. If something
// else (an in-process backend's dataplane) changed it since, that value is
// the new base: the floors only ever add to it.
// Precondition: p.mu held.
func (p *procsState) setLocked() {
	if cur := runtime.GOMAXPROCS(0); p.set != 0 && cur != p.set {
		p.base = cur
	}
	n := p.base
	for _, f := range p.floors {
		n = max(n, f)
	}
	if len(p.floors) == 0 {
		p.set = 0
	} else {
		p.set = n
	}
	if runtime.GOMAXPROCS(0) != n {
		runtime.GOMAXPROCS(n)
	}
}

func (f *Frontend) memFDs() []int {
	fds := make([]int, len(f.Mem.regions))
	for i := range fds {
		fds[i] = f.Mem.fd
	}
	return fds
}

func (f *Frontend) setVringAddr(q *Queue) error {
	d, a, u := q.ring.Addrs()
	var uva [3]uint64
	for i, gpa := range []uint64{d, a, u} {
		v, err := f.Mem.UserAddr(gpa)
		if err != nil {
			return err
		}
		uva[i] = v
	}
	_, err := f.Call(SetVringAddr, VringAddrPayload(uint32(q.Index), 0, uva[0], uva[2], uva[1], 0), nil)
	return err
}

func (f *Frontend) setVringFD(req uint32, index, fd int) error {
	p := uint64(index)
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	} else {
		p |= NoFDFlag
	}
	_, err := f.Call(req, U64Payload(p), fds)
	return err
}

// hasReply reports whether request req is answered by the backend anyway.
func hasReply(req uint32) bool {
	switch req {
	case GetFeatures, GetProtocolFeatures, GetQueueNum, GetVringBase, GetConfig,
		GetInflightFD, GetMaxMemSlots, GetStatus:
		return true
	}
	return false
}

// Queue returns queue i (0 = hiprio).
func (f *Frontend) Queue(i int) *Queue { return f.queues[i] }

// NumQueues returns the number of started queues (hiprio + request queues).
func (f *Frontend) NumQueues() int { return len(f.queues) }

// ReplyAck reports whether REPLY_ACK was negotiated.
func (f *Frontend) ReplyAck() bool { return f.ProtocolFeatures&ProtoReplyAck != 0 }

// Send writes one raw message (flags get FlagVersion added). For hostile
// tests: nothing is validated.
func (f *Frontend) Send(req, flags uint32, payload []byte, fds []int) error {
	return f.SendSized(req, flags, payload, fds, -1)
}

// SendSized is Send with an arbitrary header size field (size < 0: the real
// payload length).
func (f *Frontend) SendSized(req, flags uint32, payload []byte, fds []int, size int) error {
	f.ctl.Lock()
	defer f.ctl.Unlock()
	return f.sendLocked(req, flags|FlagVersion, payload, fds, size)
}

// Precondition: f.ctl held.
func (f *Frontend) sendLocked(req, flags uint32, payload []byte, fds []int, size int) error {
	if f.conn == nil || f.conn.fd < 0 {
		return ErrDisconnected
	}
	if f.opts.Trace != nil {
		f.opts.Trace("send", &Msg{Request: req, Flags: flags, Payload: payload, FDs: fds})
	}
	return f.conn.send(req, flags, payload, fds, size)
}

// Recv reads one raw message from the backend.
func (f *Frontend) Recv() (Msg, error) {
	f.ctl.Lock()
	defer f.ctl.Unlock()
	return f.recvLocked()
}

// Precondition: f.ctl held.
func (f *Frontend) recvLocked() (Msg, error) {
	if f.conn == nil || f.conn.fd < 0 {
		return Msg{}, ErrDisconnected
	}
	m, err := f.conn.recv()
	if err == nil && f.opts.Trace != nil {
		f.opts.Trace("recv", &m)
	}
	return m, err
}

// Call sends a request and waits for its answer: the reply of a GET_*
// request, or the REPLY_ACK acknowledgement of any other request when
// REPLY_ACK was negotiated (NEED_REPLY is set). A nonzero acknowledgement is
// returned as an error. Without REPLY_ACK, a request with no reply returns an
// empty Msg once sent.
func (f *Frontend) Call(req uint32, payload []byte, fds []int) (Msg, error) {
	f.ctl.Lock()
	defer f.ctl.Unlock()
	ack := !hasReply(req) && f.ProtocolFeatures&ProtoReplyAck != 0
	flags := uint32(FlagVersion)
	if ack {
		flags |= FlagNeedReply
	}
	if err := f.sendLocked(req, flags, payload, fds, -1); err != nil {
		return Msg{}, err
	}
	if !ack && !hasReply(req) {
		return Msg{}, nil
	}
	m, err := f.recvLocked()
	if err != nil {
		return Msg{}, fmt.Errorf("reply to %s: %w", ReqName(req), err)
	}
	if m.Request != req || !m.IsReply() || m.Flags&versionMask != FlagVersion {
		closeAll(m.FDs)
		return Msg{}, fmt.Errorf("reply to %s: got %s flags %#x", ReqName(req), ReqName(m.Request), m.Flags)
	}
	if ack {
		v, err := m.U64()
		if err != nil {
			return m, err
		}
		if v != 0 {
			return m, fmt.Errorf("vhost-user %s: backend answered failure %d", ReqName(req), v)
		}
	}
	return m, nil
}

// Stop stops every queue with GET_VRING_BASE (as vhost_dev_stop does) and
// returns each queue's next avail index as reported by the backend. The
// queues stay usable for Raw access but the backend no longer serves them.
func (f *Frontend) Stop() ([]uint16, error) {
	var bases []uint16
	for i := range f.queues {
		if f.Features&FeatProtocolFeatures != 0 {
			if _, err := f.Call(SetVringEnable, VringStatePayload(uint32(i), 0), nil); err != nil {
				return bases, err
			}
		}
		m, err := f.Call(GetVringBase, VringStatePayload(uint32(i), 0), nil)
		if err != nil {
			return bases, err
		}
		idx, num, err := m.VringState()
		if err != nil {
			return bases, err
		}
		if int(idx) != i {
			return bases, fmt.Errorf("GET_VRING_BASE for queue %d answered for queue %d", i, idx)
		}
		bases = append(bases, uint16(num))
	}
	return bases, nil
}

// Dead is closed when the backend hung up or Close was called.
func (f *Frontend) Dead() <-chan struct{} { return f.dead }

// DeadErr returns why Dead was closed.
func (f *Frontend) DeadErr() error {
	select {
	case <-f.dead:
		return f.deadErr
	default:
		return nil
	}
}

func (f *Frontend) markDead(err error) {
	f.deadOnce.Do(func() {
		f.deadErr = err
		close(f.dead)
		for _, q := range f.queues {
			q.fail(err)
		}
	})
}

// startWatch starts a goroutine that notices the backend hanging up
// (POLLHUP/POLLRDHUP on the control socket) without consuming messages.
func (f *Frontend) startWatch() error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	f.watchFD = fd
	sock := f.conn.fd
	f.watchWG.Add(1)
	go func() {
		defer f.watchWG.Done()
		pfd := []unix.PollFd{{Fd: int32(sock), Events: unix.POLLRDHUP}, {Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(pfd, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				f.markDead(fmt.Errorf("%w: poll: %v", ErrDisconnected, err))
				return
			}
			if pfd[1].Revents != 0 {
				return
			}
			if pfd[0].Revents&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
				f.markDead(ErrDisconnected)
				return
			}
		}
	}()
	return nil
}

// Close hangs up, fails outstanding requests with ErrDisconnected, stops the
// queues' goroutines and frees guest RAM. The backend sees EOF.
func (f *Frontend) Close() error {
	if f.watchFD >= 0 {
		unix.Write(f.watchFD, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		f.watchWG.Wait()
		unix.Close(f.watchFD)
		f.watchFD = -1
	}
	f.ctl.Lock()
	if f.conn != nil {
		f.conn.close()
	}
	f.ctl.Unlock()
	f.markDead(ErrDisconnected)
	for _, q := range f.queues {
		q.close()
	}
	f.queues = nil
	f.releaseProcs()
	if f.Mem != nil {
		f.Mem.Close()
	}
	return nil
}
