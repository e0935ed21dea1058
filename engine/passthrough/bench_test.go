package passthrough

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// hot is one prepared request, re-decoded and served per iteration the way
// a queue thread does it.
type hot struct {
	fs  *FS
	in  fuse.Scatter
	out fuse.Scatter
	req fuse.Request
	rep fuse.Reply
}

func newHot(fs *FS, op uint32, nodeid uint64, args ...[]byte) *hot {
	var body []byte
	for _, a := range args {
		body = append(body, a...)
	}
	buf := make([]byte, fuse.InHeaderSize+len(body))
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(buf)))
	binary.LittleEndian.PutUint32(buf[4:], op)
	binary.LittleEndian.PutUint64(buf[8:], 1)
	binary.LittleEndian.PutUint64(buf[16:], nodeid)
	copy(buf[fuse.InHeaderSize:], body)
	return &hot{fs: fs, in: fuse.Scatter{buf}, out: fuse.Scatter{make([]byte, 64<<10)}}
}

func (h *hot) run() unix.Errno {
	if err := h.req.Decode(h.in); err != nil {
		panic(err)
	}
	h.rep.Reset(h.out, 1)
	h.fs.Handle(&h.req, &h.rep)
	return unix.Errno(-int32(binary.LittleEndian.Uint32(h.out[0][4:])))
}

// hotSetup returns an FS with a 1 MiB file "f" looked up and opened.
func hotSetup(t testing.TB) (c *tfs, f fuse.EntryOut, fh uint64) {
	c = newTFS(t, Options{Xattr: true})
	if tt, ok := t.(*testing.T); ok {
		c.t = tt
	} else {
		c.t = &testing.T{}
	}
	if err := os.WriteFile(c.path("f"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	e, p := c.call(fuse.OpLookup, fuse.RootID, name("f"))
	if e != 0 {
		t.Fatal(e)
	}
	fuse.Parse(p, &f)
	e, p = c.call(fuse.OpOpen, f.NodeID, b(fuse.OpenIn{Flags: unix.O_RDWR}))
	if e != 0 {
		t.Fatal(e)
	}
	var o fuse.OpenOut
	fuse.Parse(p, &o)
	return c, f, o.Fh
}

func hotRequests(c *tfs, f fuse.EntryOut, fh uint64) map[string]*hot {
	data := make([]byte, 4096)
	return map[string]*hot{
		"GETATTR": newHot(c.fs, fuse.OpGetattr, f.NodeID, b(fuse.GetattrIn{})),
		"LOOKUP":  newHot(c.fs, fuse.OpLookup, fuse.RootID, name("f")),
		"READ":    newHot(c.fs, fuse.OpRead, f.NodeID, b(fuse.ReadIn{Fh: fh, Offset: 8192, Size: 4096})),
		"WRITE":   newHot(c.fs, fuse.OpWrite, f.NodeID, b(fuse.WriteIn{Fh: fh, Offset: 4096, Size: 4096}), data),
	}
}

// moreRequests are other requests a guest repeats on known inodes and open
// handles (the root directory opened here for the listings).
func moreRequests(t testing.TB, c *tfs, f fuse.EntryOut, fh uint64) map[string]*hot {
	e, p := c.call(fuse.OpOpendir, fuse.RootID, b(fuse.OpenIn{}))
	if e != 0 {
		t.Fatal(e)
	}
	var d fuse.OpenOut
	fuse.Parse(p, &d)
	return map[string]*hot{
		"STATFS":        newHot(c.fs, fuse.OpStatfs, fuse.RootID),
		"ACCESS":        newHot(c.fs, fuse.OpAccess, f.NodeID, b(fuse.AccessIn{Mask: unix.R_OK})),
		"FLUSH":         newHot(c.fs, fuse.OpFlush, f.NodeID, b(fuse.FlushIn{Fh: fh})),
		"FSYNC":         newHot(c.fs, fuse.OpFsync, f.NodeID, b(fuse.FsyncIn{Fh: fh, FsyncFlags: 1})),
		"SETATTR mode":  newHot(c.fs, fuse.OpSetattr, f.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrMode, Mode: 0o644})),
		"SETATTR size":  newHot(c.fs, fuse.OpSetattr, f.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrSize | fuse.FattrFH, Fh: fh, Size: 1 << 20})),
		"LISTXATTR":     newHot(c.fs, fuse.OpListxattr, f.NodeID, b(fuse.GetxattrIn{Size: 100})),
		"LOOKUP absent": newHot(c.fs, fuse.OpLookup, fuse.RootID, name("absent")),
		"LSEEK":         newHot(c.fs, fuse.OpLseek, f.NodeID, b(fuse.LseekIn{Fh: fh, Whence: unix.SEEK_DATA})),
		"READDIR":       newHot(c.fs, fuse.OpReaddir, fuse.RootID, b(fuse.ReadIn{Fh: d.Fh, Size: 4096})),
		"READDIRPLUS":   newHot(c.fs, fuse.OpReaddirplus, fuse.RootID, b(fuse.ReadIn{Fh: d.Fh, Size: 4096})),
	}
}

// TestHotPathAllocs: GETATTR, LOOKUP of a known inode, READ and WRITE
// allocate nothing per request, nor do the moreRequests (a LOOKUP that
// finds nothing, listings of known entries, attribute changes, syncs).
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	c, f, fh := hotSetup(t)
	reqs := hotRequests(c, f, fh)
	for op, h := range moreRequests(t, c, f, fh) {
		reqs[op] = h
	}
	for op, h := range reqs {
		want := unix.Errno(0)
		if op == "LOOKUP absent" {
			want = unix.ENOENT
		}
		if e := h.run(); e != want {
			t.Fatalf("%s: %v", op, e)
		}
		if n := testing.AllocsPerRun(200, func() { h.run() }); n != 0 {
			t.Errorf("%s: %.1f allocs per request, want 0", op, n)
		}
	}
}

