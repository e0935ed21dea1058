package frontend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/vring"
	"vfsd/vring/mem"
)

// fakeBackend is a minimal vhost-user backend over the device-side vring
// package: it records the messages it gets and serves queue 1 by echoing
// the readable bytes into the writable buffers.
type fakeBackend struct {
	t        *testing.T
	ln       int
	failReq  uint32 // answer this request's NEED_REPLY with failure
	hangupOn uint32 // close the connection when this many chains were popped (0: never)

	mu     sync.Mutex
	seq    []string
	table  *mem.Table
	num    map[uint32]int
	addr   map[uint32][3]uint64
	kick   map[uint32]int
	call   map[uint32]int
	base   map[uint32]uint16
	q      map[uint32]*vring.Queue
	stop   chan struct{}
	done   chan struct{}
	popped uint32
	// regs are the guest RAM mappings of every SET_MEM_TABLE: written by
	// serve, unmapped once it and the queue goroutines it waits for ended.
	regs []mem.Mapped
}

func listen(t *testing.T) (string, int) {
	path := filepath.Join(t.TempDir(), "s")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	return path, fd
}

func startFake(t *testing.T, failReq uint32) (*fakeBackend, string) {
	path, ln := listen(t)
	b := &fakeBackend{t: t, ln: ln, failReq: failReq, num: map[uint32]int{}, addr: map[uint32][3]uint64{},
		kick: map[uint32]int{}, call: map[uint32]int{}, base: map[uint32]uint16{}, q: map[uint32]*vring.Queue{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go b.serve()
	t.Cleanup(func() {
		close(b.stop)
		<-b.done
		unix.Close(ln)
		// Only now: a queue goroutine reads the rings until b.done.
		for _, r := range b.regs {
			r.Unmap()
		}
	})
	return b, path
}

func (b *fakeBackend) serve() {
	defer close(b.done)
	fd, _, err := unix.Accept(b.ln)
	if err != nil {
		return
	}
	c := &conn{fd: fd}
	defer c.close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		m, err := c.recv()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.seq = append(b.seq, ReqName(m.Request))
		b.mu.Unlock()
		var reply []byte
		switch m.Request {
		case GetFeatures:
			reply = U64Payload(FeatVersion1 | FeatProtocolFeatures | FeatEventIdx | FeatIndirectDesc | FeatNotifyOnEmpty)
		case GetProtocolFeatures:
			reply = U64Payload(ProtoMQ | ProtoReplyAck | ProtoConfig)
		case GetQueueNum:
			reply = U64Payload(3)
		case SetMemTable:
			b.setMem(m)
		case SetVringNum:
			i, n, _ := m.VringState()
			b.num[i] = int(n)
		case SetVringBase:
			i, n, _ := m.VringState()
			b.base[i] = uint16(n)
		case SetVringAddr:
			i := binary.LittleEndian.Uint32(m.Payload)
			b.addr[i] = [3]uint64{binary.LittleEndian.Uint64(m.Payload[8:]), binary.LittleEndian.Uint64(m.Payload[24:]), binary.LittleEndian.Uint64(m.Payload[16:])}
		case SetVringKick, SetVringCall, SetVringErr:
			v, _ := m.U64()
			i := uint32(v & 0xff)
			if len(m.FDs) == 1 {
				switch m.Request {
				case SetVringKick:
					b.kick[i] = m.FDs[0]
				case SetVringCall:
					if old, ok := b.call[i]; ok {
						unix.Close(old)
					}
					b.call[i] = m.FDs[0]
				default:
					unix.Close(m.FDs[0])
				}
			}
		case SetVringEnable:
			i, on, _ := m.VringState()
			if on == 1 && i == 1 {
				if err := b.startQueue(i); err != nil {
					b.t.Errorf("fake backend: %v", err)
					return
				}
				wg.Add(1)
				go func() { defer wg.Done(); b.run(i, c) }()
			}
		case GetVringBase:
			i, _, _ := m.VringState()
			var last uint16
			b.mu.Lock()
			if q := b.q[i]; q != nil {
				last = q.LastAvail()
			}
			b.mu.Unlock()
			reply = VringStatePayload(i, uint32(last))
		}
		if reply != nil {
			c.send(m.Request, FlagVersion|FlagReply, reply, nil, -1)
		} else if m.Flags&FlagNeedReply != 0 {
			v := uint64(0)
			if m.Request == b.failReq {
				v = 1
			}
			c.send(m.Request, FlagVersion|FlagReply, U64Payload(v), nil, -1)
		}
	}
}

func (b *fakeBackend) setMem(m Msg) {
	n := binary.LittleEndian.Uint32(m.Payload)
	var regs []mem.Mapped
	for i := 0; i < int(n); i++ {
		o := 8 + 32*i
		r := mem.Region{GuestAddr: binary.LittleEndian.Uint64(m.Payload[o:]), Size: binary.LittleEndian.Uint64(m.Payload[o+8:]),
			UserAddr: binary.LittleEndian.Uint64(m.Payload[o+16:]), MmapOffset: binary.LittleEndian.Uint64(m.Payload[o+24:])}
		mp, err := mem.Map(m.FDs[i], r)
		if err != nil {
			b.t.Errorf("map region: %v", err)
			return
		}
		regs = append(regs, mp)
		b.regs = append(b.regs, mp)
	}
	closeAll(m.FDs)
	t, err := mem.NewTable(regs)
	if err != nil {
		b.t.Errorf("table: %v", err)
		return
	}
	b.table = t
}

func (b *fakeBackend) startQueue(i uint32) error {
	var gpa [3]uint64
	for k, uva := range b.addr[i] {
		g, err := b.table.UserToGuest(uva)
		if err != nil {
			return err
		}
		gpa[k] = g
	}
	q, err := vring.New(b.table, vring.Config{Size: b.num[i], Desc: gpa[0], Avail: gpa[1], Used: gpa[2], EventIdx: true}, b.base[i], b.base[i])
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.q[i] = q
	b.mu.Unlock()
	return nil
}

// run serves queue i: wait for a kick, echo every chain, notify.
func (b *fakeBackend) run(i uint32, c *conn) {
	b.mu.Lock()
	q, kick, call := b.q[i], b.kick[i], b.call[i]
	b.mu.Unlock()
	var ch vring.Chain
	buf := make([]byte, 8)
	for {
		pfd := []unix.PollFd{{Fd: int32(kick), Events: unix.POLLIN}}
		unix.Poll(pfd, 10)
		select {
		case <-b.stop:
			return
		default:
		}
		unix.Read(kick, buf)
		for {
			b.mu.Lock()
			ok, err := q.Pop(&ch)
			if ok && err == nil {
				b.popped++
				if b.hangupOn != 0 && b.popped == b.hangupOn {
					b.mu.Unlock()
					unix.Shutdown(c.fd, unix.SHUT_RDWR)
					return
				}
			}
			b.mu.Unlock()
			if err != nil {
				b.t.Errorf("pop: %v", err)
				return
			}
			if !ok {
				break
			}
			var in []byte
			for _, s := range ch.Readable {
				in = append(in, s...)
			}
			n := 0
			for _, s := range ch.Writable {
				n += copy(s, in[n:])
			}
			q.Push(ch.Head, uint32(n))
			if q.Publish() {
				unix.Write(call, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			}
		}
	}
}

func TestDialSequenceAndEcho(t *testing.T) {
	b, path := startFake(t, 0)
	f, err := Dial(path, Options{Mem: MemOptions{Size: 4 << 20, Regions: 2, Adjacent: true}, QueueSize: 16, RequestQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.ProtocolFeatures != ProtoMQ|ProtoReplyAck || f.QueueNum != 3 || f.Features&FeatEventIdx == 0 {
		t.Fatalf("negotiated features %#x protocol %#x queues %d", f.Features, f.ProtocolFeatures, f.QueueNum)
	}
	b.mu.Lock()
	seq := fmt.Sprint(b.seq)
	b.mu.Unlock()
	want := "[GET_FEATURES GET_PROTOCOL_FEATURES SET_PROTOCOL_FEATURES GET_QUEUE_NUM SET_OWNER GET_FEATURES " +
		"SET_VRING_ERR SET_VRING_CALL SET_VRING_ERR SET_VRING_CALL SET_VRING_ERR SET_VRING_CALL SET_FEATURES SET_MEM_TABLE " +
		"SET_VRING_NUM SET_VRING_BASE SET_VRING_ADDR SET_VRING_KICK SET_VRING_CALL " +
		"SET_VRING_NUM SET_VRING_BASE SET_VRING_ADDR SET_VRING_KICK SET_VRING_CALL " +
		"SET_VRING_NUM SET_VRING_BASE SET_VRING_ADDR SET_VRING_KICK SET_VRING_CALL " +
		"SET_VRING_ENABLE SET_VRING_ENABLE SET_VRING_ENABLE]"
	if seq != want {
		t.Fatalf("message sequence\n got %s\nwant %s", seq, want)
	}
	// 40 chains at once on a 16-entry ring: Submit must wait for space.
	q := f.Queue(1)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echo(f, q, i)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if s := q.Stats(); s.Completed != 40 || s.Submitted != 40 {
		t.Fatalf("stats %+v", s)
	}
	bases, err := f.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if bases[1] != 40 {
		t.Fatalf("GET_VRING_BASE of queue 1: %d, want 40", bases[1])
	}
}

func echo(f *Frontend, q *Queue, i int) error {
	n := uint64(100 + i*50)
	in, err := f.Mem.Alloc(2*n, false)
	if err != nil {
		return err
	}
	defer f.Mem.Free(in, 2*n)
	p := make([]byte, n)
	for k := range p {
		p[k] = byte(i + k)
	}
	f.Mem.WriteAt(p, in)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Two readable and three writable descriptors.
	w, err := q.Do(ctx, []Buf{{in, 10}, {in + 10, n - 10}}, []Buf{{in + n, 1}, {in + n + 1, n / 2}, {in + n + 1 + n/2, n - 1 - n/2}})
	if err != nil {
		return err
	}
	if uint64(w) != n {
		return fmt.Errorf("chain %d: written %d, want %d", i, w, n)
	}
	got := make([]byte, n)
	f.Mem.ReadAt(got, in+n)
	if string(got) != string(p) {
		return fmt.Errorf("chain %d: echo differs", i)
	}
	return nil
}

func TestReplyAckFailure(t *testing.T) {
	_, path := startFake(t, SetMemTable)
	_, err := Dial(path, Options{Mem: MemOptions{Size: 1 << 20}})
	if err == nil {
		t.Fatal("Dial succeeded although SET_MEM_TABLE was refused")
	}
}

func TestHangupFailsOutstanding(t *testing.T) {
	b, path := startFake(t, 0)
	b.hangupOn = 1
	f, err := Dial(path, Options{Mem: MemOptions{Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gpa, _ := f.Mem.Alloc(64, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = f.Queue(1).Do(ctx, []Buf{{gpa, 8}}, []Buf{{gpa + 8, 8}})
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("outstanding chain after hangup: %v", err)
	}
	select {
	case <-f.Dead():
	case <-time.After(5 * time.Second):
		t.Fatal("Dead not closed after hangup")
	}
	if err := f.Queue(1).Submit([]Buf{{gpa, 8}}, nil, NewCompletion()); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Submit after hangup: %v", err)
	}
}

// TestWaitLeadership drives the leader/follower reaping through its paths: a
// burst of concurrent Waits (the reaper takes the lead), sequential Waits
// (each leads itself), a chain nobody Waits for (the reaper's timer completes
// it), and a Wait whose ctx is already done. Nobody may be left leading or
// following.
func TestWaitLeadership(t *testing.T) {
	_, path := startFake(t, 0)
	f, err := Dial(path, Options{Mem: MemOptions{Size: 4 << 20}, QueueSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	q := f.Queue(1)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 20 {
				if err := echo(f, q, (i+k)%32); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := echo(f, q, i%8); err != nil {
			t.Fatal(err)
		}
	}
	gpa, _ := f.Mem.Alloc(64, false)
	unwaited := NewCompletion()
	if err := q.Submit([]Buf{{gpa, 8}}, []Buf{{gpa + 8, 8}}, unwaited); err != nil {
		t.Fatal(err)
	}
	select {
	case <-unwaited.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a chain nobody Waits for was never completed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := NewCompletion()
	if err := q.Submit([]Buf{{gpa, 8}}, []Buf{{gpa + 8, 8}}, c); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx); err != nil {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait with a cancelled ctx: %v", err)
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("chain abandoned by its Wait was never completed")
		}
	}
	if err := echo(f, q, 3); err != nil {
		t.Fatal(err)
	}
	// The reaper, if it led the last Wait, gives up the lead right after.
	var leading bool
	var followers int
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
		q.mu.Lock()
		leading, followers = q.leading, len(q.followers)
		q.mu.Unlock()
		if !leading && followers == 0 || time.Now().After(deadline) {
			break
		}
	}
	if leading || followers != 0 {
		t.Fatalf("after all Waits returned: leading %v, %d followers", leading, followers)
	}
}

// An open frontend keeps GOMAXPROCS at least its request queues + 1 and
// gives it back on Close.
func TestReserveProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	_, path := startFake(t, 0)
	f, err := Dial(path, Options{Mem: MemOptions{Size: 1 << 20}, RequestQueues: 2, QueueSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got < 3 || got < before {
		t.Fatalf("GOMAXPROCS %d with 2 request queues open (%d before)", got, before)
	}
	f.Close()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d after Close, %d before", got, before)
	}
	// A change made by someone else while a frontend is open stays.
	_, path = startFake(t, 0) // the fake backend serves one connection
	f, err = Dial(path, Options{Mem: MemOptions{Size: 1 << 20}, QueueSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	other := max(before, 2) + 3
	runtime.GOMAXPROCS(other)
	f.Close()
	if got := runtime.GOMAXPROCS(0); got != other {
		t.Fatalf("GOMAXPROCS %d after Close, set to %d while open", got, other)
	}
	runtime.GOMAXPROCS(before)
}

// A Wait that polls for its reply before sleeping (PollCompletions) gets it.
func TestPollCompletions(t *testing.T) {
	_, path := startFake(t, 0)
	f, err := Dial(path, Options{Mem: MemOptions{Size: 4 << 20}, QueueSize: 16, PollCompletions: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 50 {
		if err := echo(f, f.Queue(1), i%8); err != nil {
			t.Fatal(err)
		}
	}
}
