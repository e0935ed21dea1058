package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"vfsd/engine/crashpoint"
	"vfsd/vring/inflight"
	"vfsd/vring/mem"
)

// Features offered in GET_FEATURES. VIRTIO_F_RING_PACKED is not offered: the
// data plane implements split virtqueues only.
const offeredFeatures = FeatureVersion1 | FeatureRingIndirectDesc | FeatureRingEventIdx | FeatureProtocolFeatures

// Protocol features offered in GET_PROTOCOL_FEATURES.
const offeredProtocol = ProtocolMQ | ProtocolReplyAck | ProtocolConfigureMemSlots | ProtocolResetDevice |
	ProtocolInflightShmFD

// Options configures a Device.
type Options struct {
	Backend       Backend
	RequestQueues int          // request queues besides the hiprio queue (>= 1)
	MemSlots      int          // GET_MAX_MEM_SLOTS answer; 0 means DefaultMemSlots
	Logger        *slog.Logger // nil means slog.Default()
	// Disconnect, if set, is called once when the connection ends, before
	// the queues are stopped: the place to cancel requests that could
	// otherwise block a queue's stop forever (a SETLKW wait).
	Disconnect func()

	// Inflight, if set, is the device's own inflight region: ring i is
	// tracked in Inflight.Queue(i) (rings beyond its NumQueues are not
	// tracked). It is borrowed: the caller keeps it mapped until Serve
	// returns. GET_INFLIGHT_FD and SET_INFLIGHT_FD replace it with a region
	// the frontend keeps.
	Inflight *inflight.Region
	// Rings, if set, persists per ring whether its position lives in the
	// inflight region (see RingState); a worker keeps it in a memfd.
	Rings RingState
	// Resume: this Device takes over from a backend process that died or
	// was upgraded. At its first start here, ring i resumes from the
	// inflight region if Rings says it was tracked, and starts at used.idx
	// in guest RAM otherwise (the vring base the supervisor replays is the
	// frontend's, older than the ring's real position). Without Rings every
	// ring resumes from the region.
	Resume bool
}

// RingState records, for a successor process, which rings have their
// position in the inflight region: set when a ring starts being tracked
// (before anything is popped), cleared when it stops with nothing in flight
// (from then on used.idx in guest RAM is its position). Called from the
// Device's goroutine and, for SetTracked(i, true), from StartQueue.
type RingState interface {
	Tracked(i int) bool
	SetTracked(i int, on bool)
}

// resumeMode says how a ring's next start finds its position.
type resumeMode uint8

const (
	resumeNone     resumeMode = iota // the vring base (SET_VRING_BASE, or the last stop)
	resumeInflight                   // the inflight region (vring.Queue.ResumeInflight)
	resumeUsed                       // used.idx in guest RAM (stopped cleanly by the previous backend)
)

// vringState is what the Device knows about one virtqueue.
type vringState struct {
	size    int // 0: SET_VRING_NUM not received
	addr    VringAddr
	hasAddr bool
	base    uint16 // last avail index for the next start
	kick    int    // -1: none (or polling, see kickSet)
	call    int
	err     int
	started bool // SET_VRING_KICK received, no GET_VRING_BASE since
	enabled bool // SET_VRING_ENABLE 1
	running bool // the Backend runs it
	resume  resumeMode
}

// Device is the backend state of one vhost-user connection. It is driven by
// one goroutine (Serve, or HandleMessage in tests and a supervisor).
type Device struct {
	o        Options
	log      *slog.Logger
	features uint64 // acked with SET_FEATURES
	protocol uint64 // acked with SET_PROTOCOL_FEATURES
	regions  []mem.Mapped
	table    *mem.Table // nil while there is no guest memory
	vrings   []vringState
	reqFD    int // SET_BACKEND_REQ_FD channel, kept for later use; -1: none
	closed   bool

	infl     *inflight.Region // tracking region; nil: rings are not tracked
	inflOwn  bool             // infl came from GET/SET_INFLIGHT_FD: Close unmaps it
	replyFDs []int            // fds to send with the reply HandleMessage returned (owned)
}

