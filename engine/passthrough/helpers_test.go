package passthrough

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/maptable"
)

func TestMain(m *testing.M) {
	recoverPanics = false // a panic must fail the test, not become EIO
	countFds()            // initialises the runtime poller (its fds are not ours)
	before := countFds()
	code := m.Run()
	if code == 0 {
		if after := countFds(); after > before {
			os.Stderr.WriteString("fd leak: open fds grew during the tests\n")
			ents, _ := os.ReadDir("/proc/self/fd")
			for _, e := range ents {
				l, _ := os.Readlink("/proc/self/fd/" + e.Name())
				os.Stderr.WriteString(e.Name() + " -> " + l + "\n")
			}
			code = 1
		}
	}
	os.Exit(code)
}

// eagerEnv, when set, makes every FS of the tests open each inode at once
// (Options.EagerInodes): TestEagerInodes runs the package's tests so.
const eagerEnv = "VFSD_TEST_EAGER_INODES"

// TestEagerInodes runs this package's tests again in a child process with
// inodes opened at once, the mode of a host without open_by_handle_at
// (the parent's FSs defer opens when the host allows it).
func TestEagerInodes(t *testing.T) {
	if os.Getenv(eagerEnv) != "" {
		t.Skip("already the eager run")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	cmd := exec.Command(os.Args[0], "-test.skip=^(TestEagerInodes|Fuzz.*)$", "-test.count=1")
	cmd.Env = append(os.Environ(), eagerEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tests with eager inodes: %v\n%s", err, out)
	}
}

// countFds counts open fds of the kinds the FS creates (files and dirs
// under the temp dir, memfds, /proc), ignoring the runtime's own.
func countFds() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if strings.HasPrefix(l, os.TempDir()) || strings.HasPrefix(l, "/memfd:") || strings.HasPrefix(l, "/proc") {
			n++
		}
	}
	return n
}

// tfs drives an FS with requests built from plain Go memory.
type tfs struct {
	t      *testing.T
	fs     *FS
	dir    string
	unique uint64
	uid    uint32
	gid    uint32
	extlen uint16 // in header total_extlen (the last args are the extensions)
	out    []byte
	req    fuse.Request
	rep    fuse.Reply
	// queue, head and resumed go into every request (journal slot).
	queue   int
	head    uint16
	resumed bool
	// noFlush: the reply is not "published" (no FS.Flush after the
	// request), as when the worker dies before the batch's publish.
	noFlush bool
	// bench: the request is built in scratch space, the reply returned
	// aliases out (valid until the next call), and only FS.Flush runs
	// after it (lazy stores wait as in the dataplane): the harness
	// allocates nothing, so a benchmark's allocs/op are the FS's.
	bench  bool
	inBuf  []byte
	inSeg  [3][]byte
	outSeg [2][]byte
}

func newTFS(t testing.TB, o Options) *tfs {
	t.Helper()
	return openTFS(t, o, true)
}

// openTFS is newTFS; without init it sends no INIT (a resumed FS).
func openTFS(t testing.TB, o Options, init bool) *tfs {
	t.Helper()
	runtime.LockOSThread() // Handle switches fsuid on the calling thread
	if o.Root == "" {
		o.Root = t.TempDir()
		os.Chmod(o.Root, 0o777)
	}
	if o.MaxInodes == 0 {
		o.MaxInodes = 4096
	}
	if o.MaxHandles == 0 {
		o.MaxHandles = 1024
	}
	o.EagerInodes = o.EagerInodes || os.Getenv(eagerEnv) != ""
	fs, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	c := &tfs{fs: fs, dir: o.Root, out: make([]byte, 256<<10)}
	if tt, ok := t.(*testing.T); ok {
		c.t = tt
	}
	t.Cleanup(func() {
		if err := fs.Close(); err != nil {
			t.Error(err)
		}
		runtime.UnlockOSThread()
	})
	if !init {
		return c
	}
	in := fuse.InitIn{Major: 7, Minor: 38, MaxReadahead: 1 << 17,
		Flags: uint32(uint64(offered|fuse.FlagWritebackCache) & 0xffffffff), Flags2: uint32(uint64(offered) >> 32)}
	if e, _ := c.call(fuse.OpInit, 0, fuse.Bytes(&in)); e != 0 {
		t.Fatalf("INIT: %v", e)
	}
	return c
}

func (c *tfs) path(p string) string { return filepath.Join(c.dir, p) }

// call sends one request (args concatenated after the in header, split into
// several guest segments) and returns the errno and reply payload.
func (c *tfs) call(op uint32, nodeid uint64, args ...[]byte) (unix.Errno, []byte) {
	return c.callOut(len(c.out), op, nodeid, args...)
}

