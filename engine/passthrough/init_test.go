package passthrough

import (
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

func TestInitNegotiation(t *testing.T) {
	for _, wb := range []bool{false, true} {
		c := newTFS(t, Options{Writeback: wb})
		// newTFS sent INIT with everything we offer plus writeback.
		s := c.fs.Session()
		if !s.Initialized || s.Major != 7 || s.Minor != 38 || s.MaxWrite != 1<<20 || s.MaxPages != 256 {
			t.Fatalf("session %+v", s)
		}
		if got := s.Has(fuse.FlagWritebackCache); got != wb {
			t.Errorf("writeback negotiated %v with Options.Writeback %v", got, wb)
		}
		if !s.Has(fuse.FlagSetxattrExt | fuse.FlagInitExt | fuse.FlagDoReaddirplus | fuse.FlagPosixLocks) {
			t.Errorf("flags %#x miss offered ones", s.Flags)
		}
		e, _ := c.call(fuse.OpInit, 0, b(fuse.InitIn{Major: 7, Minor: 38}))
		wantErr(t, "second INIT", e, unix.EPROTO)
	}

	c := newTFS(t, Options{})
	c.call(fuse.OpDestroy, fuse.RootID)
	e, _ := c.call(fuse.OpGetattr, fuse.RootID, b(fuse.GetattrIn{}))
	wantErr(t, "GETATTR before INIT", e, unix.EIO)

	// Older guest: minor 31 without INIT_EXT; unknown flags are not echoed,
	// flags2 is ignored, and the reply is the full 64 bytes.
	in := fuse.InitIn{Major: 7, Minor: 31, MaxReadahead: 4096,
		Flags: fuse.FlagAsyncRead | fuse.FlagSpliceRead | fuse.FlagWritebackCache | fuse.FlagSetxattrExt, Flags2: 0xffffffff}
	e, p := c.call(fuse.OpInit, 0, b(in))
	if e != 0 {
		t.Fatal(e)
	}
	if len(p) != fuse.InitOutSize {
		t.Fatalf("INIT reply %d bytes", len(p))
	}
	out := parse[fuse.InitOut](t, p)
	if out.Major != 7 || out.Minor != 31 || out.Flags != fuse.FlagAsyncRead|fuse.FlagSetxattrExt || out.Flags2 != 0 ||
		out.MaxWrite != 1<<20 || out.MaxPages != 256 || out.MaxReadahead != 4096 || out.TimeGran != 1 {
		t.Errorf("INIT out %+v", out)
	}
	c.call(fuse.OpDestroy, fuse.RootID)

	// A 7.22 guest gets the 24-byte reply.
	_, p = c.call(fuse.OpInit, 0, b(fuse.InitIn{Major: 7, Minor: 22})[:fuse.InitInCompatSize])
	if len(p) != fuse.InitOutCompat22 {
		t.Errorf("7.22 INIT reply %d bytes", len(p))
	}
	c.call(fuse.OpDestroy, fuse.RootID)

	// Major 8: answer our version only, stay uninitialized.
	_, p = c.call(fuse.OpInit, 0, b(fuse.InitIn{Major: 8, Minor: 1}))
	if len(p) != 8 || parse[fuse.InitOut](t, append(p, make([]byte, 56)...)).Major != 7 {
		t.Errorf("major 8 reply %x", p)
	}
	e, _ = c.call(fuse.OpInit, 0, b(fuse.InitIn{Major: 6, Minor: 1}))
	wantErr(t, "major 6", e, unix.EPROTO)
	e, _ = c.call(fuse.OpInit, 0, []byte{7, 0, 0})
	wantErr(t, "short INIT", e, unix.EINVAL)

	// A session handed over from an earlier worker starts initialized.
	s := fuse.Session{Major: 7, Minor: 36, Flags: fuse.FlagSetxattrExt, MaxWrite: 1 << 20, Initialized: true}
	c2 := newTFSNoInit(t, Options{Session: &s})
	if e, _ := c2.call(fuse.OpGetattr, fuse.RootID, b(fuse.GetattrIn{})); e != 0 {
		t.Errorf("GETATTR on resumed session: %v", e)
	}
	if got := c2.fs.Session(); got != s {
		t.Errorf("resumed session %+v", got)
	}
}

func newTFSNoInit(t *testing.T, o Options) *tfs {
	o.Root = t.TempDir()
	c := newTFS(t, Options{Root: o.Root}) // harmless INIT on a throwaway FS
	_ = c
	fs, err := New(Options{Root: o.Root, Session: o.Session, MaxInodes: 64, MaxHandles: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return &tfs{t: t, fs: fs, dir: o.Root, out: make([]byte, 64<<10)}
}

func TestUnknownOpcodes(t *testing.T) {
	c := newTFS(t, Options{})
	for _, op := range []uint32{0, 7, 19, fuse.OpBmap, fuse.OpIoctl, fuse.OpPoll, fuse.OpSetupmapping, 63, 64, 1000, ^uint32(0)} {
		e, _ := c.call(op, fuse.RootID, make([]byte, 64))
		wantErr(t, "opcode", e, unix.ENOSYS)
	}
}

// TestShortArgs sends every opcode with every truncation of a plausible
// argument block: the answer is an errno (EINVAL when the fixed part is
// short), never a panic.
func TestShortArgs(t *testing.T) {
	c := newTFS(t, Options{Xattr: true})
	full := make([]byte, 200)
	copy(full[100:], "name\x00x\x00")
	for op := uint32(0); op < fuse.OpMax; op++ {
		if op == fuse.OpInit || op == fuse.OpDestroy {
			continue
		}
		ent := ops[op]
		for n := 0; n < ent.min; n++ {
			e, _ := c.call(op, fuse.RootID, full[:n])
			if !noReplyOp(op) {
				wantErr(t, "short arg", e, unix.EINVAL)
			}
		}
	}
}