// NewDevice returns a Device for 1 + o.RequestQueues virtqueues.
func NewDevice(o Options) (*Device, error) {
	if o.Backend == nil {
		return nil, errors.New("vhostuser: no backend")
	}
	if o.RequestQueues < 1 || o.RequestQueues > vringIdxMask {
		return nil, fmt.Errorf("vhostuser: %d request queues, want 1..%d", o.RequestQueues, vringIdxMask)
	}
	if o.MemSlots == 0 {
		o.MemSlots = DefaultMemSlots
	}
	if o.MemSlots < MaxMemRegions || o.MemSlots > 509 {
		return nil, fmt.Errorf("vhostuser: %d memory slots, want %d..509", o.MemSlots, MaxMemRegions)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	d := &Device{o: o, log: o.Logger, reqFD: -1, vrings: make([]vringState, 1+o.RequestQueues), infl: o.Inflight}
	for i := range d.vrings {
		d.vrings[i] = vringState{kick: -1, call: -1, err: -1}
		if o.Resume {
			d.vrings[i].resume = resumeInflight
			if o.Rings != nil && !o.Rings.Tracked(i) {
				d.vrings[i].resume = resumeUsed
			}
		}
	}
	return d, nil
}

// NumQueues is the number of virtqueues (hiprio + request queues).
func (d *Device) NumQueues() int { return len(d.vrings) }

// Serve handles messages from c until the frontend closes the connection
// (returns nil) or breaks the protocol (returns an error wrapping
// ErrMalformed); either way every queue is stopped and every resource
// released before it returns. It does not close c.
func (d *Device) Serve(c *Conn) error {
	defer d.Close()
	for {
		m, err := c.Read()
		if err == io.EOF {
			d.log.Info("vhost-user frontend disconnected")
			return nil
		}
		if err != nil {
			d.log.Error("vhost-user connection closed", "err", err)
			return err
		}
		crashpoint.Hit(crashpoint.MidVhostMessage)
		reply, err := d.HandleMessage(&m)
		if err != nil {
			d.log.Error("vhost-user connection closed", "request", RequestName(m.Request), "err", err)
			return err
		}
		if reply != nil {
			h := Header{Request: m.Request, Flags: Version | FlagReply}
			err := c.Write(h, reply, d.replyFDs)
			closeFDs(d.replyFDs)
			d.replyFDs = d.replyFDs[:0]
			if err != nil {
				d.log.Error("vhost-user reply failed", "request", RequestName(m.Request), "err", err)
				return err
			}
		}
	}
}

// handler describes one request: its exact payload size (-1: checked by fn),
// its fd count (-1: checked by fn) and whether it has a reply of its own.
type handler struct {
	size  int
	fds   int
	reply bool
	fn    func(d *Device, m *Message) ([]byte, error)
}

var handlers [reqMax]*handler

func init() {
	h := func(req uint32, size, fds int, reply bool, fn func(*Device, *Message) ([]byte, error)) {
		handlers[req] = &handler{size: size, fds: fds, reply: reply, fn: fn}
	}
	h(ReqGetFeatures, 0, 0, true, (*Device).getFeatures)
	h(ReqSetFeatures, sizeU64, 0, false, (*Device).setFeatures)
	h(ReqSetOwner, 0, 0, false, (*Device).setOwner)
	h(ReqResetOwner, 0, 0, false, (*Device).resetOwner)
	h(ReqResetDevice, 0, 0, false, (*Device).resetDevice)
	h(ReqSetMemTable, -1, -1, false, (*Device).setMemTable)
	h(ReqGetMaxMemSlots, 0, 0, true, (*Device).getMaxMemSlots)
	h(ReqAddMemReg, sizeMemRegMsg, 1, false, (*Device).addMemReg)
	h(ReqRemMemReg, sizeMemRegMsg, -1, false, (*Device).remMemReg)
	h(ReqSetVringNum, sizeVringState, 0, false, (*Device).setVringNum)
	h(ReqSetVringAddr, sizeVringAddr, 0, false, (*Device).setVringAddr)
	h(ReqSetVringBase, sizeVringState, 0, false, (*Device).setVringBase)
	h(ReqGetVringBase, sizeVringState, 0, true, (*Device).getVringBase)
	h(ReqSetVringKick, sizeU64, -1, false, (*Device).setVringKick)
	h(ReqSetVringCall, sizeU64, -1, false, (*Device).setVringCall)
	h(ReqSetVringErr, sizeU64, -1, false, (*Device).setVringErr)
	h(ReqSetVringEnable, sizeVringState, 0, false, (*Device).setVringEnable)
	h(ReqGetProtocolFeatures, 0, 0, true, (*Device).getProtocolFeatures)
	h(ReqSetProtocolFeatures, sizeU64, 0, false, (*Device).setProtocolFeatures)
	h(ReqGetQueueNum, 0, 0, true, (*Device).getQueueNum)
	h(ReqSetBackendReqFD, 0, 1, false, (*Device).setBackendReqFD)
	h(ReqGetInflightFD, -1, 0, true, (*Device).getInflightFD)
	h(ReqSetInflightFD, -1, 1, false, (*Device).setInflightFD)
}

// HandleMessage handles one message and takes ownership of its fds. It
// returns the reply payload to send (nil: none). A non-nil error means the
// connection must be closed: the message was malformed and no error reply
// could be given (no REPLY_ACK requested, or the request has a reply of its
// own). Failures of well-formed requests are answered through REPLY_ACK when
// requested, and logged otherwise.
//
// A reply may carry fds (GET_INFLIGHT_FD): ReplyFDs returns them.
func (d *Device) HandleMessage(m *Message) (reply []byte, err error) {
	defer closeFDs(m.FDs) // handlers take the fds they keep (setting them to -1)
	closeFDs(d.replyFDs)  // not taken by the caller of the previous message
	d.replyFDs = d.replyFDs[:0]
	defer func() {
		// A bug here must end this connection, not the process.
		if p := recover(); p != nil {
			d.log.Error("panic handling vhost-user message", "request", RequestName(m.Request),
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			reply, err = nil, fmt.Errorf("%w: internal error on %s", ErrMalformed, RequestName(m.Request))
		}
	}()
	// REPLY_ACK as negotiated before m (engine/supervisor expectsReply agrees).
	ack := d.protocol&ProtocolReplyAck != 0 && m.Flags&FlagNeedReply != 0
	var h *handler
	if m.Request < reqMax {
		h = handlers[m.Request]
	}
	switch {
	case d.closed:
		err = fmt.Errorf("%w: device closed", ErrMalformed)
	case h == nil:
		err = fmt.Errorf("%w: unsupported request %s", ErrMalformed, RequestName(m.Request))
	case h.size >= 0 && len(m.Payload) != h.size:
		err = fmt.Errorf("%w: %s: payload of %d bytes, want %d", ErrMalformed, RequestName(m.Request), len(m.Payload), h.size)
	case h.fds >= 0 && len(m.FDs) != h.fds:
		err = fmt.Errorf("%w: %s: %d fds, want %d", ErrMalformed, RequestName(m.Request), len(m.FDs), h.fds)
	default:
		reply, err = h.fn(d, m)
	}
	if h != nil && h.reply {
		// NEED_REPLY is ignored for requests that have a reply anyway.
		if err != nil {
			return nil, err
		}
		return reply, nil
	}
	if ack {
		if err != nil {
			d.log.Warn("vhost-user request failed", "request", RequestName(m.Request), "err", err)
			return u64(1), nil
		}
		return u64(0), nil
	}
	if err != nil && !errors.Is(err, ErrMalformed) {
		d.log.Warn("vhost-user request failed", "request", RequestName(m.Request), "err", err)
		return nil, nil
	}
	return nil, err
}

// ReplyFDs returns the fds to send with the reply the last HandleMessage
// returned. They stay owned by the Device, which closes them at the next
// HandleMessage or Close: send them before that.
func (d *Device) ReplyFDs() []int { return d.replyFDs }

func closeFDs(fds []int) {
	for i, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
			fds[i] = -1
		}
	}
}

