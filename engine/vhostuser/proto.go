package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Request codes of frontend-to-backend messages (vhost-user.rst, "Front-end
// message types").
const (
	ReqGetFeatures         = 1
	ReqSetFeatures         = 2
	ReqSetOwner            = 3
	ReqResetOwner          = 4
	ReqSetMemTable         = 5
	ReqSetLogBase          = 6
	ReqSetLogFD            = 7
	ReqSetVringNum         = 8
	ReqSetVringAddr        = 9
	ReqSetVringBase        = 10
	ReqGetVringBase        = 11
	ReqSetVringKick        = 12
	ReqSetVringCall        = 13
	ReqSetVringErr         = 14
	ReqGetProtocolFeatures = 15
	ReqSetProtocolFeatures = 16
	ReqGetQueueNum         = 17
	ReqSetVringEnable      = 18
	ReqSendRARP            = 19
	ReqNetSetMTU           = 20
	ReqSetBackendReqFD     = 21
	ReqIOTLBMsg            = 22
	ReqSetVringEndian      = 23
	ReqGetConfig           = 24
	ReqSetConfig           = 25
	ReqGetInflightFD       = 31
	ReqSetInflightFD       = 32
	ReqResetDevice         = 34
	ReqVringKick           = 35
	ReqGetMaxMemSlots      = 36
	ReqAddMemReg           = 37
	ReqRemMemReg           = 38
	ReqSetStatus           = 39
	ReqGetStatus           = 40
	reqMax                 = 64 // size of the request-indexed handler table
)

// Header flags.
const (
	FlagVersionMask = 0x3
	Version         = 0x1
	FlagReply       = 0x4
	FlagNeedReply   = 0x8
)

// Virtio and vhost-user feature bits (GET_FEATURES).
const (
	FeatureRingIndirectDesc = 1 << 28 // VIRTIO_RING_F_INDIRECT_DESC
	FeatureRingEventIdx     = 1 << 29 // VIRTIO_RING_F_EVENT_IDX
	FeatureProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = 1 << 32 // VIRTIO_F_VERSION_1
	FeatureRingPacked       = 1 << 34 // VIRTIO_F_RING_PACKED (never offered)
)

// Protocol feature bits (GET_PROTOCOL_FEATURES).
const (
	ProtocolMQ                = 1 << 0
	ProtocolLogShmFD          = 1 << 1
	ProtocolReplyAck          = 1 << 3
	ProtocolBackendReq        = 1 << 5
	ProtocolConfig            = 1 << 9
	ProtocolBackendSendFD     = 1 << 10
	ProtocolInflightShmFD     = 1 << 12
	ProtocolResetDevice       = 1 << 13
	ProtocolConfigureMemSlots = 1 << 15
	ProtocolStatus            = 1 << 16
)

// Limits.
const (
	HeaderSize      = 12
	MaxPayload      = 4096 // larger than any message this backend accepts
	MaxFDs          = 8    // VHOST_MEMORY_BASELINE_NREGIONS
	MaxMemRegions   = 8    // regions in one SET_MEM_TABLE
	DefaultMemSlots = 32   // GET_MAX_MEM_SLOTS answer (libvhost-user's VHOST_USER_MAX_RAM_SLOTS)
	MaxQueueSize    = 32768
	VringNoFDMask   = 0x100 // VHOST_USER_VRING_NOFD_MASK in SET_VRING_{KICK,CALL,ERR}
	vringIdxMask    = 0xff
)

// Payload sizes.
const (
	sizeU64        = 8
	sizeVringState = 8  // struct vhost_vring_state {u32 index; u32 num}
	sizeVringAddr  = 40 // struct vhost_vring_addr
	sizeMemRegion  = 32 // VhostUserMemoryRegion
	sizeMemHeader  = 8  // VhostUserMemory {u32 nregions; u32 padding}
	sizeMemRegMsg  = 8 + sizeMemRegion
)

// Header is the vhost-user message header.
type Header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

func (h Header) put(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

// ParseHeader decodes a message header and checks what can be checked
// without the payload: the version, the REPLY bit (never set by a frontend)
// and the payload size cap.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrMalformed, len(b))
	}
	h := Header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&FlagVersionMask != Version {
		return h, fmt.Errorf("%w: request %d: version %d", ErrMalformed, h.Request, h.Flags&FlagVersionMask)
	}
	if h.Flags&FlagReply != 0 {
		return h, fmt.Errorf("%w: request %d: reply flag set by the frontend", ErrMalformed, h.Request)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("%w: request %d: payload of %d bytes exceeds %d", ErrMalformed, h.Request, h.Size, MaxPayload)
	}
	return h, nil
}

