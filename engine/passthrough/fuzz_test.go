package passthrough

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// fuzzFS is one FS per fuzz worker process over a small populated tree.
type fuzzFS struct {
	c       *tfs
	nodeids []uint64 // known nodeids, addressed by small numbers in inputs
	fhs     []uint64
	outside string // a symlink in the share points here: must never change
	before  [2]unix.Stat_t
}

func (z *fuzzFS) outsideStat() (st [2]unix.Stat_t) {
	unix.Lstat(z.outside, &st[0])
	unix.Lstat(z.outside+"/secret", &st[1])
	return st
}

func newFuzzFS(f *testing.F) *fuzzFS {
	c := newTFS(f, Options{Xattr: true, MaxInodes: 512, MaxHandles: 128})
	c.t = &testing.T{}
	outside := f.TempDir()
	os.WriteFile(outside+"/secret", []byte("secret"), 0o600)
	os.WriteFile(c.path("file"), []byte("some file data"), 0o644)
	os.Mkdir(c.path("dir"), 0o755)
	os.WriteFile(c.path("dir/inner"), []byte("x"), 0o600)
	os.Symlink(outside, c.path("escape"))
	unix.Mkfifo(c.path("fifo"), 0o644)
	z := &fuzzFS{c: c, nodeids: []uint64{fuse.RootID}, outside: outside}
	z.before = z.outsideStat()
	for _, n := range []string{"file", "dir", "escape", "fifo"} {
		e, _ := c.lookup(fuse.RootID, n)
		z.nodeids = append(z.nodeids, e.NodeID)
	}
	_, p := c.call(fuse.OpOpen, z.nodeids[1], b(fuse.OpenIn{Flags: unix.O_RDWR}))
	z.fhs = append(z.fhs, parse[fuse.OpenOut](f, p).Fh)
	_, p = c.call(fuse.OpOpendir, fuse.RootID, b(fuse.OpenIn{}))
	z.fhs = append(z.fhs, parse[fuse.OpenOut](f, p).Fh)
	return z
}

// prepare adjusts a fuzz input so that it reaches deep into handlers:
// nodeids and fhs below 16 name known objects; SETLKW becomes SETLK (a
// waiting lock would hang the single-threaded fuzzer; TestLocks covers it);
// FALLOCATE lengths are capped so the fuzzer cannot fill the disk.
func (z *fuzzFS) prepare(data []byte) []byte {
	if len(data) < fuse.InHeaderSize {
		return data
	}
	le := binary.LittleEndian
	if id := le.Uint64(data[16:]); id < 16 {
		le.PutUint64(data[16:], z.nodeids[id%uint64(len(z.nodeids))])
	}
	op := le.Uint32(data[4:])
	arg := data[fuse.InHeaderSize:]
	switch op {
	case fuse.OpSetlkw:
		le.PutUint32(data[4:], fuse.OpSetlk)
	case fuse.OpFallocate:
		if len(arg) >= 24 {
			le.PutUint64(arg[16:], le.Uint64(arg[16:])%(1<<20))
		}
	case fuse.OpInit, fuse.OpDestroy, fuse.OpInterrupt:
		return data
	}
	// Most ops start with an fh.
	if len(arg) >= 8 && le.Uint64(arg) < 16 {
		le.PutUint64(arg, z.fhs[le.Uint64(arg)%uint64(len(z.fhs))])
	}
	return data
}