// take removes fd i from the message, for a handler that keeps it.
func take(m *Message, i int) int {
	fd := m.FDs[i]
	m.FDs[i] = -1
	return fd
}

func (d *Device) vring(idx uint32) (*vringState, int, error) {
	if idx >= uint32(len(d.vrings)) {
		return nil, 0, fmt.Errorf("%w: queue index %d, have %d queues", ErrMalformed, idx, len(d.vrings))
	}
	return &d.vrings[idx], int(idx), nil
}

// Close stops every queue and releases guest memory and fds. Serve calls it
// when the connection ends; it is idempotent.
func (d *Device) Close() {
	if d.closed {
		return
	}
	if d.o.Disconnect != nil {
		d.o.Disconnect()
	}
	for i := range d.vrings {
		v := &d.vrings[i]
		if v.running {
			d.stop(i)
		}
		closeFD(&v.kick)
		closeFD(&v.call)
		closeFD(&v.err)
	}
	d.unmap(d.regions)
	d.regions, d.table = nil, nil
	closeFD(&d.reqFD)
	closeFDs(d.replyFDs)
	d.setRegion(nil, false)
	d.closed = true
}

func closeFD(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
		*fd = -1
	}
}

func (d *Device) unmap(regs []mem.Mapped) {
	for _, r := range regs {
		if err := r.Unmap(); err != nil {
			d.log.Error("unmap guest memory", "gpa", r.GuestAddr, "err", err)
		}
	}
}