func BenchmarkHot(b *testing.B) {
	c, f, fh := hotSetup(b)
	for _, op := range []string{"GETATTR", "LOOKUP", "READ", "WRITE"} {
		h := hotRequests(c, f, fh)[op]
		b.Run(op, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			for b.Loop() {
				if e := h.run(); e != 0 {
					b.Fatal(e)
				}
			}
		})
	}
}

// BenchmarkReaddirplus: a 10,000-entry directory listed with READDIRPLUS
// in 4 KiB requests (as the guest's getdents does), entries known after the
// first pass (plus), or forgotten after each request with a BATCH_FORGET,
// so that every entry is a new inode as in bench/hostload (plus-forget);
// ns/op is per request.
func BenchmarkReaddirplus(b *testing.B) {
	for _, nm := range []string{"plus", "plus-forget", "plain"} {
		op, plus, forget := uint32(fuse.OpReaddirplus), true, nm == "plus-forget"
		if nm == "plain" {
			op, plus = fuse.OpReaddir, false
		}
		b.Run(nm, func(b *testing.B) {
			c := newTFS(b, Options{MaxInodes: 1 << 15}) // room for every entry
			c.t = &testing.T{}
			dir := c.path("d")
			os.Mkdir(dir, 0o755)
			for i := range 10000 {
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("file-%05d", i)))
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
			e, p := c.call(fuse.OpLookup, fuse.RootID, name("d"))
			if e != 0 {
				b.Fatal(e)
			}
			var d fuse.EntryOut
			fuse.Parse(p, &d)
			dh := c.opendir(d.NodeID)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			h := newHot(c.fs, op, d.NodeID, wire(fuse.ReadIn{Fh: dh, Size: 4096}))
			h.out = fuse.Scatter{make([]byte, 4096+fuse.OutHeaderSize)}
			arg := h.in[0][fuse.InHeaderSize:]
			off, reqs, ents := uint64(0), 0, 0
			var fo []byte // BATCH_FORGET argument: BatchForgetIn, ForgetOnes
			b.ReportAllocs()
			for b.Loop() {
				binary.LittleEndian.PutUint64(arg[8:], off) // ReadIn.Offset
				if e := h.run(); e != 0 {
					b.Fatal(e)
				}
				n := int(binary.LittleEndian.Uint32(h.out[0][0:])) - fuse.OutHeaderSize
				if n == 0 { // end: list again
					off = 0
					continue
				}
				reqs++
				// The last entry's offset.
				pl := h.out[0][fuse.OutHeaderSize : fuse.OutHeaderSize+n]
				for len(pl) > 0 {
					base := 0
					if plus {
						base = fuse.EntryOutSize
					}
					off = binary.LittleEndian.Uint64(pl[base+8:])
					nl := int(binary.LittleEndian.Uint32(pl[base+16:]))
					if forget && nl > 0 && string(pl[base+24:base+24+nl]) != "." && string(pl[base+24:base+24+nl]) != ".." {
						fo = binary.LittleEndian.AppendUint64(fo, binary.LittleEndian.Uint64(pl[0:])) // EntryOut.NodeID
						fo = binary.LittleEndian.AppendUint64(fo, 1)
					}
					pl = pl[base+(24+nl+7)&^7:]
					ents++
				}
				if forget && len(fo) > 0 {
					bf := append(wire(fuse.BatchForgetIn{Count: uint32(len(fo) / 16)}), fo...)
					c.call(fuse.OpBatchForget, 0, bf)
					fo = fo[:0]
				}
			}
			if reqs > 0 {
				b.ReportMetric(float64(ents)/float64(reqs), "entries/req")
			}
		})
	}
}

// BenchmarkCreateReleaseUnlink: CREATE, RELEASE, UNLINK and the guest's
// FORGET of one file per op, journaled (queue 1), with an fd store, each
// followed by the FS.Flush of a publish. allocs/op are the FS's (the
// harness reuses its buffers): the new file's inode and handle.
func BenchmarkCreateReleaseUnlink(b *testing.B) {
	store := newFakeStore(b)
	c := newTFS(b, Options{FDStore: store})
	c.t = &testing.T{}
	c.queue = 1
	c.bench = true
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cr := wire(fuse.CreateIn{Flags: unix.O_WRONLY | unix.O_EXCL, Mode: 0o644})
	nm := name("x")
	var rel fuse.ReleaseIn
	relb := fuse.Bytes(&rel)
	fg := wire(fuse.ForgetIn{Nlookup: 1})
	b.ReportAllocs()
	for b.Loop() {
		c.head++
		e, p := c.call(fuse.OpCreate, fuse.RootID, cr, nm)
		if e != 0 {
			b.Fatal(e)
		}
		var ent fuse.EntryOut
		rest, _ := fuse.Parse(p, &ent)
		var o fuse.OpenOut
		fuse.Parse(rest, &o)
		c.head++
		rel.Fh = o.Fh
		if e, _ := c.call(fuse.OpRelease, ent.NodeID, relb); e != 0 {
			b.Fatal(e)
		}
		c.head++
		if e, _ := c.call(fuse.OpUnlink, fuse.RootID, nm); e != 0 {
			b.Fatal(e)
		}
		c.head++
		c.call(fuse.OpForget, ent.NodeID, fg)
	}
}

func b2[T fuse.Wire](v T) []byte { return append([]byte(nil), fuse.Bytes(&v)...) }

// wire is b for benchmarks (whose b is the *testing.B).
func wire[T fuse.Wire](v T) []byte { return b(v) }
