package supervisor

import (
	"encoding/binary"
	"fmt"
)

// vhost-user front-end requests (QEMU docs/interop/vhost-user.rst). Only the
// ones the supervisor records, replays or must know the reply rule of are
// named; every other request is relayed untouched.
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqSetBackendReqFD     = 21
	reqGetConfig           = 24
	reqCreateCryptoSession = 26
	reqPostcopyAdvise      = 28
	reqPostcopyEnd         = 30
	reqGetInflightFD       = 31
	reqSetInflightFD       = 32
	reqResetDevice         = 34
	reqGetMaxMemSlots      = 36
	reqAddMemReg           = 37
	reqRemMemReg           = 38
	reqSetStatus           = 39
	reqGetStatus           = 40
	reqGetSharedObject     = 41
	reqSetDeviceStateFD    = 42
	reqCheckDeviceState    = 43
)

var reqNames = map[uint32]string{
	1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER",
	5: "SET_MEM_TABLE", 6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM",
	9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
	12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR",
	15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM",
	18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
	21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN",
	24: "GET_CONFIG", 25: "SET_CONFIG", 26: "CREATE_CRYPTO_SESSION",
	27: "CLOSE_CRYPTO_SESSION", 28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN",
	30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD",
	33: "GPU_SET_SOCKET", 34: "RESET_DEVICE", 35: "VRING_KICK",
	36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG",
	39: "SET_STATUS", 40: "GET_STATUS", 41: "GET_SHARED_OBJECT",
	42: "SET_DEVICE_STATE_FD", 43: "CHECK_DEVICE_STATE",
}

func reqName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("REQUEST_%d", r)
}

// Header flags.
const (
	flagVersion   = 0x1 // protocol version 1 in bits 0-1
	flagReply     = 0x4
	flagNeedReply = 0x8
)

// Feature bits.
const (
	featProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	featLogAll           = 1 << 26 // VHOST_F_LOG_ALL
)

// Protocol feature bits.
const (
	pfMQ                = 1 << 0
	pfLogShmfd          = 1 << 1
	pfReplyAck          = 1 << 3
	pfBackendReq        = 1 << 5
	pfConfig            = 1 << 9
	pfBackendSendFD     = 1 << 10
	pfInflightShmfd     = 1 << 12
	pfResetDevice       = 1 << 13
	pfConfigureMemSlots = 1 << 15
	pfStatus            = 1 << 16
)

// relayableProtocolFeatures are the protocol features whose state the
// session record can rebuild in a new worker. The others are masked out of
// GET_PROTOCOL_FEATURES replies, so the frontend never negotiates them:
// LOG_SHMFD and LOG_ALL (dirty log for migration: not recorded), RARP and MTU
// (net), CROSS_ENDIAN (per-ring endianness: not recorded), CRYPTO_SESSION
// (session state lives in the worker), PAGEFAULT (postcopy), HOST_NOTIFIER
// (mappings the dead worker installed in QEMU), INBAND_NOTIFICATIONS (kicks
// as messages would be lost in a crash), XEN_MMAP, SHARED_OBJECT and
// DEVICE_STATE (migration).
const relayableProtocolFeatures = pfMQ | pfReplyAck | pfBackendReq | pfConfig |
	pfBackendSendFD | pfInflightShmfd | pfResetDevice | pfConfigureMemSlots | pfStatus

// maskedFeatures are virtio/vhost feature bits removed from GET_FEATURES.
const maskedFeatures = featLogAll

// Framing limits.
const (
	hdrSize       = 12
	maxPayload    = 4096 // far above the largest QEMU payload (config: 268 bytes)
	maxMsgFDs     = 32   // SET_MEM_TABLE carries at most 8
	vringNoFD     = 1 << 8
	vringIdxMask  = 0xff
	memRegionSize = 32
	maxVrings     = 1024
)

// Msg is one vhost-user message. FDs are owned by whoever holds the Msg,
// unless stated otherwise; an entry set to -1 has been taken by the session.
type Msg struct {
	Req     uint32
	Flags   uint32
	Payload []byte
	FDs     []int
}

func (m *Msg) String() string {
	return fmt.Sprintf("%s(flags=%#x size=%d fds=%d)", reqName(m.Req), m.Flags, len(m.Payload), len(m.FDs))
}

func (m *Msg) u64() (uint64, bool) {
	if len(m.Payload) < 8 {
		return 0, false
	}
	return binary.LittleEndian.Uint64(m.Payload), true
}

// state returns a vhost_vring_state {index u32, num u32}.
func (m *Msg) state() (idx, num uint32, ok bool) {
	if len(m.Payload) < 8 {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint32(m.Payload), binary.LittleEndian.Uint32(m.Payload[4:]), true
}

func u64Payload(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

func statePayload(idx, num uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, idx)
	binary.LittleEndian.PutUint32(b[4:], num)
	return b
}

// alwaysReplies lists requests that are answered whatever the flags.
func alwaysReplies(req uint32) bool {
	switch req {
	case reqGetFeatures, reqGetProtocolFeatures, reqGetQueueNum, reqGetVringBase,
		reqGetConfig, reqCreateCryptoSession, reqPostcopyAdvise, reqPostcopyEnd,
		reqGetInflightFD, reqGetMaxMemSlots, reqGetStatus, reqGetSharedObject,
		reqSetDeviceStateFD, reqCheckDeviceState:
		return true
	}
	return false
}
