package supervisor

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
)

func testFD(t *testing.T) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func region(gpa uint64) []byte {
	p := make([]byte, 8+memRegionSize)
	binary.LittleEndian.PutUint64(p[8:], gpa)
	binary.LittleEndian.PutUint64(p[16:], 4096)
	binary.LittleEndian.PutUint64(p[24:], gpa+0x1000000)
	return p
}

func names(msgs []*Msg) string {
	var s []string
	for _, m := range msgs {
		s = append(s, reqName(m.Req))
	}
	return strings.Join(s, " ")
}

// apply feeds a request to the session as an acknowledged one and closes
// what the session did not take.
func apply(s *session, m *Msg) {
	m.Flags |= flagVersion
	s.applyRequest(m)
	closeAll(m.FDs)
}

func TestSessionMemSlotsAndReset(t *testing.T) {
	var warnings []string
	s := newSession(func(msg string, _ ...any) { warnings = append(warnings, msg) })
	defer s.close()
	apply(s, &Msg{Req: reqSetProtocolFeatures, Payload: u64Payload(pfConfigureMemSlots | pfReplyAck)})
	for _, gpa := range []uint64{0x0, 0x100000, 0x200000} {
		apply(s, &Msg{Req: reqAddMemReg, Payload: region(gpa), FDs: []int{testFD(t)}})
	}
	apply(s, &Msg{Req: reqRemMemReg, Payload: region(0x100000), FDs: []int{testFD(t)}}) // a stray fd is closed
	apply(s, &Msg{Req: reqRemMemReg, Payload: region(0x900000)})                        // unknown: warning
	if len(warnings) != 1 || !strings.Contains(warnings[0], "unknown region") {
		t.Fatalf("warnings %v", warnings)
	}
	apply(s, &Msg{Req: reqSetVringKick, Payload: u64Payload(3 | vringNoFD)}) // polling ring, no fd
	r := s.replay()
	if got, want := names(r), "GET_FEATURES GET_PROTOCOL_FEATURES SET_PROTOCOL_FEATURES ADD_MEM_REG ADD_MEM_REG SET_VRING_KICK"; got != want {
		t.Fatalf("replay %s, want %s", got, want)
	}
	if gpa := binary.LittleEndian.Uint64(r[4].Payload[8:]); gpa != 0x200000 {
		t.Fatalf("second region gpa %#x", gpa)
	}
	if len(r[5].FDs) != 0 || r[5].Flags != flagVersion|flagNeedReply {
		t.Fatalf("NOFD kick replayed as %v", r[5])
	}
	// A malformed message is not recorded, and never panics.
	apply(s, &Msg{Req: reqSetMemTable, Payload: []byte{9, 0, 0, 0}})
	apply(s, &Msg{Req: reqSetVringCall, Payload: u64Payload(1)}) // fd missing
	apply(s, &Msg{Req: reqSetVringNum, Payload: statePayload(5000, 1)})
	apply(s, &Msg{Req: reqSetInflightFD, Payload: make([]byte, 4), FDs: []int{testFD(t)}})
	if len(warnings) != 5 {
		t.Fatalf("warnings %v", warnings)
	}
	apply(s, &Msg{Req: reqSetOwner})
	apply(s, &Msg{Req: reqSetInflightFD, Payload: make([]byte, 24), FDs: []int{testFD(t)}})
	apply(s, &Msg{Req: reqResetDevice})
	if got, want := names(s.replay()), "GET_FEATURES GET_PROTOCOL_FEATURES SET_PROTOCOL_FEATURES SET_OWNER"; got != want {
		t.Fatalf("after RESET_DEVICE: %s, want %s", got, want)
	}
	apply(s, &Msg{Req: reqResetOwner})
	if got, want := names(s.replay()), "GET_FEATURES GET_PROTOCOL_FEATURES SET_PROTOCOL_FEATURES"; got != want {
		t.Fatalf("after RESET_OWNER: %s, want %s", got, want)
	}
}

