package supervisor

import (
	"encoding/binary"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// memRegion is one guest memory region with the supervisor's own copy of its
// fd. raw is the 32-byte VhostUserMemoryRegion as the frontend sent it.
type memRegion struct {
	raw [memRegionSize]byte
	fd  int
}

func (r *memRegion) key() (gpa, size, uva uint64) {
	return binary.LittleEndian.Uint64(r.raw[0:]), binary.LittleEndian.Uint64(r.raw[8:]), binary.LittleEndian.Uint64(r.raw[16:])
}

// vringFD is the last SET_VRING_KICK/CALL/ERR of a ring: its u64 payload
// (index and NOFD bit) and fd (-1 with NOFD).
type vringFD struct {
	set bool
	val uint64
	fd  int
}

type vringState struct {
	num, base, enable          uint32
	hasNum, hasBase, hasEnable bool
	addr                       []byte // SET_VRING_ADDR payload, nil if never set
	kick, call, err            vringFD
	started                    bool // SET_VRING_KICK seen, GET_VRING_BASE not since
}

// session is what the frontend told the backend so far, enough to bring a
// fresh worker to the same state. It owns every fd it holds.
// Only the supervisor's main goroutine touches it.
type session struct {
	features, protocol       uint64
	hasFeatures, hasProtocol bool
	owner                    bool
	backendReq               int // -1 if none
	regions                  []memRegion
	vrings                   map[uint32]*vringState
	inflight                 []byte // GET/SET_INFLIGHT_FD payload, nil if none
	inflightFD               int
	status                   uint64
	hasStatus                bool

	// What the worker offered, to check a replacement against.
	offeredFeatures, offeredProtocol       uint64
	hasOfferedFeatures, hasOfferedProtocol bool

	warn func(msg string, args ...any)
}

func newSession(warn func(string, ...any)) *session {
	return &session{backendReq: -1, inflightFD: -1, vrings: map[uint32]*vringState{}, warn: warn}
}

func (s *session) replyAck() bool { return s.hasProtocol && s.protocol&pfReplyAck != 0 }

// expectsReply says whether the backend answers m, given the state before m.
func (s *session) expectsReply(m *Msg) bool {
	if alwaysReplies(m.Req) {
		return true
	}
	if m.Req == reqSetLogBase && s.hasProtocol && s.protocol&pfLogShmfd != 0 {
		return true
	}
	return m.Flags&flagNeedReply != 0 && s.replyAck()
}

func (s *session) vring(idx uint32) *vringState {
	if v, ok := s.vrings[idx]; ok {
		return v
	}
	if idx >= maxVrings {
		return nil
	}
	v := &vringState{kick: vringFD{fd: -1}, call: vringFD{fd: -1}, err: vringFD{fd: -1}}
	s.vrings[idx] = v
	return v
}

// take moves m.FDs[i] into the session.
func take(m *Msg, i int) int {
	fd := m.FDs[i]
	m.FDs[i] = -1
	return fd
}

func closeFD(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
		*fd = -1
	}
}

// resetDevice forgets the device state (RESET_DEVICE, RESET_OWNER). Protocol
// features and the backend request channel survive: the backend keeps them.
func (s *session) resetDevice() {
	s.features, s.hasFeatures = 0, false
	s.clearRegions()
	for _, v := range s.vrings {
		closeFD(&v.kick.fd)
		closeFD(&v.call.fd)
		closeFD(&v.err.fd)
	}
	s.vrings = map[uint32]*vringState{}
	s.inflight = nil
	closeFD(&s.inflightFD)
	s.status, s.hasStatus = 0, false
}

func (s *session) clearRegions() {
	for i := range s.regions {
		closeFD(&s.regions[i].fd)
	}
	s.regions = nil
}

// close releases every fd the session holds.
func (s *session) close() {
	s.resetDevice()
	closeFD(&s.backendReq)
}

