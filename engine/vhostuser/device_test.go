package vhostuser

import (
	"reflect"
	"strings"
	"testing"

	"vfsd/vring/mem"
)

const (
	uvaBase   = 0x7f0000000000
	guestSize = 1 << 20
)

func u64Bytes(v uint64) []byte { return u64(v) }

// negotiate performs QEMU 7.2's vhost_user_backend_init and vhost_dev_init
// exchanges.
func (f *frontend) negotiate(features, protocol uint64) {
	f.t.Helper()
	if got := f.getU64(ReqGetFeatures); got != offeredFeatures {
		f.t.Fatalf("features %#x", got)
	}
	if protocol != 0 {
		f.getU64(ReqGetProtocolFeatures)
		f.send(ReqSetProtocolFeatures, 0, u64Bytes(protocol))
		if n := f.getU64(ReqGetQueueNum); n != 3 {
			f.t.Fatalf("queue num %d", n)
		}
	}
	f.send(ReqSetOwner, 0, nil)
	f.send(ReqSetFeatures, 0, u64Bytes(features))
}

func (f *frontend) expect(want ...string) {
	f.t.Helper()
	// A GET round trip orders the device's handling before the check.
	f.getU64(ReqGetQueueNum)
	got := f.be.take()
	if len(want) == 0 && len(got) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		f.t.Fatalf("backend events\n got %q\nwant %q", got, want)
	}
}

const allFeatures = FeatureVersion1 | FeatureRingIndirectDesc | FeatureRingEventIdx | FeatureProtocolFeatures

func TestOffers(t *testing.T) {
	f := newFrontend(t)
	if f.getU64(ReqGetFeatures)&FeatureRingPacked != 0 {
		t.Fatal("packed rings offered")
	}
	p := f.getU64(ReqGetProtocolFeatures)
	for _, b := range []uint64{ProtocolMQ, ProtocolReplyAck, ProtocolConfigureMemSlots, ProtocolInflightShmFD} {
		if p&b == 0 {
			t.Fatalf("protocol features %#x lack %#x", p, b)
		}
	}
	if p&ProtocolLogShmFD != 0 {
		t.Fatalf("protocol features %#x offer unimplemented ones", p)
	}
	if n := f.getU64(ReqGetMaxMemSlots); n != DefaultMemSlots {
		t.Fatalf("mem slots %d", n)
	}
	if err := f.disconnect(); err != nil {
		t.Fatalf("Serve after disconnect: %v", err)
	}
}

