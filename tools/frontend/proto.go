package frontend

import (
	"encoding/binary"
	"fmt"
)

// vhost-user request codes (QEMU docs/interop/vhost-user.rst, front-end
// message types).
const (
	GetFeatures         = 1
	SetFeatures         = 2
	SetOwner            = 3
	ResetOwner          = 4
	SetMemTable         = 5
	SetLogBase          = 6
	SetLogFD            = 7
	SetVringNum         = 8
	SetVringAddr        = 9
	SetVringBase        = 10
	GetVringBase        = 11
	SetVringKick        = 12
	SetVringCall        = 13
	SetVringErr         = 14
	GetProtocolFeatures = 15
	SetProtocolFeatures = 16
	GetQueueNum         = 17
	SetVringEnable      = 18
	SendRARP            = 19
	NetSetMTU           = 20
	SetBackendReqFD     = 21
	IOTLBMsg            = 22
	SetVringEndian      = 23
	GetConfig           = 24
	SetConfig           = 25
	GetInflightFD       = 31
	SetInflightFD       = 32
	ResetDevice         = 34
	VringKick           = 35
	GetMaxMemSlots      = 36
	AddMemReg           = 37
	RemMemReg           = 38
	SetStatus           = 39
	GetStatus           = 40
)

var reqNames = map[uint32]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER",
	ResetOwner: "RESET_OWNER", SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE",
	SetLogFD: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM", SetVringAddr: "SET_VRING_ADDR",
	SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE", SetVringKick: "SET_VRING_KICK",
	SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR", GetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	SetProtocolFeatures: "SET_PROTOCOL_FEATURES", GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE",
	SetBackendReqFD: "SET_BACKEND_REQ_FD", GetConfig: "GET_CONFIG", SetConfig: "SET_CONFIG",
	GetInflightFD: "GET_INFLIGHT_FD", SetInflightFD: "SET_INFLIGHT_FD", ResetDevice: "RESET_DEVICE",
	VringKick: "VRING_KICK", GetMaxMemSlots: "GET_MAX_MEM_SLOTS", AddMemReg: "ADD_MEM_REG",
	RemMemReg: "REM_MEM_REG", SetStatus: "SET_STATUS", GetStatus: "GET_STATUS",
}

// ReqName returns the vhost-user name of request code r.
func ReqName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("REQUEST_%d", r)
}

// Header flags.
const (
	FlagVersion   = 0x1 // protocol version 1, always set
	FlagReply     = 0x4
	FlagNeedReply = 0x8
	versionMask   = 0x3
)

// HeaderSize is the size of the vhost-user message header (request, flags,
// size: three u32).
const HeaderSize = 12

// MaxPayload bounds the payload this frontend accepts in a reply.
const MaxPayload = 4096

// MaxFDs is the most file descriptors one message may carry (VHOST_MEMORY_BASELINE_NREGIONS).
const MaxFDs = 8

// Virtio and vhost feature bits.
const (
	FeatNotifyOnEmpty    = 1 << 24
	FeatLogAll           = 1 << 26 // VHOST_F_LOG_ALL
	FeatIndirectDesc     = 1 << 28
	FeatEventIdx         = 1 << 29
	FeatProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatVersion1         = 1 << 32
	FeatAccessPlatform   = 1 << 33
	FeatRingPacked       = 1 << 34
	FeatRingReset        = 1 << 40
)

// Protocol feature bits (VHOST_USER_PROTOCOL_F_*).
const (
	ProtoMQ                 = 1 << 0
	ProtoLogSHMFD           = 1 << 1
	ProtoRARP               = 1 << 2
	ProtoReplyAck           = 1 << 3
	ProtoMTU                = 1 << 4
	ProtoBackendReq         = 1 << 5
	ProtoCrossEndian        = 1 << 6
	ProtoCryptoSession      = 1 << 7
	ProtoPagefault          = 1 << 8
	ProtoConfig             = 1 << 9
	ProtoBackendSendFD      = 1 << 10
	ProtoHostNotifier       = 1 << 11
	ProtoInflightSHMFD      = 1 << 12
	ProtoResetDevice        = 1 << 13
	ProtoInbandNotification = 1 << 14
	ProtoConfigureMemSlots  = 1 << 15
	ProtoStatus             = 1 << 16
)