func TestSessionReplies(t *testing.T) {
	s := newSession(func(string, ...any) {})
	defer s.close()
	apply(s, &Msg{Req: reqSetProtocolFeatures, Payload: u64Payload(pfReplyAck)})
	req := &Msg{Req: reqSetVringBase, Flags: flagVersion | flagNeedReply, Payload: statePayload(0, 7)}
	if !s.expectsReply(req) {
		t.Fatal("NEED_REPLY with REPLY_ACK: no reply expected")
	}
	// A rejected request is not recorded.
	s.applyReply(req, &Msg{Req: reqSetVringBase, Payload: u64Payload(1)})
	if v := s.vrings[0]; v != nil && v.hasBase {
		t.Fatal("rejected SET_VRING_BASE recorded")
	}
	s.applyReply(req, &Msg{Req: reqSetVringBase, Payload: u64Payload(0)})
	if v := s.vrings[0]; v == nil || v.base != 7 {
		t.Fatal("acknowledged SET_VRING_BASE not recorded")
	}
	// GET_INFLIGHT_FD: the session keeps the fd and replays SET_INFLIGHT_FD.
	fd := testFD(t)
	rep := &Msg{Req: reqGetInflightFD, Payload: make([]byte, 24), FDs: []int{fd}}
	s.applyReply(&Msg{Req: reqGetInflightFD}, rep)
	if rep.FDs[0] != -1 || s.inflightFD != fd {
		t.Fatal("inflight fd not taken")
	}
	r := s.replay()
	if last := r[len(r)-2]; last.Req != reqSetInflightFD || last.FDs[0] != fd {
		t.Fatalf("replay: %s", names(r))
	}
	// Masking.
	m := &Msg{Req: reqGetProtocolFeatures, Payload: u64Payload(^uint64(0))}
	maskReply(m)
	if v, _ := m.u64(); v != relayableProtocolFeatures {
		t.Fatalf("masked protocol features %#x", v)
	}
	// A replacement lacking a negotiated feature is detected.
	if miss := s.checkOffer(&Msg{Req: reqGetProtocolFeatures, Payload: u64Payload(0)}); miss == "" {
		t.Fatal("missing REPLY_ACK not reported")
	}
	for _, req := range []uint32{reqGetFeatures, reqGetVringBase, reqGetConfig, reqGetInflightFD, reqGetMaxMemSlots} {
		if !s.expectsReply(&Msg{Req: req}) {
			t.Errorf("%s: no reply expected", reqName(req))
		}
	}
	if s.expectsReply(&Msg{Req: reqSetVringCall}) {
		t.Error("SET_VRING_CALL without NEED_REPLY expects a reply")
	}
}

// inherit appends the Config.Inherit fds after the stored ones and names
// them all in LISTEN_FDS/LISTEN_FDNAMES.
func TestInherit(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	stored := []*os.File{os.NewFile(uintptr(dupFD(t, int(r.Fd()))), "a")}
	env := []string{fdstore.EnvListenFDs + "=1", fdstore.EnvListenFDNames + "=state.worker", fdstore.EnvListenChild + "=1"}
	env, files, err := inherit(env, stored, []fdstore.NamedFD{{Name: "listen.metrics", FD: int(w.Fd())}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	want := []string{fdstore.EnvListenFDs + "=2", fdstore.EnvListenFDNames + "=state.worker:listen.metrics", fdstore.EnvListenChild + "=1"}
	if strings.Join(env, " ") != strings.Join(want, " ") || len(files) != 2 {
		t.Fatalf("env %q, %d files; want %q, 2 files", env, len(files), want)
	}
	if int(files[1].Fd()) == int(w.Fd()) {
		t.Fatal("the inherited fd was not duplicated")
	}
	// No stored fds: only the inherited ones.
	env, files2, err := inherit(nil, nil, []fdstore.NamedFD{{Name: "listen.pprof", FD: int(w.Fd())}})
	if err != nil {
		t.Fatal(err)
	}
	files2[0].Close()
	if env[0] != fdstore.EnvListenFDs+"=1" || env[1] != fdstore.EnvListenFDNames+"=listen.pprof" {
		t.Fatalf("env %q", env)
	}
	// Names and files that disagree are refused.
	if _, _, err := inherit([]string{fdstore.EnvListenFDNames + "=x:y"}, stored[:1], []fdstore.NamedFD{{Name: "z", FD: int(w.Fd())}}); err == nil {
		t.Fatal("2 names for 1 file accepted")
	}
}

func dupFD(t *testing.T, fd int) int {
	t.Helper()
	n, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