// Message is one received message. Payload aliases the Conn's buffer and is
// valid until the next Read; FDs belong to whoever handles the message.
type Message struct {
	Header
	Payload []byte
	FDs     []int
}

// VringState is struct vhost_vring_state.
type VringState struct{ Index, Num uint32 }

func parseVringState(b []byte) VringState {
	return VringState{binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:])}
}

func (s VringState) bytes() []byte {
	b := make([]byte, sizeVringState)
	binary.LittleEndian.PutUint32(b[0:], s.Index)
	binary.LittleEndian.PutUint32(b[4:], s.Num)
	return b
}

// VringAddr is struct vhost_vring_addr: frontend virtual addresses.
type VringAddr struct {
	Index, Flags               uint32
	Desc, Used, Avail, LogAddr uint64
}

func parseVringAddr(b []byte) VringAddr {
	return VringAddr{
		Index:   binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Desc:    binary.LittleEndian.Uint64(b[8:]),
		Used:    binary.LittleEndian.Uint64(b[16:]),
		Avail:   binary.LittleEndian.Uint64(b[24:]),
		LogAddr: binary.LittleEndian.Uint64(b[32:]),
	}
}

func u64(v uint64) []byte {
	b := make([]byte, sizeU64)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

// EncodeMessage lays out a message (header and payload) in a new buffer. The
// frontend side of tests uses it; the backend uses it for replies.
func EncodeMessage(req, flags uint32, payload []byte) []byte {
	b := make([]byte, HeaderSize+len(payload))
	Header{Request: req, Flags: flags, Size: uint32(len(payload))}.put(b)
	copy(b[HeaderSize:], payload)
	return b
}

var reqNames = map[uint32]string{
	ReqGetFeatures: "GET_FEATURES", ReqSetFeatures: "SET_FEATURES", ReqSetOwner: "SET_OWNER",
	ReqResetOwner: "RESET_OWNER", ReqSetMemTable: "SET_MEM_TABLE", ReqSetLogBase: "SET_LOG_BASE",
	ReqSetLogFD: "SET_LOG_FD", ReqSetVringNum: "SET_VRING_NUM", ReqSetVringAddr: "SET_VRING_ADDR",
	ReqSetVringBase: "SET_VRING_BASE", ReqGetVringBase: "GET_VRING_BASE", ReqSetVringKick: "SET_VRING_KICK",
	ReqSetVringCall: "SET_VRING_CALL", ReqSetVringErr: "SET_VRING_ERR",
	ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES", ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	ReqGetQueueNum: "GET_QUEUE_NUM", ReqSetVringEnable: "SET_VRING_ENABLE", ReqSendRARP: "SEND_RARP",
	ReqNetSetMTU: "NET_SET_MTU", ReqSetBackendReqFD: "SET_BACKEND_REQ_FD", ReqIOTLBMsg: "IOTLB_MSG",
	ReqSetVringEndian: "SET_VRING_ENDIAN", ReqGetConfig: "GET_CONFIG", ReqSetConfig: "SET_CONFIG",
	ReqGetInflightFD: "GET_INFLIGHT_FD", ReqSetInflightFD: "SET_INFLIGHT_FD", ReqResetDevice: "RESET_DEVICE",
	ReqVringKick: "VRING_KICK", ReqGetMaxMemSlots: "GET_MAX_MEM_SLOTS", ReqAddMemReg: "ADD_MEM_REG",
	ReqRemMemReg: "REM_MEM_REG", ReqSetStatus: "SET_STATUS", ReqGetStatus: "GET_STATUS",
}

// RequestName returns the spec's name of a request code.
func RequestName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("REQUEST_%d", r)
}