// reconcile starts or stops queue i to match its state: a queue runs while it
// is started and enabled (always enabled without PROTOCOL_FEATURES) and has a
// size, ring addresses and guest memory.
func (d *Device) reconcile(i int) error {
	v := &d.vrings[i]
	enabled := v.enabled || d.features&FeatureProtocolFeatures == 0
	want := v.started && enabled && v.size > 0 && v.hasAddr && d.table != nil
	if want == v.running {
		return nil
	}
	if !want {
		return d.stop(i)
	}
	c := QueueConfig{
		Size: v.size, LastAvail: v.base, EventIdx: d.features&FeatureRingEventIdx != 0,
		Mem: d.table, Kick: v.kick, Call: v.call, Err: v.err,
	}
	var err error
	if c.Desc, err = d.table.UserToGuest(v.addr.Desc); err != nil {
		return fmt.Errorf("queue %d: descriptor table at %#x: %w", i, v.addr.Desc, err)
	}
	if c.Avail, err = d.table.UserToGuest(v.addr.Avail); err != nil {
		return fmt.Errorf("queue %d: avail ring at %#x: %w", i, v.addr.Avail, err)
	}
	if c.Used, err = d.table.UserToGuest(v.addr.Used); err != nil {
		return fmt.Errorf("queue %d: used ring at %#x: %w", i, v.addr.Used, err)
	}
	if d.infl != nil && i < d.infl.NumQueues() {
		c.Inflight = d.infl.Queue(i)
		c.Resume = v.resume == resumeInflight
		c.BaseFromUsed = v.resume == resumeUsed
		if rs := d.o.Rings; rs != nil {
			c.Tracked = func() { rs.SetTracked(i, true) }
		}
	} else if v.resume != resumeNone {
		// Resuming without a region to resume from (rings beyond the
		// region's queues): the driver's used.idx is the best position.
		c.BaseFromUsed = true
	}
	if err := d.o.Backend.StartQueue(i, c); err != nil {
		return fmt.Errorf("start queue %d: %w", i, err)
	}
	v.running = true
	d.log.Debug("queue started", "queue", i, "size", c.Size, "base", c.LastAvail,
		"tracked", c.Inflight != nil, "resume", c.Resume, "base_from_used", c.BaseFromUsed)
	v.resume = resumeNone
	return nil
}

func (d *Device) stop(i int) error {
	v := &d.vrings[i]
	last, err := d.o.Backend.StopQueue(i)
	v.running = false
	v.base = last
	// Everything popped was answered: the position is used.idx again.
	d.untrack(i)
	d.log.Debug("queue stopped", "queue", i, "last_avail", last)
	if err != nil {
		return fmt.Errorf("stop queue %d: %w", i, err)
	}
	return nil
}

