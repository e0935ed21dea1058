package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
)

func TestMain(m *testing.M) {
	if os.Getenv("FAKE_WORKER") == "1" {
		os.Exit(fakeWorkerMain())
	}
	os.Unsetenv("NOTIFY_SOCKET")
	os.Exit(m.Run())
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// harness is a fake frontend (the test) driving a supervisor whose workers
// are fake workers.
type harness struct {
	t      *testing.T
	dir    string
	sup    *Supervisor
	fe     *msgConn
	logs   *syncBuf
	runErr chan error
	cancel context.CancelFunc

	// The frontend's fds (memfds, so that each has its own inode).
	mem       [2]int
	kick      [2]int
	callfd    [2]int
	backend   int
	replyAck  bool
	protocol  uint64
	lastBase1 uint32
}

func startHarness(t *testing.T, env []string, mod func(*Config)) *harness {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: t.TempDir(), logs: &syncBuf{}, runErr: make(chan error, 1)}
	cfg := Config{
		FrontendFD:   sp[0],
		WorkerPath:   exe,
		WorkerArgs:   []string{"-test.run=^$"},
		Env:          append(append(os.Environ(), "FAKE_WORKER=1", "FAKE_DIR="+h.dir), env...),
		MaxRestarts:  1000,
		BackoffMin:   time.Millisecond,
		BackoffMax:   4 * time.Millisecond,
		ReplyTimeout: 10 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	h.sup, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.fe, err = newMsgConn(sp[1], "test-frontend")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.sup.Run(ctx) }()
	for i := range h.mem {
		h.mem[i] = h.memfd(fmt.Sprint("mem", i))
		h.kick[i] = h.memfd(fmt.Sprint("kick", i))
		h.callfd[i] = h.memfd(fmt.Sprint("call", i))
	}
	h.backend = h.memfd("backend")
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			t.Logf("supervisor log:\n%s", tail(h.logs.String(), 60))
			logs := h.workerLogs()
			pids := make([]int, 0, len(logs))
			for pid := range logs {
				pids = append(pids, pid)
			}
			sort.Ints(pids)
			for _, pid := range pids[max(0, len(pids)-3):] {
				b, _ := json.Marshal(logs[pid])
				t.Logf("worker %d: %s", pid, tail(string(b), 3))
			}
		}
	})
	return h
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

