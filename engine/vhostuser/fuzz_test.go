package vhostuser

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/vring/mem"
)

// Fuzz inputs are a stream of messages; bits 16-19 of a message's flags (not
// used by the protocol) say how many fds come with it: memfds for memory
// requests, eventfds otherwise.
const fuzzFDShift = 16

func fuzzMsg(req, flags uint32, nfds int, payload []byte) []byte {
	return EncodeMessage(req, Version|flags|uint32(nfds)<<fuzzFDShift, payload)
}

// fuzzSeeds are the inputs of testdata/fuzz/FuzzMessage (regenerate with
// VFSD_WRITE_SEEDS=1 go test -run TestWriteSeeds ./engine/vhostuser).
func fuzzSeeds() map[string][]byte {
	cat := func(ms ...[]byte) []byte {
		var b []byte
		for _, m := range ms {
			b = append(b, m...)
		}
		return b
	}
	region := mem.Region{GuestAddr: 0, Size: guestSize, UserAddr: uvaBase}
	ring := func(q uint32, kickFlags uint64, kickFDs int) []byte {
		base := uvaBase + 0x10000*uint64(q+1)
		return cat(
			fuzzMsg(ReqSetVringNum, FlagNeedReply, 0, stateMsg(q, 128)),
			fuzzMsg(ReqSetVringBase, FlagNeedReply, 0, stateMsg(q, 0)),
			fuzzMsg(ReqSetVringAddr, FlagNeedReply, 0, addrMsg(q, base, base+0x2000, base+0x1000)),
			fuzzMsg(ReqSetVringKick, FlagNeedReply, kickFDs, u64(uint64(q)|kickFlags)),
			fuzzMsg(ReqSetVringCall, FlagNeedReply, 1, u64(uint64(q))),
			fuzzMsg(ReqSetVringEnable, 0, 0, stateMsg(q, 1)),
		)
	}
	boot := cat(
		fuzzMsg(ReqGetFeatures, 0, 0, nil),
		fuzzMsg(ReqGetProtocolFeatures, 0, 0, nil),
		fuzzMsg(ReqSetProtocolFeatures, 0, 0, u64(offeredProtocol)),
		fuzzMsg(ReqGetQueueNum, 0, 0, nil),
		fuzzMsg(ReqGetMaxMemSlots, 0, 0, nil),
		fuzzMsg(ReqSetOwner, 0, 0, nil),
		fuzzMsg(ReqSetFeatures, FlagNeedReply, 0, u64(allFeatures)),
		fuzzMsg(ReqAddMemReg, FlagNeedReply, 1, memRegMsg(region)),
		ring(0, 0, 1), ring(1, 0, 1),
	)
	return map[string][]byte{
		"qemu-boot": boot,
		"qemu-reset": cat(boot,
			fuzzMsg(ReqSetVringEnable, 0, 0, stateMsg(1, 0)),
			fuzzMsg(ReqGetVringBase, 0, 0, stateMsg(1, 0)),
			ring(1, 0, 1),
			fuzzMsg(ReqRemMemReg, FlagNeedReply, 0, memRegMsg(region)),
			fuzzMsg(ReqResetDevice, 0, 0, nil)),
		"legacy": cat(
			fuzzMsg(ReqSetFeatures, 0, 0, u64(FeatureVersion1)),
			fuzzMsg(ReqSetMemTable, 0, 1, memTable(region)),
			ring(2, VringNoFDMask, 0),
			fuzzMsg(ReqSetVringErr, 0, 1, u64(2)),
			fuzzMsg(ReqSetBackendReqFD, 0, 1, nil),
			fuzzMsg(ReqResetOwner, 0, 0, nil)),
		"malformed": cat(
			fuzzMsg(ReqSetProtocolFeatures, 0, 0, u64(ProtocolReplyAck)),
			fuzzMsg(ReqSetVringNum, FlagNeedReply, 0, stateMsg(9, 128)),
			fuzzMsg(ReqSetVringKick, FlagNeedReply, 2, u64(0)),
			fuzzMsg(99, FlagNeedReply, 0, nil),
			fuzzMsg(ReqSetMemTable, FlagNeedReply, 3, memTable(region, region)),
			fuzzMsg(ReqGetVringBase, 0, 0, stateMsg(7, 0))),
	}
}

func TestWriteSeeds(t *testing.T) {
	if os.Getenv("VFSD_WRITE_SEEDS") == "" {
		t.Skip("set VFSD_WRITE_SEEDS=1 to regenerate testdata/fuzz/FuzzMessage")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzMessage")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range fuzzSeeds() {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzMessage feeds message streams to a Device: no input may panic it, leak
// an fd or leave a queue running after Close.
func FuzzMessage(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		before := openFDs(t)
		be := newFakeBackend()
		d, err := NewDevice(Options{Backend: be, RequestQueues: 2, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		for len(data) > 0 {
			h, err := ParseHeader(data)
			if err != nil || int(h.Size) > len(data)-HeaderSize {
				break
			}
			m := Message{Header: h, Payload: data[HeaderSize : HeaderSize+int(h.Size)]}
			data = data[HeaderSize+int(h.Size):]
			n := min(int(h.Flags>>fuzzFDShift)&0xf, MaxFDs)
			for i := 0; i < n; i++ {
				var fd int
				if h.Request == ReqSetMemTable || h.Request == ReqAddMemReg {
					fd, err = mem.NewMemfd("fuzz", guestSize)
				} else {
					fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
				}
				if err != nil {
					t.Fatal(err)
				}
				m.FDs = append(m.FDs, fd)
			}
			// REPLY_ACK as negotiated before the message (a
			// SET_PROTOCOL_FEATURES turning it on is not acked itself; the
			// supervisor's relay decides the same way).
			acks := d.protocol&ProtocolReplyAck != 0
			reply, err := d.HandleMessage(&m)
			if err != nil {
				break
			}
			if h.Flags&FlagNeedReply != 0 && acks && reply == nil {
				t.Fatalf("%s: NEED_REPLY without a reply", RequestName(h.Request))
			}
		}
		d.Close()
		if len(be.running) != 0 {
			t.Fatalf("queues still running after Close: %v", be.running)
		}
		if n := openFDs(t); n != before {
			t.Fatalf("%d fds open before, %d after", before, n)
		}
	})
}