func (d *Device) reconcileAll() error {
	var first error
	for i := range d.vrings {
		if err := d.reconcile(i); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func payloadU64(m *Message) uint64 { return binary.LittleEndian.Uint64(m.Payload) }

func (d *Device) getFeatures(*Message) ([]byte, error) { return u64(offeredFeatures), nil }

func (d *Device) setFeatures(m *Message) ([]byte, error) {
	f := payloadU64(m)
	if f&^offeredFeatures != 0 {
		return nil, fmt.Errorf("features %#x not offered (offered %#x)", f&^offeredFeatures, uint64(offeredFeatures))
	}
	d.features = f
	// Without PROTOCOL_FEATURES every started ring is enabled.
	return nil, d.reconcileAll()
}

func (d *Device) getProtocolFeatures(*Message) ([]byte, error) { return u64(offeredProtocol), nil }

func (d *Device) setProtocolFeatures(m *Message) ([]byte, error) {
	f := payloadU64(m)
	if f&^offeredProtocol != 0 {
		return nil, fmt.Errorf("protocol features %#x not offered (offered %#x)", f&^offeredProtocol, uint64(offeredProtocol))
	}
	d.protocol = f
	return nil, nil
}

func (d *Device) setOwner(*Message) ([]byte, error) { return nil, nil }

// resetOwner (deprecated in the spec) disables all rings; the connection's
// state is kept.
func (d *Device) resetOwner(*Message) ([]byte, error) {
	var first error
	for i := range d.vrings {
		v := &d.vrings[i]
		if v.running {
			if err := d.stop(i); err != nil && first == nil {
				first = err
			}
		}
		v.started, v.enabled = false, false
		v.resume = resumeNone
		d.untrack(i)
		closeFD(&v.kick)
	}
	return nil, first
}

// resetDevice stops every ring and returns the device to its state before
// feature negotiation; the protocol features and guest memory are kept.
func (d *Device) resetDevice(*Message) ([]byte, error) {
	var first error
	for i := range d.vrings {
		v := &d.vrings[i]
		if v.running {
			if err := d.stop(i); err != nil && first == nil {
				first = err
			}
		}
		closeFD(&v.kick)
		closeFD(&v.call)
		closeFD(&v.err)
		*v = vringState{kick: -1, call: -1, err: -1}
		d.untrack(i)
	}
	d.features = 0
	return nil, first
}

func (d *Device) getQueueNum(*Message) ([]byte, error) { return u64(uint64(len(d.vrings))), nil }

func (d *Device) getMaxMemSlots(*Message) ([]byte, error) { return u64(uint64(d.o.MemSlots)), nil }

func parseRegion(b []byte) mem.Region {
	return mem.Region{
		GuestAddr:  binary.LittleEndian.Uint64(b[0:]),
		Size:       binary.LittleEndian.Uint64(b[8:]),
		UserAddr:   binary.LittleEndian.Uint64(b[16:]),
		MmapOffset: binary.LittleEndian.Uint64(b[24:]),
	}
}

func (d *Device) setMemTable(m *Message) ([]byte, error) {
	if len(m.Payload) < sizeMemHeader {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE: payload of %d bytes", ErrMalformed, len(m.Payload))
	}
	n := binary.LittleEndian.Uint32(m.Payload)
	if n < 1 || n > MaxMemRegions {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE: %d regions, want 1..%d", ErrMalformed, n, MaxMemRegions)
	}
	if want := sizeMemHeader + int(n)*sizeMemRegion; len(m.Payload) != want {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE: payload of %d bytes for %d regions, want %d", ErrMalformed, len(m.Payload), n, want)
	}
	if len(m.FDs) != int(n) {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE: %d fds for %d regions", ErrMalformed, len(m.FDs), n)
	}
	regs := make([]mem.Mapped, 0, n)
	for i := 0; i < int(n); i++ {
		r := parseRegion(m.Payload[sizeMemHeader+i*sizeMemRegion:])
		mp, err := mem.Map(m.FDs[i], r)
		if err != nil {
			d.unmap(regs)
			return nil, fmt.Errorf("SET_MEM_TABLE region %d: %w", i, err)
		}
		regs = append(regs, mp)
	}
	old := d.regions
	return nil, d.install(regs, old)
}

// install makes regs the guest memory and unmaps removed once no queue can
// use them any more. On failure to build the table, regs is unmapped instead
// (the caller must only pass in removed what regs does not contain).
func (d *Device) install(regs, removed []mem.Mapped) error {
	var t *mem.Table
	if len(regs) > 0 {
		var err error
		if t, err = mem.NewTable(regs); err != nil {
			d.unmap(added(regs, d.regions))
			return err
		}
	}
	var first error
	if t == nil {
		// No guest memory: no queue can run.
		d.table = nil
		first = d.reconcileAll()
	} else if err := d.o.Backend.SetMem(t); err != nil {
		first = fmt.Errorf("install memory table: %w", err)
	}
	d.table, d.regions = t, regs
	d.unmap(removed)
	if err := d.reconcileAll(); err != nil && first == nil {
		first = err
	}
	return first
}

// added returns the regions of regs not in old (compared by mapping).
func added(regs, old []mem.Mapped) []mem.Mapped {
	var out []mem.Mapped
	for _, r := range regs {
		found := false
		for _, o := range old {
			if len(o.Data) > 0 && len(r.Data) > 0 && &o.Data[0] == &r.Data[0] {
				found = true
				break
			}
		}
		if !found {
			out = append(out, r)
		}
	}
	return out
}

func (d *Device) addMemReg(m *Message) ([]byte, error) {
	if len(d.regions) >= d.o.MemSlots {
		return nil, fmt.Errorf("ADD_MEM_REG: all %d memory slots in use", d.o.MemSlots)
	}
	r := parseRegion(m.Payload[8:])
	mp, err := mem.Map(m.FDs[0], r)
	if err != nil {
		return nil, fmt.Errorf("ADD_MEM_REG: %w", err)
	}
	regs := append(append(make([]mem.Mapped, 0, len(d.regions)+1), d.regions...), mp)
	return nil, d.install(regs, nil)
}

func (d *Device) remMemReg(m *Message) ([]byte, error) {
	// The spec says no fd; older frontends send one, which is closed unused.
	if len(m.FDs) > 1 {
		return nil, fmt.Errorf("%w: REM_MEM_REG: %d fds", ErrMalformed, len(m.FDs))
	}
	r := parseRegion(m.Payload[8:])
	for i, o := range d.regions {
		if o.GuestAddr == r.GuestAddr && o.Size == r.Size && o.UserAddr == r.UserAddr {
			regs := append(append(make([]mem.Mapped, 0, len(d.regions)), d.regions[:i]...), d.regions[i+1:]...)
			return nil, d.install(regs, []mem.Mapped{o})
		}
	}
	return nil, fmt.Errorf("REM_MEM_REG: no region at gpa %#x size %#x uva %#x", r.GuestAddr, r.Size, r.UserAddr)
}

func (d *Device) setVringNum(m *Message) ([]byte, error) {
	s := parseVringState(m.Payload)
	v, i, err := d.vring(s.Index)
	if err != nil {
		return nil, err
	}
	if s.Num < 1 || s.Num > MaxQueueSize || s.Num&(s.Num-1) != 0 {
		return nil, fmt.Errorf("queue %d: size %d is not a power of two in 1..%d", i, s.Num, MaxQueueSize)
	}
	if v.running {
		return nil, fmt.Errorf("queue %d: SET_VRING_NUM while the ring runs", i)
	}
	v.size = int(s.Num)
	return nil, nil
}

func (d *Device) setVringBase(m *Message) ([]byte, error) {
	s := parseVringState(m.Payload)
	v, i, err := d.vring(s.Index)
	if err != nil {
		return nil, err
	}
	if s.Num > 0xffff {
		return nil, fmt.Errorf("queue %d: base %#x does not fit a split ring index", i, s.Num)
	}
	if v.running {
		return nil, fmt.Errorf("queue %d: SET_VRING_BASE while the ring runs", i)
	}
	v.base = uint16(s.Num)
	return nil, nil
}

func (d *Device) setVringAddr(m *Message) ([]byte, error) {
	a := parseVringAddr(m.Payload)
	v, i, err := d.vring(a.Index)
	if err != nil {
		return nil, err
	}
	if d.table != nil {
		for _, uva := range [...]uint64{a.Desc, a.Avail, a.Used} {
			if _, err := d.table.UserToGuest(uva); err != nil {
				return nil, fmt.Errorf("queue %d: ring address %#x: %w", i, uva, err)
			}
		}
	}
	if v.running {
		// Only the log flag may change on the fly; restart with the new
		// addresses, which the spec allows as well.
		if err := d.stop(i); err != nil {
			d.log.Warn("restart queue for SET_VRING_ADDR", "queue", i, "err", err)
		}
	}
	v.addr, v.hasAddr = a, true
	return nil, d.reconcile(i)
}

func (d *Device) getVringBase(m *Message) ([]byte, error) {
	s := parseVringState(m.Payload)
	v, i, err := d.vring(s.Index)
	if err != nil {
		return nil, err
	}
	if v.running {
		if err := d.stop(i); err != nil {
			d.log.Warn("GET_VRING_BASE", "queue", i, "err", err)
		}
	}
	// The ring is stopped until the next SET_VRING_KICK.
	v.started = false
	closeFD(&v.kick)
	return VringState{Index: s.Index, Num: uint32(v.base)}.bytes(), nil
}

// vringFile decodes the u64 of SET_VRING_{KICK,CALL,ERR}: the queue index in
// bits 0-7, the NOFD flag in bit 8, and checks the fd count against it.
func (d *Device) vringFile(m *Message) (*vringState, int, int, error) {
	u := payloadU64(m)
	if u&^uint64(vringIdxMask|VringNoFDMask) != 0 {
		return nil, 0, -1, fmt.Errorf("%w: %s: reserved bits in %#x", ErrMalformed, RequestName(m.Request), u)
	}
	v, i, err := d.vring(uint32(u & vringIdxMask))
	if err != nil {
		return nil, 0, -1, err
	}
	want := 1
	if u&VringNoFDMask != 0 {
		want = 0
	}
	if len(m.FDs) != want {
		return nil, 0, -1, fmt.Errorf("%w: %s: %d fds, want %d", ErrMalformed, RequestName(m.Request), len(m.FDs), want)
	}
	fd := -1
	if want == 1 {
		fd = take(m, 0)
	}
	return v, i, fd, nil
}

func (d *Device) setVringKick(m *Message) ([]byte, error) {
	v, i, fd, err := d.vringFile(m)
	if err != nil {
		return nil, err
	}
	if v.running {
		if err := d.stop(i); err != nil {
			d.log.Warn("restart queue for SET_VRING_KICK", "queue", i, "err", err)
		}
	}
	closeFD(&v.kick)
	v.kick = fd
	// The kick starts the ring (fd -1: the frontend asked for polling) and,
	// as in libvhost-user and virtiofsd, enables it: frontends before QEMU
	// 7.2 never send SET_VRING_ENABLE to vhost-user-fs even with
	// PROTOCOL_FEATURES. SET_VRING_ENABLE 0 still pauses the ring.
	v.started, v.enabled = true, true
	return nil, d.reconcile(i)
}

func (d *Device) setVringCall(m *Message) ([]byte, error) {
	v, i, fd, err := d.vringFile(m)
	if err != nil {
		return nil, err
	}
	if v.running {
		if err := d.o.Backend.SetCall(i, fd); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("queue %d: set call fd: %w", i, err)
		}
	}
	closeFD(&v.call)
	v.call = fd
	return nil, nil
}

func (d *Device) setVringErr(m *Message) ([]byte, error) {
	v, i, fd, err := d.vringFile(m)
	if err != nil {
		return nil, err
	}
	if v.running {
		if err := d.o.Backend.SetErr(i, fd); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("queue %d: set err fd: %w", i, err)
		}
	}
	closeFD(&v.err)
	v.err = fd
	return nil, nil
}