// serve runs one request and checks the reply's framing.
func (z *fuzzFS) serve(t *testing.T, data []byte, cut int) {
	var req fuse.Request
	if cut < 0 {
		cut = -cut
	}
	cut %= len(data) + 1
	if err := req.Decode(fuse.Scatter{data[:cut], data[cut:]}); err != nil {
		return
	}
	out := make([]byte, 8192)
	var rep fuse.Reply
	rep.Reset(fuse.Scatter{out}, req.Unique)
	z.c.fs.Handle(&req, &rep)
	if !rep.Done() {
		t.Fatalf("opcode %d left the reply undone", req.Opcode)
	}
	if w := rep.Written(); w != 0 {
		var oh fuse.OutHeader
		fuse.Parse(out, &oh)
		if w < fuse.OutHeaderSize || oh.Len != w || oh.Unique != req.Unique || oh.Error > 0 || oh.Error < -4095 {
			t.Fatalf("opcode %d: bad reply header %+v (written %d)", req.Opcode, oh, w)
		}
	}
	if !z.c.fs.inited.Load() { // DESTROY: start a new session
		in := fuse.InitIn{Major: 7, Minor: 38, Flags: uint32(uint64(offered) & 0xffffffff), Flags2: uint32(uint64(offered) >> 32)}
		z.c.call(fuse.OpInit, 0, b(in))
	}
	if uid, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uid != 0 {
		t.Fatalf("opcode %d left fsuid %d", req.Opcode, uid)
	}
	if z.outsideStat() != z.before {
		t.Fatalf("opcode %d changed something outside the shared dir", req.Opcode)
	}
}

// FuzzHandle feeds arbitrary bytes as a FUSE request to an FS over a temp
// dir: no input may panic, leave a reply undone, frame a reply wrongly or
// leak credentials. Seeds: testdata/fuzz/FuzzHandle plus f.Add below.
func FuzzHandle(f *testing.F) {
	z := newFuzzFS(f)
	for _, s := range fuzzSeeds() {
		f.Add(s, 0)
	}
	f.Fuzz(func(t *testing.T, data []byte, cut int) {
		z.serve(t, z.prepare(append([]byte(nil), data...)), cut)
	})
}

