package vhostuser

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/vring/mem"
)

// Without PROTOCOL_FEATURES a ring is enabled as soon as it is started (by
// its kick), and SET_MEM_TABLE carries the memory.
func TestLegacyStartOnKick(t *testing.T) {
	before := openFDs(t)
	f := newFrontend(t)
	f.negotiate(FeatureVersion1, 0)
	regs := []mem.Region{
		{GuestAddr: 0, Size: guestSize, UserAddr: uvaBase},
		{GuestAddr: 1 << 32, Size: guestSize, UserAddr: uvaBase + 1<<30},
	}
	f.send(ReqSetMemTable, 0, memTable(regs...), memfd(t, guestSize), memfd(t, guestSize))
	f.send(ReqSetVringNum, 0, stateMsg(1, 256))
	f.send(ReqSetVringAddr, 0, addrMsg(1, uvaBase+1<<30, uvaBase+1<<30+0x3000, uvaBase+1<<30+0x1000))
	f.send(ReqSetVringCall, 0, u64Bytes(1|VringNoFDMask))
	f.expect("setmem 2 regions")
	f.send(ReqSetVringKick, 0, u64Bytes(1), eventfd(t))
	f.expect("start 1 size=256 desc=0x100000000 avail=0x100001000 used=0x100003000 base=0 eventidx=false kick=true call=false")
	// A new table while running: the backend switches.
	f.send(ReqSetMemTable, 0, memTable(regs...), memfd(t, guestSize), memfd(t, guestSize))
	f.expect("setmem 2 regions")
	// Polling kick (no fd) restarts the ring.
	f.send(ReqSetVringKick, 0, u64Bytes(1|VringNoFDMask))
	f.expect("stop 1", "start 1 size=256 desc=0x100000000 avail=0x100001000 used=0x100003000 base=0 eventidx=false kick=false call=false")
	f.send(ReqResetDevice, 0, nil)
	f.expect("stop 1")
	if err := f.disconnect(); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t); n != before {
		t.Fatalf("%d fds open before, %d after", before, n)
	}
}

