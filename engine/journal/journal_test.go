package journal

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func newJ(t testing.TB, q, n int) *Journal {
	t.Helper()
	j, err := Create(q, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func TestLifecycle(t *testing.T) {
	j := newJ(t, 2, 8)
	s, ok := j.Slot(1, 7)
	if !ok {
		t.Fatal("no slot (1, 7)")
	}
	for _, bad := range [][2]int{{2, 0}, {-1, 0}, {0, 8}} {
		if _, ok := j.Slot(bad[0], uint16(bad[1])); ok {
			t.Errorf("slot %v exists", bad)
		}
	}
	var e Entry
	if p := s.Read(&e); p != Free {
		t.Fatalf("fresh entry %v", p)
	}
	pre := [PreWords]uint64{1, 2, 3, 4, 5, 6, 7, 8}
	g := s.Begin(9, 77, &pre)
	if p := s.Read(&e); p != Started || e.Opcode != 9 || e.Unique != 77 || e.Pre != pre || e.Gen != g || e.RefValid || e.ProgressValid {
		t.Fatalf("after Begin: %v %+v", p, e)
	}
	ref := Ref{ID: 1 << 33, Pre: 4, Key: [3]uint64{1, 2, 3}, Index: 2}
	s.SetRef(g, &ref)
	s.SetProgress(g, 2)
	if s.Read(&e); !e.RefValid || e.Ref != ref || !e.ProgressValid || e.Progress != 2 {
		t.Fatalf("after SetRef: %+v", e)
	}
	if !s.Finish(g, 0, []byte("hello "), []byte("world")) {
		t.Fatal("Finish refused")
	}
	if p := s.Read(&e); p != Done || e.Errno != 0 || string(e.Reply) != "hello world" {
		t.Fatalf("after Finish: %v %+v", p, e)
	}
	if s.Finish(g, 0, make([]byte, ReplyMax), []byte{1}) {
		t.Error("oversized reply accepted")
	}
	// A new request at the head invalidates the old ref/progress/done.
	g2 := s.Begin(10, 78, &[PreWords]uint64{})
	if g2 == g {
		t.Fatal("generation not bumped")
	}
	if p := s.Read(&e); p != Started || e.RefValid || e.ProgressValid || e.Unique != 78 {
		t.Fatalf("after second Begin: %v %+v", p, e)
	}
	s.Finish(g2, int32(unix.ENOENT), nil, nil)
	if p := s.Read(&e); p != Done || e.Errno != int32(unix.ENOENT) || len(e.Reply) != 0 {
		t.Fatalf("error done: %v %+v", p, e)
	}
	// Other slots untouched.
	o, _ := j.Slot(0, 7)
	if o.Read(&e) != Free {
		t.Error("neighbour slot changed")
	}
}

// TestTorn: a record whose sequence word is odd (the writer died inside it)
// degrades the entry exactly as the package doc says.
func TestTorn(t *testing.T) {
	j := newJ(t, 1, 4)
	s, _ := j.Slot(0, 1)
	g := s.Begin(1, 5, &[PreWords]uint64{})
	s.SetRef(g, &Ref{ID: 9})
	s.Finish(g, 0, []byte("x"), nil)
	var e Entry
	tear := func(off int) func() {
		old := loadU32(s.b[off:])
		storeU32(s.b[off:], old|1)
		return func() { storeU32(s.b[off:], old) }
	}
	undo := tear(offDone)
	if p := s.Read(&e); p != Started || !e.RefValid {
		t.Errorf("torn done: %v ref %v", p, e.RefValid)
	}
	undo()
	undo = tear(offRef)
	if p := s.Read(&e); p != Done || e.RefValid {
		t.Errorf("torn ref: %v ref %v", p, e.RefValid)
	}
	undo()
	tear(offBegin)
	if p := s.Read(&e); p != Free {
		t.Errorf("torn begin: %v", p)
	}
	// A Begin over a torn begin record still produces a whole entry.
	g2 := s.Begin(2, 6, &[PreWords]uint64{})
	if p := s.Read(&e); p != Started || e.Gen != g2 || e.RefValid || e.Unique != 6 {
		t.Errorf("begin over torn: %v %+v", p, e)
	}
}

func TestSession(t *testing.T) {
	j := newJ(t, 1, 1)
	if _, ok := j.Session(); ok {
		t.Fatal("session in a new journal")
	}
	for i := range 5 {
		v := bytes.Repeat([]byte{byte(i + 1)}, 10+i)
		if err := j.SetSession(v); err != nil {
			t.Fatal(err)
		}
		got, ok := j.Session()
		if !ok || !bytes.Equal(got, v) {
			t.Fatalf("round %d: %v %v", i, got, ok)
		}
	}
	// Tear the copy a next write would use: the newest whole one survives.
	prev, _ := j.Session()
	c0, c1 := j.mem[offSession0:], j.mem[offSession0+sessionSize:]
	cur, _ := newest(loadU32(c0), loadU32(c1))
	other := c0
	if cur == 0 {
		other = c1
	}
	storeU32(other, loadU32(other)+3) // odd: a write in progress
	if got, ok := j.Session(); !ok || !bytes.Equal(got, prev) {
		t.Fatalf("torn inactive copy lost the session: %v", got)
	}
	if err := j.SetSession(make([]byte, SessionMax+1)); err == nil {
		t.Error("oversized session accepted")
	}
	j.SetSession([]byte("after"))
	if got, _ := j.Session(); string(got) != "after" {
		t.Errorf("after torn: %q", got)
	}
}

func TestMapValidates(t *testing.T) {
	j := newJ(t, 3, 16)
	s, _ := j.Slot(2, 15)
	g := s.Begin(4, 44, &[PreWords]uint64{})
	s.Finish(g, 0, []byte("r"), nil)
	j.SetSession([]byte("sess"))

	m, err := Map(j.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Queues() != 3 || m.QueueSize() != 16 {
		t.Fatalf("geometry %d x %d", m.Queues(), m.QueueSize())
	}
	ms, _ := m.Slot(2, 15)
	var e Entry
	if ms.Read(&e) != Done || e.Unique != 44 || string(e.Reply) != "r" {
		t.Fatalf("mapped entry %+v", e)
	}
	if v, _ := m.Session(); string(v) != "sess" {
		t.Fatalf("mapped session %q", v)
	}

	bad := func(name string, want error, edit func(b []byte) []byte) {
		t.Helper()
		b := make([]byte, Size(1, 2))
		copy(b, j.mem[:HeaderSize])
		// geometry of a 1x2 journal
		b[16], b[17], b[18], b[19] = 1, 0, 0, 0
		b[20], b[21], b[22], b[23] = 2, 0, 0, 0
		b = edit(b)
		fd := memfd(t, b)
		defer unix.Close(fd)
		m, err := Map(fd)
		if err == nil {
			m.Close()
			t.Errorf("%s: mapped", name)
			return
		}
		if want != nil && !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	bad("empty", ErrCorrupt, func(b []byte) []byte { return nil })
	bad("magic", ErrCorrupt, func(b []byte) []byte { b[0] ^= 1; return b })
	bad("version", ErrVersion, func(b []byte) []byte { b[8] = 2; return b })
	bad("entry size", ErrCorrupt, func(b []byte) []byte { b[12] = 1; return b })
	bad("zero queues", ErrCorrupt, func(b []byte) []byte { b[16] = 0; return b })
	bad("huge queues", ErrCorrupt, func(b []byte) []byte { b[19] = 1; return b })
	bad("size mismatch", ErrCorrupt, func(b []byte) []byte { return b[:len(b)-EntrySize] })
	bad("size mismatch 2", ErrCorrupt, func(b []byte) []byte { return append(b, make([]byte, EntrySize)...) })
}

func memfd(t testing.TB, b []byte) int {
	t.Helper()
	fd, err := unix.MemfdCreate("jtest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 {
		if _, err := unix.Pwrite(fd, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func TestCreateRejectsGeometry(t *testing.T) {
	for _, g := range [][2]int{{0, 1}, {1, 0}, {MaxQueues + 1, 1}, {1, MaxQueueSize + 1}} {
		if j, err := Create(g[0], g[1]); err == nil {
			j.Close()
			t.Errorf("Create%v succeeded", g)
		}
	}
}

// TestNoAllocs: the per-request writes allocate nothing.
func TestNoAllocs(t *testing.T) {
	j := newJ(t, 2, 64)
	s, _ := j.Slot(1, 3)
	var pre [PreWords]uint64
	reply := make([]byte, 144)
	n := testing.AllocsPerRun(100, func() {
		g := s.Begin(1, 2, &pre)
		s.SetRef(g, &Ref{ID: 1})
		s.Finish(g, 0, reply[:128], reply[128:])
	})
	if n != 0 {
		t.Errorf("%.1f allocs per request", n)
	}
}

func BenchmarkRequest(b *testing.B) {
	j := newJ(b, 2, 64)
	s, _ := j.Slot(1, 3)
	var pre [PreWords]uint64
	reply := make([]byte, 128)
	b.ReportAllocs()
	for b.Loop() {
		g := s.Begin(1, 2, &pre)
		s.SetRef(g, &Ref{ID: 1})
		s.Finish(g, 0, reply, nil)
	}
}
