package supervisor

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
)

// The fake worker: the test binary re-executed with FAKE_WORKER=1. It speaks
// just enough vhost-user to answer the GET_* messages with fixed values and
// REPLY_ACK acks, keeps a counter in a memfd it stores in the fd store as
// "state", logs everything it sees as JSON lines in FAKE_DIR/w-<pid>.log, and
// crashes on demand:
//
//	FAKE_DIE_AT_START=1    exit 7 before serving
//	FAKE_CRASH_REQ=<req>   first worker only: crash on that request
//	FAKE_CRASH_MODE=m      how: before (no reply), partial (header only), after (full reply),
//	                       hang (never answers, blocks forever)
//	FAKE_CRASH_PCT=<n>     any worker: crash on n% of messages, random mode
const (
	fakeFeatures = 1<<32 | featProtocolFeatures | featLogAll
	fakeProtocol = pfMQ | pfLogShmfd | pfReplyAck | pfBackendReq | pfConfig |
		pfInflightShmfd | pfConfigureMemSlots | 1<<14
)

type fakeEvent struct {
	Ev      string   `json:"ev"`
	Resume  bool     `json:"resume,omitempty"`
	Names   []string `json:"names,omitempty"`
	Counter uint64   `json:"counter,omitempty"`
	Req     uint32   `json:"req,omitempty"`
	Flags   uint32   `json:"flags,omitempty"`
	Payload string   `json:"payload,omitempty"`
	Inos    []uint64 `json:"inos,omitempty"`
	Mode    string   `json:"mode,omitempty"`
	Err     string   `json:"err,omitempty"`
}