// Malformed messages: an error ack when REPLY_ACK was asked for (the
// connection goes on), else a clean close. Never a panic, an fd leak or a
// stuck goroutine.
func TestMalformed(t *testing.T) {
	hdr := func(req, flags, size uint32) []byte {
		b := make([]byte, HeaderSize)
		Header{Request: req, Flags: flags, Size: size}.put(b)
		return b
	}
	cases := []struct {
		name  string
		ack   bool // send with NEED_REPLY (REPLY_ACK negotiated): expect ack 1
		msg   func(t *testing.T) ([]byte, []int)
		shut  bool // half-close after sending (torn message)
		alive bool // connection survives
	}{
		{name: "short header", shut: true, msg: func(*testing.T) ([]byte, []int) { return hdr(1, 1, 0)[:5], nil }},
		{name: "torn payload", shut: true, msg: func(*testing.T) ([]byte, []int) { return hdr(ReqSetFeatures, 1, 8), nil }},
		{name: "payload too large", msg: func(*testing.T) ([]byte, []int) { return hdr(ReqSetFeatures, 1, MaxPayload+1), nil }},
		{name: "bad version", msg: func(*testing.T) ([]byte, []int) { return hdr(ReqGetFeatures, 2, 0), nil }},
		{name: "reply flag", msg: func(*testing.T) ([]byte, []int) { return hdr(ReqGetFeatures, Version|FlagReply, 0), nil }},
		{name: "wrong size", msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringNum, Version, make([]byte, 4)), nil
		}},
		{name: "wrong size acked", ack: true, alive: true, msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringNum, Version|FlagNeedReply, make([]byte, 4)), nil
		}},
		{name: "unknown request", msg: func(*testing.T) ([]byte, []int) { return EncodeMessage(99, Version, nil), nil }},
		{name: "unknown request acked", ack: true, alive: true, msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(1000, Version|FlagNeedReply, nil), nil
		}},
		{name: "log base", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetLogBase, Version, make([]byte, 16)), []int{memfd(t, 4096)}
		}},
		{name: "index out of range", msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringNum, Version, stateMsg(3, 128)), nil
		}},
		{name: "index out of range acked", ack: true, alive: true, msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringEnable, Version|FlagNeedReply, stateMsg(200, 1)), nil
		}},
		{name: "get base out of range", ack: false, msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqGetVringBase, Version|FlagNeedReply, stateMsg(3, 0)), nil
		}},
		{name: "kick index out of range", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringKick, Version, u64Bytes(5)), []int{eventfd(t)}
		}},
		{name: "kick two fds", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringKick, Version, u64Bytes(0)), []int{eventfd(t), eventfd(t)}
		}},
		{name: "kick nofd with fd", ack: true, alive: true, msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringKick, Version|FlagNeedReply, u64Bytes(VringNoFDMask)), []int{eventfd(t)}
		}},
		{name: "call without fd", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringCall, Version, u64Bytes(0)), nil
		}},
		{name: "reserved bits", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringErr, Version, u64Bytes(1<<20|VringNoFDMask)), nil
		}},
		{name: "nine fds", msg: func(t *testing.T) ([]byte, []int) {
			fds := make([]int, 9)
			for i := range fds {
				fds[i] = eventfd(t)
			}
			return EncodeMessage(ReqSetOwner, Version, nil), fds
		}},
		{name: "fd on get", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqGetFeatures, Version, nil), []int{eventfd(t)}
		}},
		{name: "mem table fd count", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetMemTable, Version, memTable(mem.Region{Size: 4096}, mem.Region{GuestAddr: 8192, Size: 4096})), []int{memfd(t, 8192)}
		}},
		{name: "mem table size", msg: func(t *testing.T) ([]byte, []int) {
			p := memTable(mem.Region{Size: 4096})
			binary.LittleEndian.PutUint32(p, 2)
			return EncodeMessage(ReqSetMemTable, Version, p), []int{memfd(t, 8192), memfd(t, 8192)}
		}},
		{name: "mem table zero regions", msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetMemTable, Version, make([]byte, 8)), nil
		}},
		{name: "overlapping regions acked", ack: true, alive: true, msg: func(t *testing.T) ([]byte, []int) {
			p := memTable(mem.Region{Size: 8192, UserAddr: 1 << 40}, mem.Region{GuestAddr: 4096, Size: 4096, UserAddr: 1 << 41})
			return EncodeMessage(ReqSetMemTable, Version|FlagNeedReply, p), []int{memfd(t, 8192), memfd(t, 8192)}
		}},
		{name: "region overflow acked", ack: true, alive: true, msg: func(t *testing.T) ([]byte, []int) {
			return EncodeMessage(ReqAddMemReg, Version|FlagNeedReply, memRegMsg(mem.Region{GuestAddr: ^uint64(0) - 10, Size: 4096})), []int{memfd(t, 4096)}
		}},
		{name: "bad queue size acked", ack: true, alive: true, msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringNum, Version|FlagNeedReply, stateMsg(0, 100)), nil
		}},
		{name: "unoffered feature acked", ack: true, alive: true, msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetFeatures, Version|FlagNeedReply, u64Bytes(FeatureRingPacked|FeatureVersion1)), nil
		}},
		{name: "enable state 2", msg: func(*testing.T) ([]byte, []int) {
			return EncodeMessage(ReqSetVringEnable, Version, stateMsg(0, 2)), nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			goroutines := runtime.NumGoroutine()
			before := openFDs(t)
			f := newFrontend(t)
			if c.ack {
				f.send(ReqSetProtocolFeatures, 0, u64Bytes(ProtocolReplyAck|ProtocolMQ))
			}
			b, fds := c.msg(t)
			f.sendRaw(b, fds...)
			if c.shut {
				unix.Shutdown(f.fd, unix.SHUT_WR)
			}
			if c.ack {
				if r := binary.LittleEndian.Uint64(f.recv(binary.LittleEndian.Uint32(b))); r == 0 {
					t.Fatal("acked with success")
				}
			}
			var err error
			if c.alive {
				if n := f.getU64(ReqGetQueueNum); n != 3 {
					t.Fatalf("queue num %d", n)
				}
				err = f.disconnect()
				if err != nil {
					t.Fatalf("Serve = %v after disconnect", err)
				}
			} else {
				err = f.closed()
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Serve = %v, want ErrMalformed", err)
				}
			}
			if n := openFDs(t); n != before {
				t.Fatalf("%d fds open before, %d after", before, n)
			}
			deadline := time.Now().Add(time.Second)
			for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > goroutines {
				t.Fatalf("%d goroutines before, %d after", goroutines, n)
			}
		})
	}
}