func (h *harness) memfd(name string) int {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// stop closes the frontend and waits for Run.
func (h *harness) stop() error {
	if h.fe != nil {
		h.fe.Close()
		h.fe = nil
	}
	select {
	case err := <-h.runErr:
		h.runErr <- err
		return err
	case <-time.After(5 * time.Second):
		h.t.Error("supervisor did not return after the frontend closed")
		h.cancel()
		return <-h.runErr
	}
}

func ino(t *testing.T, fd int) uint64 {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// send writes a message that has no reply.
func (h *harness) send(req uint32, payload []byte, fds ...int) {
	h.t.Helper()
	if err := h.fe.WriteMsg(&Msg{Req: req, Flags: flagVersion, Payload: payload, FDs: fds}); err != nil {
		h.t.Fatalf("frontend write %s: %v", reqName(req), err)
	}
}

// call writes a message whose reply is due and returns the reply.
func (h *harness) call(req, flags uint32, payload []byte, fds ...int) *Msg {
	h.t.Helper()
	if err := h.fe.WriteMsg(&Msg{Req: req, Flags: flagVersion | flags, Payload: payload, FDs: fds}); err != nil {
		h.t.Fatalf("frontend write %s: %v", reqName(req), err)
	}
	h.fe.setReadDeadline(time.Now().Add(15 * time.Second))
	rep, err := h.fe.ReadMsg()
	if err != nil {
		h.t.Fatalf("frontend read reply to %s: %v", reqName(req), err)
	}
	closeAll(rep.FDs)
	if rep.Req != req || rep.Flags != flagVersion|flagReply {
		h.t.Fatalf("reply to %s: got %s flags %#x", reqName(req), rep, rep.Flags)
	}
	return rep
}

// ack sends a SET with NEED_REPLY and checks the zero status.
func (h *harness) ack(req uint32, payload []byte, fds ...int) {
	h.t.Helper()
	if !h.replyAck {
		h.send(req, payload, fds...)
		return
	}
	rep := h.call(req, flagNeedReply, payload, fds...)
	if v, ok := rep.u64(); !ok || v != 0 {
		h.t.Fatalf("ack of %s: %v", reqName(req), rep.Payload)
	}
}

func u64of(t *testing.T, m *Msg) uint64 {
	v, ok := m.u64()
	if !ok {
		t.Fatalf("short payload in %s", m)
	}
	return v
}

func memTable(n int) []byte {
	p := make([]byte, 8+n*memRegionSize)
	binary.LittleEndian.PutUint32(p, uint32(n))
	for i := 0; i < n; i++ {
		r := p[8+i*memRegionSize:]
		binary.LittleEndian.PutUint64(r[0:], uint64(i)<<30)                 // gpa
		binary.LittleEndian.PutUint64(r[8:], 1<<20)                         // size
		binary.LittleEndian.PutUint64(r[16:], 0x7f0000000000+uint64(i)<<30) // uva
	}
	return p
}

func vringAddr(q uint32) []byte {
	p := make([]byte, 40)
	binary.LittleEndian.PutUint32(p, q)
	for i := 0; i < 4; i++ {
		binary.LittleEndian.PutUint64(p[8+8*i:], 0x7f0000000000+uint64(q)<<16+uint64(i)<<12)
	}
	return p
}

const testProtocol = pfMQ | pfReplyAck | pfBackendReq | pfConfig

// initSession runs a QEMU-like start-up sequence.
func (h *harness) initSession() { h.initSessionWith(testProtocol) }

func (h *harness) initSessionWith(protocol uint64) {
	t := h.t
	t.Helper()
	if got := u64of(t, h.call(reqGetFeatures, 0, nil)); got != fakeFeatures&^featLogAll {
		t.Fatalf("GET_FEATURES = %#x, want %#x (LOG_ALL masked)", got, uint64(fakeFeatures&^featLogAll))
	}
	if got := u64of(t, h.call(reqGetProtocolFeatures, 0, nil)); got != fakeProtocol&relayableProtocolFeatures {
		t.Fatalf("GET_PROTOCOL_FEATURES = %#x, want %#x", got, uint64(fakeProtocol&relayableProtocolFeatures))
	}
	h.send(reqSetProtocolFeatures, u64Payload(protocol))
	h.replyAck, h.protocol = protocol&pfReplyAck != 0, protocol
	if got := u64of(t, h.call(reqGetQueueNum, 0, nil)); got != 2 {
		t.Fatalf("GET_QUEUE_NUM = %d", got)
	}
	h.ack(reqSetBackendReqFD, nil, h.backend)
	h.send(reqSetOwner, nil)
	h.call(reqGetFeatures, 0, nil)
	h.ack(reqSetFeatures, u64Payload(1<<32|featProtocolFeatures))
	h.ack(reqSetMemTable, memTable(2), h.mem[0], h.mem[1])
	for q := uint32(0); q < 2; q++ {
		h.send(reqSetVringNum, statePayload(q, 256))
		h.ack(reqSetVringBase, statePayload(q, 0))
		h.send(reqSetVringAddr, vringAddr(q))
		h.ack(reqSetVringKick, u64Payload(uint64(q)), h.kick[q])
		h.send(reqSetVringCall, u64Payload(uint64(q)), h.callfd[q])
		h.ack(reqSetVringEnable, statePayload(q, 1))
	}
}

// workerLogs returns every worker's events, by pid.
func (h *harness) workerLogs() map[int][]fakeEvent {
	h.t.Helper()
	out := map[int][]fakeEvent{}
	ents, _ := filepath.Glob(filepath.Join(h.dir, "w-*.log"))
	for _, p := range ents {
		var pid int
		fmt.Sscanf(filepath.Base(p), "w-%d.log", &pid)
		f, err := os.Open(p)
		if err != nil {
			h.t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e fakeEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				h.t.Fatalf("%s: %v", p, err)
			}
			out[pid] = append(out[pid], e)
		}
		f.Close()
	}
	return out
}

func msgsOf(evs []fakeEvent) []fakeEvent {
	var out []fakeEvent
	for _, e := range evs {
		if e.Ev == "msg" {
			out = append(out, e)
		}
	}
	return out
}

func startOf(evs []fakeEvent) *fakeEvent {
	for i := range evs {
		if evs[i].Ev == "start" {
			return &evs[i]
		}
	}
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func ev(req, flags uint32, payload []byte, inos ...uint64) fakeEvent {
	return fakeEvent{Ev: "msg", Req: req, Flags: flags, Payload: hex.EncodeToString(payload), Inos: inos}
}

func fmtEvents(evs []fakeEvent) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s flags=%#x payload=%s inos=%v\n", reqName(e.Req), e.Flags, e.Payload, e.Inos)
	}
	return b.String()
}