func (d *Device) setVringEnable(m *Message) ([]byte, error) {
	s := parseVringState(m.Payload)
	v, i, err := d.vring(s.Index)
	if err != nil {
		return nil, err
	}
	if s.Num > 1 {
		return nil, fmt.Errorf("%w: SET_VRING_ENABLE: queue %d: state %d", ErrMalformed, i, s.Num)
	}
	v.enabled = s.Num == 1
	return nil, d.reconcile(i)
}

func (d *Device) setBackendReqFD(m *Message) ([]byte, error) {
	closeFD(&d.reqFD)
	d.reqFD = take(m, 0)
	return nil, nil
}

// untrack records that ring i's position is no longer in the inflight region.
func (d *Device) untrack(i int) {
	if d.o.Rings != nil {
		d.o.Rings.SetTracked(i, false)
	}
}

// setRegion makes r the tracking region (own: unmap it when replaced),
// releasing the previous one if the Device owned it. No ring may be running.
func (d *Device) setRegion(r *inflight.Region, own bool) {
	if d.infl != nil && d.inflOwn {
		if err := d.infl.Close(); err != nil {
			d.log.Warn("release inflight region", "err", err)
		}
	}
	d.infl, d.inflOwn = r, own
}

// Payload of GET_INFLIGHT_FD / SET_INFLIGHT_FD (VhostUserInflight): u64
// mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size, and 4 bytes
// of padding in QEMU's layout (QEMU sends and expects 24 bytes; 20 are
// accepted).
const (
	sizeInflightMin = 20
	sizeInflight    = 24
)