func (c *tfs) callOut(outLen int, op uint32, nodeid uint64, args ...[]byte) (unix.Errno, []byte) {
	c.unique++
	buf := c.inBuf[:0]
	if !c.bench {
		buf = nil
	}
	buf = append(buf, make([]byte, fuse.InHeaderSize)...)
	for _, a := range args {
		buf = append(buf, a...)
	}
	c.inBuf = buf
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(buf)))
	binary.LittleEndian.PutUint32(buf[4:], op)
	binary.LittleEndian.PutUint64(buf[8:], c.unique)
	binary.LittleEndian.PutUint64(buf[16:], nodeid)
	binary.LittleEndian.PutUint32(buf[24:], c.uid)
	binary.LittleEndian.PutUint32(buf[28:], c.gid)
	binary.LittleEndian.PutUint32(buf[32:], 42)
	binary.LittleEndian.PutUint16(buf[36:], c.extlen)
	// Three segments with odd boundaries, as a guest chain might have.
	cut1, cut2 := min(len(buf), 7), min(len(buf), fuse.InHeaderSize+13)
	c.inSeg = [3][]byte{buf[:cut1], buf[cut1:cut2], buf[cut2:]}
	if err := c.req.Decode(c.inSeg[:]); err != nil {
		panic(err)
	}
	c.req.Queue, c.req.Head, c.req.Resumed = c.queue, c.head, c.resumed
	out := c.out[:outLen]
	clear(out)
	c.outSeg = [2][]byte{out[:min(outLen, 5)], out[min(outLen, 5):]}
	c.rep.Reset(c.outSeg[:], c.unique)
	c.fs.Handle(&c.req, &c.rep)
	if c.bench {
		c.fs.Flush()
	} else if !c.noFlush {
		c.fs.Flush()    // as the dataplane does before publishing the reply
		c.fs.flushAll() // and sleeps past lazyMax (tests count the store's fds)
	}
	if !c.rep.Done() {
		panic("reply not done")
	}
	w := int(c.rep.Written())
	if w == 0 {
		return 0, nil // NoReply
	}
	if w < fuse.OutHeaderSize {
		panic("short reply")
	}
	var oh fuse.OutHeader
	fuse.Parse(out, &oh)
	if int(oh.Len) != w || oh.Unique != c.unique {
		panic("reply header mismatch")
	}
	if oh.Error != 0 && w != fuse.OutHeaderSize {
		panic("error reply with payload")
	}
	if c.bench {
		return unix.Errno(-oh.Error), out[fuse.OutHeaderSize:w]
	}
	return unix.Errno(-oh.Error), append([]byte(nil), out[fuse.OutHeaderSize:w]...)
}

func name(s string) []byte { return append([]byte(s), 0) }

func b[T fuse.Wire](v T) []byte { return append([]byte(nil), fuse.Bytes(&v)...) }

func parse[T fuse.Wire](t testing.TB, p []byte) T {
	t.Helper()
	var v T
	if _, ok := fuse.Parse(p, &v); !ok {
		t.Fatalf("reply payload %d bytes, too short for %T", len(p), v)
	}
	return v
}

func (c *tfs) lookup(parent uint64, n string) (fuse.EntryOut, unix.Errno) {
	e, p := c.call(fuse.OpLookup, parent, name(n))
	if e != 0 {
		return fuse.EntryOut{}, e
	}
	if len(p) != fuse.EntryOutSize {
		c.t.Fatalf("LOOKUP payload %d", len(p))
	}
	return parse[fuse.EntryOut](c.t, p), 0
}

func (c *tfs) mustLookup(parent uint64, n string) fuse.EntryOut {
	c.t.Helper()
	e, eno := c.lookup(parent, n)
	if eno != 0 {
		c.t.Fatalf("LOOKUP %q: %v", n, eno)
	}
	return e
}

func (c *tfs) open(nodeid uint64, flags uint32) uint64 {
	c.t.Helper()
	e, p := c.call(fuse.OpOpen, nodeid, b(fuse.OpenIn{Flags: flags}))
	if e != 0 {
		c.t.Fatalf("OPEN: %v", e)
	}
	return parse[fuse.OpenOut](c.t, p).Fh
}

func (c *tfs) opendir(nodeid uint64) uint64 {
	c.t.Helper()
	e, p := c.call(fuse.OpOpendir, nodeid, b(fuse.OpenIn{}))
	if e != 0 {
		c.t.Fatalf("OPENDIR: %v", e)
	}
	return parse[fuse.OpenOut](c.t, p).Fh
}

func (c *tfs) write(nodeid, fh, off uint64, data []byte, flags uint32) (uint32, unix.Errno) {
	e, p := c.call(fuse.OpWrite, nodeid, b(fuse.WriteIn{Fh: fh, Offset: off, Size: uint32(len(data)), WriteFlags: flags}), data)
	if e != 0 {
		return 0, e
	}
	return parse[fuse.WriteOut](c.t, p).Size, 0
}

func (c *tfs) read(nodeid, fh, off uint64, size uint32) ([]byte, unix.Errno) {
	e, p := c.call(fuse.OpRead, nodeid, b(fuse.ReadIn{Fh: fh, Offset: off, Size: size}))
	return p, e
}

// nlookup reads the persisted reference count of nodeid from the inode map
// (the sum of the per-queue counters).
func (c *tfs) nlookup(nodeid uint64) (uint64, bool) {
	return recNlookup(c.t, c.fs, nodeid)
}

func recNlookup(t testing.TB, fs *FS, nodeid uint64) (uint64, bool) {
	rec := make([]byte, fs.irec)
	if err := fs.inodes.Get(maptable.ID(nodeid), rec); err != nil {
		return 0, false
	}
	var n int64
	for i := range fs.nq {
		n += int64(binary.LittleEndian.Uint64(rec[recCnt+8*i:]))
	}
	return uint64(n), true
}

func hostStat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func wantErr(t testing.TB, what string, got, want unix.Errno) {
	t.Helper()
	if got != want {
		t.Errorf("%s: errno %v (%d), want %v (%d)", what, got, int(got), want, int(want))
	}
}