// applyRequest records the effect of a request the backend accepted. It
// takes the fds it keeps (setting their m.FDs entries to -1); the caller
// closes the rest.
func (s *session) applyRequest(m *Msg) {
	bad := func() { s.warn("session: malformed message not recorded", "msg", m.String()) }
	switch m.Req {
	case reqSetFeatures:
		v, ok := m.u64()
		if !ok {
			bad()
			return
		}
		s.features, s.hasFeatures = v, true
	case reqSetProtocolFeatures:
		v, ok := m.u64()
		if !ok {
			bad()
			return
		}
		s.protocol, s.hasProtocol = v, true
	case reqSetOwner:
		s.owner = true
	case reqResetOwner:
		s.resetDevice()
		s.owner = false
	case reqResetDevice:
		s.resetDevice()
	case reqSetMemTable:
		if len(m.Payload) < 8 {
			bad()
			return
		}
		n := int(binary.LittleEndian.Uint32(m.Payload))
		if n > 8 || len(m.Payload) < 8+n*memRegionSize || len(m.FDs) != n {
			bad()
			return
		}
		s.clearRegions()
		for i := 0; i < n; i++ {
			var r memRegion
			copy(r.raw[:], m.Payload[8+i*memRegionSize:])
			r.fd = take(m, i)
			s.regions = append(s.regions, r)
		}
	case reqAddMemReg:
		if len(m.Payload) < 8+memRegionSize || len(m.FDs) != 1 {
			bad()
			return
		}
		var r memRegion
		copy(r.raw[:], m.Payload[8:])
		r.fd = take(m, 0)
		s.regions = append(s.regions, r)
	case reqRemMemReg:
		if len(m.Payload) < 8+memRegionSize {
			bad()
			return
		}
		var want memRegion
		copy(want.raw[:], m.Payload[8:])
		g, z, u := want.key()
		for i := range s.regions {
			if g2, z2, u2 := s.regions[i].key(); g2 == g && z2 == z && u2 == u {
				closeFD(&s.regions[i].fd)
				s.regions = append(s.regions[:i], s.regions[i+1:]...)
				return
			}
		}
		s.warn("session: REM_MEM_REG of an unknown region", "gpa", g, "size", z)
	case reqSetVringNum, reqSetVringBase, reqSetVringEnable:
		idx, num, ok := m.state()
		v := s.vring(idx)
		if !ok || v == nil {
			bad()
			return
		}
		switch m.Req {
		case reqSetVringNum:
			v.num, v.hasNum = num, true
		case reqSetVringBase:
			v.base, v.hasBase = num, true
		default:
			v.enable, v.hasEnable = num, true
		}
	case reqSetVringAddr:
		if len(m.Payload) < 40 {
			bad()
			return
		}
		v := s.vring(binary.LittleEndian.Uint32(m.Payload))
		if v == nil {
			bad()
			return
		}
		v.addr = append([]byte(nil), m.Payload...)
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		val, ok := m.u64()
		v := s.vring(uint32(val & vringIdxMask))
		nofd := val&vringNoFD != 0
		if !ok || v == nil || (!nofd && len(m.FDs) != 1) {
			bad()
			return
		}
		slot := &v.kick
		switch m.Req {
		case reqSetVringCall:
			slot = &v.call
		case reqSetVringErr:
			slot = &v.err
		}
		closeFD(&slot.fd)
		slot.set, slot.val = true, val
		if !nofd {
			slot.fd = take(m, 0)
		}
		if m.Req == reqSetVringKick {
			v.started = true
		}
	case reqSetBackendReqFD:
		if len(m.FDs) != 1 {
			bad()
			return
		}
		closeFD(&s.backendReq)
		s.backendReq = take(m, 0)
	case reqSetInflightFD:
		if len(m.FDs) != 1 || len(m.Payload) < 20 {
			bad()
			return
		}
		closeFD(&s.inflightFD)
		s.inflight = append([]byte(nil), m.Payload...)
		s.inflightFD = take(m, 0)
	case reqSetStatus:
		v, ok := m.u64()
		if !ok {
			bad()
			return
		}
		s.status, s.hasStatus = v, true
	}
}

// startedRings counts the rings started (SET_VRING_KICK seen, no
// GET_VRING_BASE since).
func (s *session) startedRings() int {
	n := 0
	for _, v := range s.vrings {
		if v.started {
			n++
		}
	}
	return n
}

// applyReply records what a reply to req tells (and what the frontend now
// believes). It takes the reply fds it keeps.
func (s *session) applyReply(req *Msg, rep *Msg) {
	switch rep.Req {
	case reqGetFeatures:
		if v, ok := rep.u64(); ok {
			s.offeredFeatures, s.hasOfferedFeatures = v, true
		}
	case reqGetProtocolFeatures:
		if v, ok := rep.u64(); ok {
			s.offeredProtocol, s.hasOfferedProtocol = v, true
		}
	case reqGetVringBase:
		idx, num, ok := rep.state()
		if v := s.vring(idx); ok && v != nil {
			v.base, v.hasBase = num, true
			v.started = false
		}
	case reqGetInflightFD:
		if len(rep.FDs) == 1 && len(rep.Payload) >= 20 {
			closeFD(&s.inflightFD)
			s.inflight = append([]byte(nil), rep.Payload...)
			s.inflightFD = take(rep, 0)
		}
	default:
		if !alwaysReplies(req.Req) {
			// REPLY_ACK: zero means the backend applied the request.
			if v, ok := rep.u64(); ok && v == 0 {
				s.applyRequest(req)
			}
		}
	}
}