// fuzzSeeds are well-formed requests for every implemented opcode, with
// nodeid/fh placeholders (small numbers) that prepare maps to live objects.
func fuzzSeeds() [][]byte {
	req := func(op uint32, nodeid uint64, args ...[]byte) []byte {
		var body []byte
		for _, a := range args {
			body = append(body, a...)
		}
		h := fuse.InHeader{Len: uint32(fuse.InHeaderSize + len(body)), Opcode: op, Unique: 77, NodeID: nodeid, UID: 1000, GID: 1000}
		return append(append([]byte(nil), fuse.Bytes(&h)...), body...)
	}
	const file, dir, link, fifo = 1, 2, 3, 4
	fileFh, dirFh := uint64(0), uint64(1)
	return [][]byte{
		req(fuse.OpLookup, 0, name("file")),
		req(fuse.OpLookup, 0, name("..")),
		req(fuse.OpLookup, dir, name("inner")),
		req(fuse.OpLookup, 0, name("../etc")),
		req(fuse.OpForget, file, b(fuse.ForgetIn{Nlookup: 1})),
		req(fuse.OpBatchForget, 0, b(fuse.BatchForgetIn{Count: 2}), b(fuse.ForgetOne{NodeID: 3, Nlookup: 1})),
		req(fuse.OpGetattr, file, b(fuse.GetattrIn{})),
		req(fuse.OpSetattr, file, b(fuse.SetattrIn{Valid: fuse.FattrSize | fuse.FattrMode | fuse.FattrAtimeNow | fuse.FattrAtime, Size: 3, Mode: 0o644})),
		req(fuse.OpSetattr, file, b(fuse.SetattrIn{Valid: fuse.FattrFH | fuse.FattrSize, Fh: fileFh, Size: 10})),
		req(fuse.OpStatx, file, b(fuse.StatxIn{SxMask: 0xfff})),
		req(fuse.OpReadlink, link),
		req(fuse.OpSymlink, dir, name("s"), name("/etc/passwd")),
		req(fuse.OpMknod, dir, b(fuse.MknodIn{Mode: unix.S_IFIFO | 0o644, Umask: 0o22}), name("p")),
		req(fuse.OpMkdir, dir, b(fuse.MkdirIn{Mode: 0o755}), name("m")),
		req(fuse.OpUnlink, dir, name("s")),
		req(fuse.OpRmdir, dir, name("m")),
		req(fuse.OpRename, dir, b(fuse.RenameIn{Newdir: 0}), name("inner"), name("moved")),
		req(fuse.OpRename2, 0, b(fuse.Rename2In{Newdir: dir, Flags: unix.RENAME_EXCHANGE}), name("moved"), name("inner")),
		req(fuse.OpLink, dir, b(fuse.LinkIn{Oldnodeid: file}), name("hard")),
		req(fuse.OpOpen, file, b(fuse.OpenIn{Flags: unix.O_RDWR | unix.O_TRUNC})),
		req(fuse.OpOpen, link, b(fuse.OpenIn{Flags: unix.O_RDONLY})),
		req(fuse.OpOpen, fifo, b(fuse.OpenIn{Flags: unix.O_RDONLY})),
		req(fuse.OpCreate, dir, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o644}), name("c")),
		req(fuse.OpTmpfile, dir, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o600}), name("/")),
		req(fuse.OpRead, file, b(fuse.ReadIn{Fh: fileFh, Size: 4096})),
		req(fuse.OpWrite, file, b(fuse.WriteIn{Fh: fileFh, Offset: 3, Size: 5}), []byte("hello")),
		req(fuse.OpFlush, file, b(fuse.FlushIn{Fh: fileFh})),
		req(fuse.OpFsync, file, b(fuse.FsyncIn{Fh: fileFh, FsyncFlags: fuse.FsyncFdatasync})),
		req(fuse.OpRelease, file, b(fuse.ReleaseIn{Fh: 9})),
		req(fuse.OpOpendir, dir, b(fuse.OpenIn{})),
		req(fuse.OpReaddir, 0, b(fuse.ReadIn{Fh: dirFh, Size: 1024})),
		req(fuse.OpReaddirplus, 0, b(fuse.ReadIn{Fh: dirFh, Size: 4096})),
		req(fuse.OpReleasedir, 0, b(fuse.ReleaseIn{Fh: 9})),
		req(fuse.OpFsyncdir, 0, b(fuse.FsyncIn{Fh: dirFh})),
		req(fuse.OpStatfs, 0),
		req(fuse.OpAccess, file, b(fuse.AccessIn{Mask: unix.R_OK})),
		req(fuse.OpFallocate, file, b(fuse.FallocateIn{Fh: fileFh, Length: 4096, Mode: unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE})),
		req(fuse.OpLseek, file, b(fuse.LseekIn{Fh: fileFh, Whence: unix.SEEK_DATA})),
		req(fuse.OpCopyFileRange, file, b(fuse.CopyFileRangeIn{FhIn: fileFh, FhOut: fileFh, OffOut: 100, Len: 10})),
		req(fuse.OpSyncfs, 0, b(fuse.SyncfsIn{})),
		req(fuse.OpSetxattr, file, b(fuse.SetxattrIn{Size: 3}), name("user.a"), []byte("abc")),
		req(fuse.OpGetxattr, file, b(fuse.GetxattrIn{Size: 0}), name("user.a")),
		req(fuse.OpListxattr, fifo, b(fuse.GetxattrIn{Size: 100})),
		req(fuse.OpRemovexattr, link, name("trusted.a")),
		req(fuse.OpGetlk, file, b(fuse.LkIn{Fh: fileFh, Lk: fuse.FileLock{End: fuse.OffsetMax, Type: unix.F_WRLCK}})),
		req(fuse.OpSetlk, file, b(fuse.LkIn{Fh: fileFh, Lk: fuse.FileLock{End: 10, Type: unix.F_RDLCK}, LkFlags: fuse.LkFlock})),
		req(fuse.OpSetlkw, file, b(fuse.LkIn{Fh: fileFh, Lk: fuse.FileLock{End: 10, Type: unix.F_UNLCK}})),
		req(fuse.OpInterrupt, 0, b(fuse.InterruptIn{Unique: 5})),
		req(fuse.OpInit, 0, b(fuse.InitIn{Major: 7, Minor: 38})),
		req(fuse.OpDestroy, 0),
		req(fuse.OpIoctl, 0, make([]byte, 32)),
	}
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzHandle from
// fuzzSeeds when VFSD_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("VFSD_WRITE_CORPUS") != "1" {
		t.Skip("set VFSD_WRITE_CORPUS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds() {
		op := binary.LittleEndian.Uint32(s[4:])
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\nint(%d)\n", strconv.Quote(string(s)), i%7*5)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d-op%d", i, op)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