type inflightMsg struct {
	size, offset     uint64
	queues, queueLen int
}

func (d *Device) parseInflight(m *Message) (inflightMsg, error) {
	if len(m.Payload) != sizeInflightMin && len(m.Payload) != sizeInflight {
		return inflightMsg{}, fmt.Errorf("%w: %s: payload of %d bytes, want %d", ErrMalformed,
			RequestName(m.Request), len(m.Payload), sizeInflight)
	}
	p := m.Payload
	im := inflightMsg{
		size:     binary.LittleEndian.Uint64(p[0:]),
		offset:   binary.LittleEndian.Uint64(p[8:]),
		queues:   int(binary.LittleEndian.Uint16(p[16:])),
		queueLen: int(binary.LittleEndian.Uint16(p[18:])),
	}
	if im.queues < 1 || im.queues > len(d.vrings) {
		return im, fmt.Errorf("%s: %d queues, device has %d", RequestName(m.Request), im.queues, len(d.vrings))
	}
	if inflight.Size(im.queues, im.queueLen) == 0 {
		return im, fmt.Errorf("%s: queue size %d is not a power of two in 1..%d", RequestName(m.Request), im.queueLen, MaxQueueSize)
	}
	for i := range d.vrings {
		if d.vrings[i].running {
			return im, fmt.Errorf("%s: queue %d is running", RequestName(m.Request), i)
		}
	}
	return im, nil
}