func fakeWorkerMain() int {
	logf, err := os.OpenFile(filepath.Join(os.Getenv("FAKE_DIR"), fmt.Sprintf("w-%d.log", os.Getpid())),
		os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake worker:", err)
		return 2
	}
	emit := func(e fakeEvent) {
		b, _ := json.Marshal(e)
		logf.Write(append(b, '\n'))
	}
	fail := func(err error) int {
		emit(fakeEvent{Ev: "error", Err: err.Error()})
		return 3
	}
	vhostFD := -1
	for _, a := range os.Args[1:] {
		if v, ok := strings.CutPrefix(a, VhostFDArg+"="); ok {
			vhostFD, _ = strconv.Atoi(v)
		}
	}
	resume := os.Getenv(EnvResume) == "1"
	fds, err := fdstore.ListenFDs(true)
	if err != nil {
		return fail(err)
	}
	client, err := fdstore.FromEnv(true)
	if err != nil || client == nil {
		return fail(fmt.Errorf("no fd store: %v", err))
	}
	if os.Getenv("FAKE_DIE_AT_START") == "1" {
		emit(fakeEvent{Ev: "die"})
		return 7
	}
	var names []string
	state := -1
	for _, f := range fds {
		names = append(names, f.Name)
		if f.Name == "state" && state < 0 {
			state = f.FD
		} else {
			unix.Close(f.FD)
		}
	}
	var ctr [8]byte
	if state >= 0 {
		if _, err := unix.Pread(state, ctr[:], 0); err != nil {
			return fail(err)
		}
		binary.LittleEndian.PutUint64(ctr[:], binary.LittleEndian.Uint64(ctr[:])+1)
		if _, err := unix.Pwrite(state, ctr[:], 0); err != nil {
			return fail(err)
		}
	} else {
		state, err = unix.MemfdCreate("fake-state", unix.MFD_CLOEXEC)
		if err != nil {
			return fail(err)
		}
		binary.LittleEndian.PutUint64(ctr[:], 1)
		unix.Pwrite(state, ctr[:], 0)
		if err := client.Store("state", state); err != nil {
			return fail(err)
		}
	}
	emit(fakeEvent{Ev: "start", Resume: resume, Names: names, Counter: binary.LittleEndian.Uint64(ctr[:])})
	client.Ready()

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		emit(fakeEvent{Ev: "term"})
		os.Exit(0)
	}()

	conn, err := newMsgConn(vhostFD, "fake-vhost")
	if err != nil {
		return fail(err)
	}
	crashReq, _ := strconv.Atoi(os.Getenv("FAKE_CRASH_REQ"))
	crashMode := os.Getenv("FAKE_CRASH_MODE")
	crashPct, _ := strconv.Atoi(os.Getenv("FAKE_CRASH_PCT"))
	rng := rand.New(rand.NewSource(int64(os.Getpid())))
	var protocol uint64
	bases := map[uint32]uint32{}
	crash := func(mode string, req uint32) {
		emit(fakeEvent{Ev: "crash", Mode: mode, Req: req})
		unix.Kill(os.Getpid(), unix.SIGKILL)
		select {}
	}
	for {
		m, err := conn.ReadMsg()
		if err != nil {
			emit(fakeEvent{Ev: "eof", Err: err.Error()})
			return 0
		}
		var inos []uint64
		for _, fd := range m.FDs {
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			inos = append(inos, st.Ino)
		}
		closeAll(m.FDs)
		emit(fakeEvent{Ev: "msg", Req: m.Req, Flags: m.Flags, Payload: hex.EncodeToString(m.Payload), Inos: inos})

		mode := ""
		if !resume && crashReq != 0 && int(m.Req) == crashReq {
			mode = crashMode
		} else if crashPct > 0 && rng.Intn(100) < crashPct {
			mode = []string{"before", "partial", "after"}[rng.Intn(3)]
		}
		if mode == "hang" {
			emit(fakeEvent{Ev: "hang", Req: m.Req})
			for {
				time.Sleep(time.Hour) // (a sleeper, not select{}: Go would call that a deadlock)
			}
		}
		rep := fakeReply(m, protocol, bases)
		if mode == "before" || (mode != "" && rep == nil) {
			crash("before", m.Req)
		}
		if rep != nil {
			if mode == "partial" {
				var hdr [hdrSize]byte
				binary.LittleEndian.PutUint32(hdr[0:], rep.Req)
				binary.LittleEndian.PutUint32(hdr[4:], rep.Flags)
				binary.LittleEndian.PutUint32(hdr[8:], uint32(len(rep.Payload)))
				conn.writeRaw(hdr[:], nil)
				crash("partial", m.Req)
			}
			if err := conn.WriteMsg(rep); err != nil {
				return fail(err)
			}
			closeAll(rep.FDs)
			if mode == "after" {
				crash("after", m.Req)
			}
		}
		switch m.Req {
		case reqSetProtocolFeatures:
			protocol, _ = m.u64()
		case reqSetVringBase:
			if i, n, ok := m.state(); ok {
				bases[i] = n
			}
		}
	}
}

func fakeReply(m *Msg, protocol uint64, bases map[uint32]uint32) *Msg {
	rep := &Msg{Req: m.Req, Flags: flagVersion | flagReply}
	switch m.Req {
	case reqGetFeatures:
		rep.Payload = u64Payload(fakeFeatures)
	case reqGetProtocolFeatures:
		rep.Payload = u64Payload(fakeProtocol)
	case reqGetQueueNum:
		rep.Payload = u64Payload(2)
	case reqGetMaxMemSlots:
		rep.Payload = u64Payload(32)
	case reqGetVringBase:
		i, _, _ := m.state()
		rep.Payload = statePayload(i, bases[i]+5)
	case reqGetConfig:
		rep.Payload = append([]byte(nil), m.Payload...)
	case reqGetInflightFD:
		fd, err := unix.MemfdCreate("fake-inflight", unix.MFD_CLOEXEC)
		if err != nil {
			panic(err)
		}
		rep.Payload = make([]byte, 24)
		binary.LittleEndian.PutUint64(rep.Payload, 4096)
		rep.FDs = []int{fd}
	default:
		if m.Flags&flagNeedReply == 0 || protocol&pfReplyAck == 0 {
			return nil
		}
		rep.Payload = u64Payload(0)
	}
	return rep
}