// maskReply removes what the supervisor cannot carry across a worker
// restart from feature offers, before they reach the frontend.
func maskReply(rep *Msg) {
	if len(rep.Payload) < 8 {
		return
	}
	switch rep.Req {
	case reqGetFeatures:
		v := binary.LittleEndian.Uint64(rep.Payload)
		binary.LittleEndian.PutUint64(rep.Payload, v&^maskedFeatures)
	case reqGetProtocolFeatures:
		v := binary.LittleEndian.Uint64(rep.Payload)
		binary.LittleEndian.PutUint64(rep.Payload, v&relayableProtocolFeatures)
	}
}

// replay returns the messages that bring a fresh worker to the recorded
// state. The fds in them belong to the session (do not close them). With
// REPLY_ACK negotiated, every SET message asks for an ack. The first message
// is GET_FEATURES (its reply is the first acknowledgement); without REPLY_ACK
// the sequence ends with a second GET_FEATURES as a barrier.
func (s *session) replay() []*Msg {
	ack := uint32(0)
	if s.replyAck() {
		ack = flagNeedReply
	}
	var out []*Msg
	add := func(req uint32, needAck bool, payload []byte, fds ...int) {
		f := uint32(flagVersion)
		if needAck {
			f |= ack
		}
		out = append(out, &Msg{Req: req, Flags: f, Payload: payload, FDs: fds})
	}
	add(reqGetFeatures, false, nil)
	if s.hasProtocol {
		add(reqGetProtocolFeatures, false, nil)
		add(reqSetProtocolFeatures, false, u64Payload(s.protocol))
	}
	if s.owner {
		add(reqSetOwner, true, nil)
	}
	if s.backendReq >= 0 {
		add(reqSetBackendReqFD, true, nil, s.backendReq)
	}
	if s.hasFeatures {
		add(reqSetFeatures, true, u64Payload(s.features))
	}
	if len(s.regions) > 0 {
		if s.protocol&pfConfigureMemSlots != 0 && s.hasProtocol || len(s.regions) > 8 {
			for _, r := range s.regions {
				p := make([]byte, 8+memRegionSize)
				copy(p[8:], r.raw[:])
				add(reqAddMemReg, true, p, r.fd)
			}
		} else {
			p := make([]byte, 8+len(s.regions)*memRegionSize)
			binary.LittleEndian.PutUint32(p, uint32(len(s.regions)))
			fds := make([]int, len(s.regions))
			for i, r := range s.regions {
				copy(p[8+i*memRegionSize:], r.raw[:])
				fds[i] = r.fd
			}
			add(reqSetMemTable, true, p, fds...)
		}
	}
	if s.inflight != nil {
		add(reqSetInflightFD, true, s.inflight, s.inflightFD)
	}
	idxs := make([]uint32, 0, len(s.vrings))
	for i := range s.vrings {
		idxs = append(idxs, i)
	}
	sort.Slice(idxs, func(a, b int) bool { return idxs[a] < idxs[b] })
	for _, i := range idxs {
		v := s.vrings[i]
		if v.hasNum {
			add(reqSetVringNum, true, statePayload(i, v.num))
		}
		if v.hasBase {
			add(reqSetVringBase, true, statePayload(i, v.base))
		}
		if v.addr != nil {
			add(reqSetVringAddr, true, v.addr)
		}
		for _, e := range []struct {
			req  uint32
			slot *vringFD
		}{{reqSetVringErr, &v.err}, {reqSetVringCall, &v.call}, {reqSetVringKick, &v.kick}} {
			if !e.slot.set || (e.req == reqSetVringKick && !v.started) {
				continue
			}
			if e.slot.fd >= 0 {
				add(e.req, true, u64Payload(e.slot.val), e.slot.fd)
			} else {
				add(e.req, true, u64Payload(e.slot.val))
			}
		}
		if v.hasEnable {
			add(reqSetVringEnable, true, statePayload(i, v.enable))
		}
	}
	if s.hasStatus {
		add(reqSetStatus, true, u64Payload(s.status))
	}
	if ack == 0 {
		add(reqGetFeatures, false, nil)
	}
	return out
}

// checkOffer compares a replacement worker's feature offer with what the
// frontend negotiated; it returns a description of what is missing, or "".
func (s *session) checkOffer(rep *Msg) string {
	v, ok := rep.u64()
	if !ok {
		return "short reply"
	}
	var want uint64
	switch rep.Req {
	case reqGetFeatures:
		if !s.hasFeatures {
			return ""
		}
		want = s.features
	case reqGetProtocolFeatures:
		if !s.hasProtocol {
			return ""
		}
		want = s.protocol
	default:
		return ""
	}
	if missing := want &^ v; missing != 0 {
		return fmt.Sprintf("%s lacks negotiated bits %#x", reqName(rep.Req), missing)
	}
	return ""
}