func TestReplayAfterKill(t *testing.T) {
	h := startHarness(t, nil, nil)
	h.initSession()
	// Stop ring 1: its base becomes the answer, and it is not kicked on replay.
	rep := h.call(reqGetVringBase, 0, statePayload(1, 0))
	if _, n, _ := rep.state(); n != 5 {
		t.Fatalf("GET_VRING_BASE = %d, want 5", n)
	}
	old := h.sup.signalWorker(syscall.SIGKILL)
	waitFor(t, "restart", func() bool { s := h.sup.Stats(); return s.Restarts == 1 && s.WorkerPID != old })
	h.call(reqGetFeatures, 0, nil) // after the replay, by construction

	st := h.sup.Stats()
	logs := h.workerLogs()
	start := startOf(logs[st.WorkerPID])
	if start == nil || !start.Resume || strings.Join(start.Names, ",") != "state" || start.Counter != 2 {
		t.Fatalf("new worker start: %+v (want resume, fds [state], counter 2)", start)
	}
	if st.StoredFDs != 1 {
		t.Fatalf("StoredFDs = %d", st.StoredFDs)
	}
	const a = flagVersion | flagNeedReply
	want := []fakeEvent{
		ev(reqGetFeatures, flagVersion, nil),
		ev(reqGetProtocolFeatures, flagVersion, nil),
		ev(reqSetProtocolFeatures, flagVersion, u64Payload(testProtocol)),
		ev(reqSetOwner, a, nil),
		ev(reqSetBackendReqFD, a, nil, ino(t, h.backend)),
		ev(reqSetFeatures, a, u64Payload(1<<32|featProtocolFeatures)),
		ev(reqSetMemTable, a, memTable(2), ino(t, h.mem[0]), ino(t, h.mem[1])),
	}
	for q := uint32(0); q < 2; q++ {
		base := uint32(0)
		if q == 1 {
			base = 5
		}
		want = append(want,
			ev(reqSetVringNum, a, statePayload(q, 256)),
			ev(reqSetVringBase, a, statePayload(q, base)),
			ev(reqSetVringAddr, a, vringAddr(q)),
			ev(reqSetVringCall, a, u64Payload(uint64(q)), ino(t, h.callfd[q])))
		if q == 0 {
			want = append(want, ev(reqSetVringKick, a, u64Payload(uint64(q)), ino(t, h.kick[q])))
		}
		want = append(want, ev(reqSetVringEnable, a, statePayload(q, 1)))
	}
	want = append(want, ev(reqGetFeatures, flagVersion, nil)) // the frontend's
	got := msgsOf(logs[st.WorkerPID])
	if fmtEvents(got) != fmtEvents(want) {
		t.Fatalf("replayed:\n%swant:\n%s", fmtEvents(got), fmtEvents(want))
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestInFlightMessage(t *testing.T) {
	for _, mode := range []string{"before", "partial", "after"} {
		t.Run(mode, func(t *testing.T) {
			h := startHarness(t, []string{"FAKE_CRASH_REQ=24", "FAKE_CRASH_MODE=" + mode}, nil)
			h.initSession()
			cfg := []byte("\x00\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00seq-0042")
			rep := h.call(reqGetConfig, 0, cfg)
			if !bytes.Equal(rep.Payload, cfg) {
				t.Fatalf("GET_CONFIG reply %q", rep.Payload)
			}
			waitFor(t, "restart", func() bool { return h.sup.Stats().Restarts == 1 })
			h.call(reqGetFeatures, 0, nil)
			newMsgs := msgsOf(h.workerLogs()[h.sup.Stats().WorkerPID])
			resent := 0
			for _, e := range newMsgs {
				if e.Req == reqGetConfig {
					resent++
				}
			}
			// A reply the dead worker wrote completely is used; otherwise the
			// message goes to the new worker, once.
			if wantResent := map[string]int{"before": 1, "partial": 1, "after": 0}[mode]; resent != wantResent {
				t.Fatalf("GET_CONFIG sent %d times to the new worker, want %d:\n%s", resent, wantResent, fmtEvents(newMsgs))
			}
			h.assertNoPendingReply()
			if err := h.stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
		})
	}
}

// TestHungWorker: a worker that does not answer within ReplyTimeout gets
// SIGQUIT first (a Go worker prints its goroutines and exits 2), and the
// message goes to its successor.
func TestHungWorker(t *testing.T) {
	h := startHarness(t, []string{"FAKE_CRASH_REQ=24", "FAKE_CRASH_MODE=hang"}, func(c *Config) {
		c.ReplyTimeout = 500 * time.Millisecond
	})
	h.initSession()
	cfg := []byte("\x00\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00seq-0043")
	if rep := h.call(reqGetConfig, 0, cfg); !bytes.Equal(rep.Payload, cfg) {
		t.Fatalf("GET_CONFIG reply %q", rep.Payload)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "did not answer in time") || !strings.Contains(logs, `how="exit status 2"`) {
		t.Fatalf("want the hung worker quit by SIGQUIT (exit status 2):\n%s", tail(logs, 20))
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// assertNoPendingReply checks that nothing more is waiting for the frontend.
func (h *harness) assertNoPendingReply() {
	h.t.Helper()
	time.Sleep(20 * time.Millisecond)
	var b [1]byte
	err := h.fe.rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_DONTWAIT|unix.MSG_PEEK)
		if err != unix.EAGAIN {
			h.t.Errorf("extra data for the frontend (err %v)", err)
		}
		return true
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

func TestRandomKills(t *testing.T) {
	const wantKills, wantRecoveries = 60, 30
	h := startHarness(t, []string{"FAKE_CRASH_PCT=2"}, nil)
	h.initSession()
	// The fake worker also crashes by itself (FAKE_CRASH_PCT), so one may die
	// during initSession: its successors replay a partial session. Workers
	// whose state counter is above this one started after the whole session
	// was recorded (a worker that dies before counting only lowers later
	// counters, so the test stays conservative).
	fullReplayAbove := uint64(1 + h.sup.Stats().Restarts)

	stop := make(chan struct{})
	var kills atomic.Int64
	var wg sync.WaitGroup
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(1))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(2+rng.Intn(25)) * time.Millisecond):
			}
			r := h.sup.Stats().Restarts
			if h.sup.signalWorker(syscall.SIGKILL) != 0 {
				kills.Add(1)
			}
			// Mostly let the successor take the session before the next
			// kill; sometimes kill it during its start-up or replay.
			for wait := rng.Intn(4) != 0; wait && h.sup.Stats().Restarts == r; {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	base1 := uint32(0)
	ops := 0
	for seq := 0; ; seq++ {
		if st := h.sup.Stats(); st.Crashes >= wantKills && st.Restarts >= wantRecoveries {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		cfg := make([]byte, 20)
		binary.LittleEndian.PutUint32(cfg[4:], 8)
		binary.LittleEndian.PutUint64(cfg[12:], uint64(seq))
		if rep := h.call(reqGetConfig, 0, cfg); !bytes.Equal(rep.Payload, cfg) {
			t.Fatalf("op %d: GET_CONFIG reply %x, want %x", seq, rep.Payload, cfg)
		}
		h.ack(reqSetVringEnable, statePayload(0, 1))
		h.send(reqSetVringCall, u64Payload(0), h.callfd[0])
		if seq%4 == 0 {
			// Stop and restart ring 1; the fake answers base+5, so the
			// answer shows which base the worker had: the session's.
			rep := h.call(reqGetVringBase, 0, statePayload(1, 0))
			if i, n, _ := rep.state(); i != 1 || n != base1+5 {
				t.Fatalf("op %d: GET_VRING_BASE = (%d, %d), want (1, %d)", seq, i, n, base1+5)
			}
			base1 = base1 + 5
			h.ack(reqSetVringBase, statePayload(1, base1))
			h.ack(reqSetVringKick, u64Payload(1), h.kick[1])
		}
		ops++
	}
	close(stop)
	wg.Wait()
	st := h.sup.Stats()
	if st.Crashes < wantKills || st.Restarts < wantRecoveries {
		t.Fatalf("only %d deaths and %d recoveries (%d external kills) in 20s", st.Crashes, st.Restarts, kills.Load())
	}
	if st.Crashes < st.Restarts {
		t.Fatalf("Crashes %d < Restarts %d", st.Crashes, st.Restarts)
	}
	h.call(reqGetFeatures, 0, nil)
	h.assertNoPendingReply()

	logs := h.workerLogs()
	var counters []uint64
	inFlight, resumed := 0, 0
	for pid, evs := range logs {
		for _, e := range evs {
			if e.Ev == "crash" && e.Mode != "after" {
				inFlight++
			}
			if e.Ev == "error" {
				t.Errorf("worker %d: %s", pid, e.Err)
			}
		}
		s := startOf(evs)
		if s == nil {
			continue
		}
		if !s.Resume {
			if s.Counter != 1 {
				t.Errorf("first worker counter %d", s.Counter)
			}
			continue
		}
		resumed++
		if strings.Join(s.Names, ",") != "state" || s.Counter < 2 {
			t.Errorf("worker %d started with fds %v counter %d", pid, s.Names, s.Counter)
		}
		counters = append(counters, s.Counter)
		if m := msgsOf(evs); len(m) > 0 && m[0].Req != reqGetFeatures {
			t.Errorf("worker %d: replay starts with %s", pid, reqName(m[0].Req))
		}
		if m := msgsOf(evs); s.Counter > fullReplayAbove && len(m) > 6 && (m[3].Req != reqSetOwner || m[6].Req != reqSetMemTable) {
			t.Errorf("worker %d: replay:\n%s", pid, fmtEvents(m[:7]))
		}
	}
	sort.Slice(counters, func(i, j int) bool { return counters[i] < counters[j] })
	for i := 1; i < len(counters); i++ {
		if counters[i] == counters[i-1] {
			t.Errorf("two workers saw state counter %d: the stored memfd was not shared", counters[i])
		}
	}
	if inFlight == 0 {
		t.Errorf("no worker died with a message in flight")
	}
	resends := strings.Count(h.logs.String(), "re-sending")
	t.Logf("%d ops, %d restarts, %d deaths, %d external kills, %d self-crashes with a message in flight, %d resends, %d resumed workers",
		ops, st.Restarts, st.Crashes, kills.Load(), inFlight, resends, resumed)
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestCrashBudget(t *testing.T) {
	h := startHarness(t, []string{"FAKE_DIE_AT_START=1"}, func(c *Config) {
		c.MaxRestarts = 3
		c.RestartWindow = time.Minute
	})
	var err error
	select {
	case err = <-h.runErr:
		h.runErr <- err
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor did not give up")
	}
	if !errors.Is(err, ErrBudgetExhaust) || !strings.Contains(err.Error(), "worker crashed 4 times in 1m0s; giving up") {
		t.Fatalf("Run = %v", err)
	}
	if !strings.Contains(h.logs.String(), "giving up") {
		t.Fatal("no log line about giving up")
	}
	h.fe.setReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.fe.ReadMsg(); err != io.EOF {
		t.Fatalf("frontend read after give-up: %v, want EOF", err)
	}
	if n := len(h.workerLogs()); n != 4 {
		t.Fatalf("%d workers started, want 4", n)
	}
}

// The wait before a restart doubles while workers die young and starts
// again from BackoffMin after one that lived BackoffMax: a crash loop slows
// down, a worker that served a while is replaced at once.
func TestBackoffResets(t *testing.T) {
	h := startHarness(t, nil, func(c *Config) {
		c.BackoffMin, c.BackoffMax = time.Millisecond, 2*time.Second
	})
	h.initSession()
	kill := func(n int64) {
		old := h.sup.signalWorker(syscall.SIGKILL)
		waitFor(t, "restart", func() bool { s := h.sup.Stats(); return s.Restarts == n && s.WorkerPID != old })
	}
	for n := int64(1); n <= 3; n++ {
		kill(n) // each worker dies well within BackoffMax of its start
	}
	time.Sleep(2100 * time.Millisecond)
	kill(4)
	var got []string
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, "worker died") {
			_, b, _ := strings.Cut(l, "backoff=")
			got = append(got, strings.Fields(b + " ")[0])
		}
	}
	if want := "1ms 2ms 4ms 1ms"; strings.Join(got, " ") != want {
		t.Fatalf("backoffs %q, want %q", got, want)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestFrontendCloseNoLeak(t *testing.T) {
	before := countFDs(t)
	var took time.Duration
	t.Run("session", func(t *testing.T) {
		h := startHarness(t, nil, nil)
		h.initSession()
		h.sup.signalWorker(syscall.SIGKILL)
		waitFor(t, "restart", func() bool { return h.sup.Stats().Restarts == 1 })
		h.call(reqGetInflightFD, 0, make([]byte, 24)) // the supervisor keeps the inflight fd
		pid := h.sup.Stats().WorkerPID
		start := time.Now()
		if err := h.stop(); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		took = time.Since(start)
		if err := unix.Kill(pid, 0); err != unix.ESRCH {
			t.Fatalf("worker %d still exists: %v", pid, err)
		}
		if st := h.sup.Stats(); st.WorkerPID != 0 || st.StoredFDs != 0 {
			t.Fatalf("after stop: %+v", st)
		}
	})
	if took > time.Second {
		t.Errorf("supervisor took %v to stop", took)
	}
	if after := countFDs(t); after != before {
		t.Fatalf("fd leak: %d fds before, %d after", before, after)
	}
}

func TestUpgrade(t *testing.T) {
	h := startHarness(t, nil, nil)
	h.initSession()
	old := h.sup.Stats().WorkerPID
	if err := h.sup.Upgrade(); err != nil {
		t.Fatal(err)
	}
	st := h.sup.Stats()
	if st.Upgrades != 1 || st.Restarts != 0 || st.WorkerPID == old || st.WorkerPID == 0 {
		t.Fatalf("after upgrade: %+v (old pid %d)", st, old)
	}
	logs := h.workerLogs()
	if evs := logs[old]; evs[len(evs)-1].Ev != "term" {
		t.Fatalf("old worker did not exit on SIGTERM: %+v", evs[len(evs)-1])
	}
	cfg := []byte("\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00abcd")
	if rep := h.call(reqGetConfig, 0, cfg); !bytes.Equal(rep.Payload, cfg) {
		t.Fatalf("GET_CONFIG after upgrade: %q", rep.Payload)
	}
	evs := h.workerLogs()[st.WorkerPID]
	if s := startOf(evs); s == nil || !s.Resume || s.Counter != 2 {
		t.Fatalf("new worker start %+v", s)
	}
	if m := msgsOf(evs); len(m) < 20 || m[len(m)-1].Req != reqGetConfig {
		t.Fatalf("new worker saw:\n%s", fmtEvents(m))
	}
	if !strings.Contains(h.logs.String(), "upgrade complete") || !strings.Contains(h.logs.String(), "stall=") {
		t.Fatal("upgrade stall not logged")
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := h.sup.Upgrade(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Upgrade after stop: %v", err)
	}
}

func TestReplayWithoutReplyAck(t *testing.T) {
	h := startHarness(t, nil, nil)
	h.initSessionWith(pfMQ | pfConfig)
	// Without REPLY_ACK nothing waits for the worker: let it take the whole
	// session before the kill, so that all of it is replayed (a kill in the
	// middle is also correct: the rest is relayed live after the replay,
	// in the frontend's order, but then the expected list differs).
	first := h.sup.Stats().WorkerPID
	waitFor(t, "the session reaches the worker", func() bool {
		n := 0
		for _, e := range msgsOf(h.workerLogs()[first]) {
			if e.Req == reqSetVringEnable {
				n++
			}
		}
		return n == 2
	})
	old := h.sup.signalWorker(syscall.SIGKILL)
	waitFor(t, "restart", func() bool { s := h.sup.Stats(); return s.Restarts == 1 && s.WorkerPID != old })
	h.call(reqGetFeatures, 0, nil)
	m := msgsOf(h.workerLogs()[h.sup.Stats().WorkerPID])
	var reqs []string
	for _, e := range m {
		if e.Flags != flagVersion {
			t.Errorf("%s has flags %#x without REPLY_ACK", reqName(e.Req), e.Flags)
		}
		reqs = append(reqs, reqName(e.Req))
	}
	got := strings.Join(reqs, " ")
	want := "GET_FEATURES GET_PROTOCOL_FEATURES SET_PROTOCOL_FEATURES SET_OWNER SET_BACKEND_REQ_FD SET_FEATURES SET_MEM_TABLE " +
		"SET_VRING_NUM SET_VRING_BASE SET_VRING_ADDR SET_VRING_CALL SET_VRING_KICK SET_VRING_ENABLE " +
		"SET_VRING_NUM SET_VRING_BASE SET_VRING_ADDR SET_VRING_CALL SET_VRING_KICK SET_VRING_ENABLE " +
		"GET_FEATURES GET_FEATURES"
	if got != want {
		t.Fatalf("replay:\n%s\nwant:\n%s", got, want)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestUpstreamSystemd(t *testing.T) {
	var ready atomic.Bool
	sysd := fdstore.NewServer(fdstore.Config{OnMessage: func(m fdstore.Message) {
		if m.Ready {
			ready.Store(true)
		}
	}})
	defer sysd.Close()
	path := filepath.Join(t.TempDir(), "notify")
	if err := sysd.Listen(path); err != nil {
		t.Fatal(err)
	}
	up, err := fdstore.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	// An fd systemd handed back from a previous run is adopted and given to
	// the first worker.
	restored, err := unix.MemfdCreate("restored", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	h := startHarness(t, nil, func(c *Config) {
		c.Upstream = up
		c.Restored = []fdstore.NamedFD{{Name: "old", FD: restored}}
	})
	h.initSession()
	if s := startOf(h.workerLogs()[h.sup.Stats().WorkerPID]); s == nil || s.Resume || strings.Join(s.Names, ",") != "old" {
		t.Fatalf("first worker start %+v", s)
	}
	waitFor(t, "state forwarded upstream", func() bool {
		sysd.Drain()
		names := sysd.Names()
		return len(names) == 1 && names[0] == fdstore.UpstreamPrefix+"state" && ready.Load()
	})
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	sysd.Drain()
	if n := sysd.Len(); n != 0 {
		t.Fatalf("systemd still holds %d fds after an orderly stop", n)
	}
}

func TestFrontendFramingError(t *testing.T) {
	h := startHarness(t, nil, nil)
	h.initSession()
	var hdr [hdrSize]byte
	binary.LittleEndian.PutUint32(hdr[0:], reqSetConfigForTest)
	binary.LittleEndian.PutUint32(hdr[4:], flagVersion)
	binary.LittleEndian.PutUint32(hdr[8:], maxPayload+1)
	if err := h.fe.writeRaw(hdr[:], nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-h.runErr:
		h.runErr <- err
		if err == nil || !strings.Contains(err.Error(), "payload") {
			t.Fatalf("Run = %v, want a framing error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("supervisor kept running after a framing error")
	}
}

const reqSetConfigForTest = 25

// Messages without a reply carry their fds to the worker even though the
// session keeps them too (regression: the session took them first and the
// worker got SET_VRING_CALL with no fd).
func TestRelayForwardsFDs(t *testing.T) {
	h := startHarness(t, nil, nil)
	h.initSessionWith(pfMQ | pfConfig) // no REPLY_ACK: every SET goes the no-reply path
	h.call(reqGetFeatures, 0, nil)
	n := 0
	for _, e := range msgsOf(h.workerLogs()[h.sup.Stats().WorkerPID]) {
		switch e.Req {
		case reqSetVringKick, reqSetVringCall, reqSetBackendReqFD:
			n++
			if len(e.Inos) != 1 {
				t.Errorf("%s reached the worker with %d fds, want 1", reqName(e.Req), len(e.Inos))
			}
		}
	}
	if n != 5 {
		t.Errorf("saw %d fd-carrying messages, want 5", n)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