// The sequence QEMU 7.2 sends for vhost-user-fs-pci: boot, guest driver
// reset, restart, memory hot-unplug, disconnect.
func TestQEMULifecycle(t *testing.T) {
	before := openFDs(t)
	f := newFrontend(t)
	f.be.advance = 5
	f.negotiate(allFeatures, ProtocolMQ|ProtocolReplyAck|ProtocolConfigureMemSlots)
	region := mem.Region{GuestAddr: 0, Size: guestSize, UserAddr: uvaBase}
	if r := f.ack(ReqAddMemReg, memRegMsg(region), memfd(t, guestSize)); r != 0 {
		t.Fatalf("ADD_MEM_REG ack %d", r)
	}
	f.expect("setmem 1 regions")
	kicks := [2]int{eventfd(t), eventfd(t)}
	for q := uint32(0); q < 2; q++ {
		for _, m := range []struct {
			req uint32
			p   []byte
			fds []int
		}{
			{ReqSetVringNum, stateMsg(q, 128), nil},
			{ReqSetVringBase, stateMsg(q, 0), nil},
			{ReqSetVringAddr, addrMsg(q, uvaBase+0x10000*uint64(q+1), uvaBase+0x10000*uint64(q+1)+0x2000, uvaBase+0x10000*uint64(q+1)+0x1000), nil},
			{ReqSetVringKick, u64Bytes(uint64(q)), []int{kicks[q]}},
			{ReqSetVringCall, u64Bytes(uint64(q)), []int{eventfd(t)}},
		} {
			if r := f.ack(m.req, m.p, m.fds...); r != 0 {
				t.Fatalf("%s queue %d: ack %d", RequestName(m.req), q, r)
			}
		}
	}
	// The kick starts and enables each ring (its call fd arrives after it).
	f.expect(
		"start 0 size=128 desc=0x10000 avail=0x11000 used=0x12000 base=0 eventidx=true kick=true call=false",
		"setcall 0",
		"start 1 size=128 desc=0x20000 avail=0x21000 used=0x22000 base=0 eventidx=true kick=true call=false",
		"setcall 1")
	f.send(ReqSetVringEnable, 0, stateMsg(0, 1))
	f.send(ReqSetVringEnable, 0, stateMsg(1, 1))
	f.expect()

	// Interrupt masking changes the call fd of a running queue.
	if r := f.ack(ReqSetVringCall, u64Bytes(1), eventfd(t)); r != 0 {
		t.Fatalf("SET_VRING_CALL ack %d", r)
	}
	f.expect("setcall 1")

	// Guest driver reset: disable, then GET_VRING_BASE returns the ring's
	// last avail index; a running ring's parameters cannot change.
	if r := f.ack(ReqSetVringNum, stateMsg(1, 64)); r == 0 {
		t.Fatal("SET_VRING_NUM on a running ring acked")
	}
	f.send(ReqSetVringEnable, 0, stateMsg(1, 0))
	f.send(ReqGetVringBase, 0, stateMsg(1, 0))
	if s := parseVringState(f.recv(ReqGetVringBase)); s != (VringState{1, 5}) {
		t.Fatalf("GET_VRING_BASE = %+v", s)
	}
	f.expect("stop 1")
	// Restart: enabling is not enough, the ring needs a new kick.
	f.send(ReqSetVringBase, 0, stateMsg(1, 5))
	f.send(ReqSetVringEnable, 0, stateMsg(1, 1))
	f.expect()
	f.send(ReqSetVringKick, 0, u64Bytes(1), eventfd(t))
	f.expect("start 1 size=128 desc=0x20000 avail=0x21000 used=0x22000 base=5 eventidx=true kick=true call=true")
	// Disable pauses a running ring, enable resumes it where it stopped.
	f.send(ReqSetVringEnable, 0, stateMsg(0, 0))
	f.send(ReqSetVringEnable, 0, stateMsg(0, 1))
	f.expect("stop 0", "start 0 size=128 desc=0x10000 avail=0x11000 used=0x12000 base=5 eventidx=true kick=true call=true")

	// Removing the only region stops every ring.
	if r := f.ack(ReqRemMemReg, memRegMsg(region)); r != 0 {
		t.Fatalf("REM_MEM_REG ack %d", r)
	}
	got := f.be.take()
	if len(got) != 2 || !strings.HasPrefix(got[0], "stop") || !strings.HasPrefix(got[1], "stop") {
		t.Fatalf("after REM_MEM_REG: %q", got)
	}
	if r := f.ack(ReqRemMemReg, memRegMsg(region)); r == 0 {
		t.Fatal("removing an absent region acked")
	}
	// Memory comes back: the rings (still started and enabled) resume.
	if r := f.ack(ReqAddMemReg, memRegMsg(region), memfd(t, guestSize)); r != 0 {
		t.Fatalf("ADD_MEM_REG ack %d", r)
	}
	got = f.be.take()
	if len(got) != 3 || got[0] != "setmem 1 regions" {
		t.Fatalf("after ADD_MEM_REG: %q", got)
	}
	if err := f.disconnect(); err != nil {
		t.Fatalf("Serve after disconnect: %v", err)
	}
	if ev := f.be.take(); len(ev) != 2 || len(f.be.running) != 0 {
		t.Fatalf("at disconnect: %q, still running %v", ev, f.be.running)
	}
	if n := openFDs(t); n != before {
		t.Fatalf("%d fds open before, %d after", before, n)
	}
}