// fsFrontendFeatures are the virtio feature bits QEMU 7.2's vhost-user-fs
// device is willing to negotiate (hw/virtio/vhost-user-fs.c user_feature_bits,
// minus packed rings and the IOMMU, which this frontend does not implement).
const fsFrontendFeatures = FeatVersion1 | FeatIndirectDesc | FeatEventIdx | FeatNotifyOnEmpty

// protoWanted are the protocol features this frontend uses when offered.
const protoWanted = ProtoMQ | ProtoReplyAck

// NoFDFlag in a SET_VRING_KICK/CALL/ERR payload says no fd is passed.
const NoFDFlag = 1 << 8

// Msg is one vhost-user message.
type Msg struct {
	Request uint32
	Flags   uint32
	Payload []byte
	FDs     []int // received fds are owned by the receiver, who must close them
}

// IsReply reports whether the reply flag is set.
func (m *Msg) IsReply() bool { return m.Flags&FlagReply != 0 }

// U64 decodes a u64 payload.
func (m *Msg) U64() (uint64, error) {
	if len(m.Payload) != 8 {
		return 0, fmt.Errorf("vhost-user %s: u64 payload has %d bytes", ReqName(m.Request), len(m.Payload))
	}
	return binary.LittleEndian.Uint64(m.Payload), nil
}

// VringState decodes a vring state payload (index, num).
func (m *Msg) VringState() (index, num uint32, err error) {
	if len(m.Payload) != 8 {
		return 0, 0, fmt.Errorf("vhost-user %s: vring state payload has %d bytes", ReqName(m.Request), len(m.Payload))
	}
	return binary.LittleEndian.Uint32(m.Payload), binary.LittleEndian.Uint32(m.Payload[4:]), nil
}

// U64Payload encodes a u64 payload.
func U64Payload(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

// VringStatePayload encodes struct vhost_vring_state.
func VringStatePayload(index, num uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, index)
	binary.LittleEndian.PutUint32(b[4:], num)
	return b
}

// VringAddrPayload encodes struct vhost_vring_addr. Addresses are in the
// frontend's virtual address space (as QEMU sends them).
func VringAddrPayload(index, flags uint32, desc, used, avail, log uint64) []byte {
	b := make([]byte, 40)
	binary.LittleEndian.PutUint32(b, index)
	binary.LittleEndian.PutUint32(b[4:], flags)
	binary.LittleEndian.PutUint64(b[8:], desc)
	binary.LittleEndian.PutUint64(b[16:], used)
	binary.LittleEndian.PutUint64(b[24:], avail)
	binary.LittleEndian.PutUint64(b[32:], log)
	return b
}

// RegionDesc is struct VhostUserMemoryRegion.
type RegionDesc struct {
	GuestAddr, Size, UserAddr, MmapOffset uint64
}

// MemTablePayload encodes struct VhostUserMemory (nregions, padding, regions).
func MemTablePayload(regs []RegionDesc) []byte {
	b := make([]byte, 8+32*len(regs))
	binary.LittleEndian.PutUint32(b, uint32(len(regs)))
	for i, r := range regs {
		o := 8 + 32*i
		binary.LittleEndian.PutUint64(b[o:], r.GuestAddr)
		binary.LittleEndian.PutUint64(b[o+8:], r.Size)
		binary.LittleEndian.PutUint64(b[o+16:], r.UserAddr)
		binary.LittleEndian.PutUint64(b[o+24:], r.MmapOffset)
	}
	return b
}