// getInflightFD creates a region for the frontend to keep (it hands it back
// with SET_INFLIGHT_FD after reconnecting) and tracks the rings in it.
func (d *Device) getInflightFD(m *Message) ([]byte, error) {
	im, err := d.parseInflight(m)
	if err != nil {
		return nil, err
	}
	r, err := inflight.Create(im.queues, im.queueLen)
	if err != nil {
		return nil, fmt.Errorf("GET_INFLIGHT_FD: %w", err)
	}
	fd, err := unix.FcntlInt(uintptr(r.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("GET_INFLIGHT_FD: dup: %w", err)
	}
	d.setRegion(r, true)
	d.replyFDs = append(d.replyFDs[:0], fd)
	out := make([]byte, sizeInflight)
	binary.LittleEndian.PutUint64(out[0:], uint64(inflight.Size(im.queues, im.queueLen)))
	binary.LittleEndian.PutUint64(out[8:], 0)
	binary.LittleEndian.PutUint16(out[16:], uint16(im.queues))
	binary.LittleEndian.PutUint16(out[18:], uint16(im.queueLen))
	d.log.Debug("inflight region created", "queues", im.queues, "queue_size", im.queueLen)
	return out, nil
}

// setInflightFD maps a region the frontend kept across a reconnect: rings
// started from now on resume from it (a region never started says so, and
// the ring then starts afresh).
func (d *Device) setInflightFD(m *Message) ([]byte, error) {
	im, err := d.parseInflight(m)
	if err != nil {
		return nil, err
	}
	need := uint64(inflight.Size(im.queues, im.queueLen))
	if im.size < need {
		return nil, fmt.Errorf("SET_INFLIGHT_FD: mmap_size %d, %d queues of %d need %d", im.size, im.queues, im.queueLen, need)
	}
	if im.offset > 1<<62 {
		return nil, fmt.Errorf("SET_INFLIGHT_FD: mmap_offset %#x", im.offset)
	}
	r, err := inflight.MapAt(m.FDs[0], int64(im.offset), im.queues, im.queueLen)
	if err != nil {
		return nil, fmt.Errorf("SET_INFLIGHT_FD: %w", err)
	}
	d.setRegion(r, true)
	// A supervisor's replay hands back the region the frontend got from
	// GET_INFLIGHT_FD; the persisted ring state then already says which
	// rings resume. Otherwise this is a reconnect: every ring resumes.
	if !(d.o.Resume && d.o.Rings != nil) {
		for i := range d.vrings {
			d.vrings[i].resume = resumeInflight
		}
	}
	d.log.Info("inflight region installed", "queues", im.queues, "queue_size", im.queueLen)
	return nil, nil
}
