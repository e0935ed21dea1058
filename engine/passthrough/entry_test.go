package passthrough

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

func TestLookupGetattrForget(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("hello"), 0o640)
	e := c.mustLookup(fuse.RootID, "f")
	st := hostStat(t, c.path("f"))
	if e.NodeID < 1<<32 || e.Attr.Ino != st.Ino || e.Attr.Size != 5 || e.Attr.Mode != unix.S_IFREG|0o640 ||
		e.Attr.Nlink != 1 || e.EntryValid != 1 || e.AttrValid != 1 {
		t.Fatalf("entry %+v", e)
	}
	e2 := c.mustLookup(fuse.RootID, "f")
	if e2.NodeID != e.NodeID {
		t.Fatalf("second LOOKUP: nodeid %#x, want %#x", e2.NodeID, e.NodeID)
	}
	if n, _ := c.nlookup(e.NodeID); n != 2 {
		t.Fatalf("persisted nlookup %d, want 2", n)
	}

	eno, p := c.call(fuse.OpGetattr, e.NodeID, b(fuse.GetattrIn{}))
	if eno != 0 {
		t.Fatal(eno)
	}
	a := parse[fuse.AttrOut](t, p)
	if len(p) != fuse.AttrOutSize || a.Attr.Ino != st.Ino || a.Attr.Size != 5 || a.AttrValid != 1 {
		t.Fatalf("attr %+v", a)
	}
	// GETATTR of the root.
	eno, p = c.call(fuse.OpGetattr, fuse.RootID, b(fuse.GetattrIn{}))
	if eno != 0 || parse[fuse.AttrOut](t, p).Attr.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Fatalf("root getattr %v", eno)
	}

	// FORGET 1 of 2, then the rest: the nodeid goes stale, forever.
	c.call(fuse.OpForget, e.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if n, ok := c.nlookup(e.NodeID); !ok || n != 1 {
		t.Fatalf("nlookup after FORGET 1: %d %v", n, ok)
	}
	c.call(fuse.OpForget, e.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if _, ok := c.nlookup(e.NodeID); ok {
		t.Fatal("inode still known after FORGET to zero")
	}
	eno, _ = c.call(fuse.OpGetattr, e.NodeID, b(fuse.GetattrIn{}))
	wantErr(t, "GETATTR stale nodeid", eno, unix.ESTALE)
	e3 := c.mustLookup(fuse.RootID, "f")
	if e3.NodeID == e.NodeID {
		t.Fatal("a forgotten nodeid was issued again")
	}
	// Over-forget and forget of garbage are harmless.
	c.call(fuse.OpForget, e3.NodeID, b(fuse.ForgetIn{Nlookup: 1 << 40}))
	c.call(fuse.OpForget, 0xdead_0000_0042, b(fuse.ForgetIn{Nlookup: 1}))
	c.call(fuse.OpForget, fuse.RootID, b(fuse.ForgetIn{Nlookup: 1}))
	if _, ok := c.nlookup(e3.NodeID); ok {
		t.Fatal("over-forget left the inode")
	}
	if eno, _ := c.call(fuse.OpGetattr, fuse.RootID, b(fuse.GetattrIn{})); eno != 0 {
		t.Fatal("FORGET of the root broke it")
	}

	// BATCH_FORGET, including a count larger than the entries present.
	x := c.mustLookup(fuse.RootID, "f")
	c.mustLookup(fuse.RootID, "f")
	batch := append(b(fuse.BatchForgetIn{Count: 5}), b(fuse.ForgetOne{NodeID: x.NodeID, Nlookup: 1})...)
	batch = append(batch, b(fuse.ForgetOne{NodeID: x.NodeID, Nlookup: 1})...)
	if eno, p := c.call(fuse.OpBatchForget, 0, batch); eno != 0 || p != nil {
		t.Fatal("BATCH_FORGET must not be answered")
	}
	if _, ok := c.nlookup(x.NodeID); ok {
		t.Fatal("BATCH_FORGET did not forget")
	}
}

func TestLookupDots(t *testing.T) {
	c := newTFS(t, Options{})
	os.Mkdir(c.path("d"), 0o755)
	for _, n := range []string{"..", "."} {
		e := c.mustLookup(fuse.RootID, n)
		if e.NodeID != fuse.RootID {
			t.Errorf("LOOKUP %q of the root gave nodeid %#x, want the root", n, e.NodeID)
		}
	}
	d := c.mustLookup(fuse.RootID, "d")
	if e := c.mustLookup(d.NodeID, "."); e.NodeID != d.NodeID {
		t.Error("LOOKUP . of d is not d")
	}
	if e := c.mustLookup(d.NodeID, ".."); e.NodeID != fuse.RootID {
		t.Errorf("LOOKUP .. of d gave %#x, want the root", e.NodeID)
	}
	if n, _ := c.nlookup(d.NodeID); n != 2 {
		t.Errorf("nlookup of d %d, want 2 (LOOKUP d, LOOKUP d/.)", n)
	}
	_, eno := c.lookup(fuse.RootID, "missing")
	wantErr(t, "LOOKUP missing", eno, unix.ENOENT)
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	_, eno = c.lookup(f.NodeID, "x")
	wantErr(t, "LOOKUP in a file", eno, unix.ENOTDIR)
	_, eno = c.lookup(f.NodeID, "..")
	wantErr(t, "LOOKUP .. of a file", eno, unix.ENOTDIR)
	if e := c.mustLookup(f.NodeID, "."); e.NodeID != f.NodeID || e.Attr.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("LOOKUP . of a file (export support): %+v", e)
	}
}

// TestHostileNames: no guest name can make the FS touch anything but one
// component inside the parent.
func TestHostileNames(t *testing.T) {
	c := newTFS(t, Options{})
	os.Mkdir(c.path("d"), 0o755)
	d := c.mustLookup(fuse.RootID, "d")
	outside := t.TempDir()
	os.WriteFile(outside+"/secret", []byte("s"), 0o600)

	long := strings.Repeat("a", 256)
	bad := []struct {
		name []byte
		want unix.Errno
	}{
		{[]byte("a/b\x00"), unix.EINVAL},
		{[]byte("../x\x00"), unix.EINVAL},
		{[]byte(outside + "/secret\x00"), unix.EINVAL},
		{[]byte("\x00"), unix.EINVAL},
		{[]byte("noterminator"), unix.EINVAL},
		{nil, unix.EINVAL},
		{[]byte(long + "\x00"), unix.ENAMETOOLONG},
	}
	mk := func(n []byte) map[string]func() unix.Errno {
		return map[string]func() unix.Errno{
			"LOOKUP": func() unix.Errno { e, _ := c.call(fuse.OpLookup, d.NodeID, n); return e },
			"MKDIR":  func() unix.Errno { e, _ := c.call(fuse.OpMkdir, d.NodeID, b(fuse.MkdirIn{Mode: 0o755}), n); return e },
			"MKNOD": func() unix.Errno {
				e, _ := c.call(fuse.OpMknod, d.NodeID, b(fuse.MknodIn{Mode: unix.S_IFIFO | 0o644}), n)
				return e
			},
			"CREATE": func() unix.Errno {
				e, _ := c.call(fuse.OpCreate, d.NodeID, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o644}), n)
				return e
			},
			"UNLINK":  func() unix.Errno { e, _ := c.call(fuse.OpUnlink, d.NodeID, n); return e },
			"RMDIR":   func() unix.Errno { e, _ := c.call(fuse.OpRmdir, d.NodeID, n); return e },
			"SYMLINK": func() unix.Errno { e, _ := c.call(fuse.OpSymlink, d.NodeID, n, name("t")); return e },
			"LINK": func() unix.Errno {
				e, _ := c.call(fuse.OpLink, d.NodeID, b(fuse.LinkIn{Oldnodeid: d.NodeID}), n)
				return e
			},
			"RENAME old": func() unix.Errno {
				e, _ := c.call(fuse.OpRename, d.NodeID, b(fuse.RenameIn{Newdir: d.NodeID}), n, name("ok"))
				return e
			},
			"RENAME new": func() unix.Errno {
				os.WriteFile(c.path("d/src"), nil, 0o644)
				e, _ := c.call(fuse.OpRename, d.NodeID, b(fuse.RenameIn{Newdir: d.NodeID}), name("src"), n)
				return e
			},
		}
	}
	for _, tc := range bad {
		for op, f := range mk(tc.name) {
			if got := f(); got != tc.want {
				t.Errorf("%s %q: %v, want %v", op, tc.name, got, tc.want)
			}
		}
	}
	// "." and ".." are refused everywhere but LOOKUP.
	for _, n := range []string{".", ".."} {
		for op, f := range mk(name(n)) {
			if op == "LOOKUP" {
				continue
			}
			if got := f(); got != unix.EINVAL {
				t.Errorf("%s %q: %v, want EINVAL", op, n, got)
			}
		}
	}
	// An embedded NUL ends the name: "f\0/../x" is "f".
	eno, _ := c.call(fuse.OpMkdir, d.NodeID, b(fuse.MkdirIn{Mode: 0o755}), []byte("f\x00/../../x\x00"))
	if eno != 0 {
		t.Fatal(eno)
	}
	if _, err := os.Stat(c.path("d/f")); err != nil {
		t.Error("MKDIR f\\0... did not create f")
	}
	ents, _ := os.ReadDir(c.dir)
	for _, e := range ents {
		if e.Name() != "d" {
			t.Errorf("unexpected %q in the shared dir", e.Name())
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Error("the outside dir changed")
	}
}

// TestSymlinkNeverFollowed: a symlink pointing outside is only ever a
// symlink: LOOKUP describes the link, READLINK returns its text, and nothing
// opens, lists, chmods or truncates its target.
func TestSymlinkNeverFollowed(t *testing.T) {
	c := newTFS(t, Options{Xattr: true})
	outside := t.TempDir()
	os.WriteFile(outside+"/secret", []byte("secret"), 0o600)
	os.Symlink(outside, c.path("out"))
	os.Symlink(outside+"/secret", c.path("sf"))

	l := c.mustLookup(fuse.RootID, "out")
	if l.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Fatalf("LOOKUP of a symlink: mode %o", l.Attr.Mode)
	}
	eno, p := c.call(fuse.OpReadlink, l.NodeID)
	if eno != 0 || string(p) != outside {
		t.Fatalf("READLINK: %v %q", eno, p)
	}
	_, eno = c.lookup(l.NodeID, "secret")
	wantErr(t, "LOOKUP through a symlink", eno, unix.ENOTDIR)
	eno, _ = c.call(fuse.OpOpendir, l.NodeID, b(fuse.OpenIn{}))
	wantErr(t, "OPENDIR of a symlink", eno, unix.ENOTDIR)
	eno, _ = c.call(fuse.OpCreate, l.NodeID, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o644}), name("x"))
	wantErr(t, "CREATE in a symlink", eno, unix.ENOTDIR)

	sf := c.mustLookup(fuse.RootID, "sf")
	eno, _ = c.call(fuse.OpOpen, sf.NodeID, b(fuse.OpenIn{Flags: unix.O_RDONLY}))
	wantErr(t, "OPEN of a symlink", eno, unix.ELOOP)
	eno, _ = c.call(fuse.OpSetattr, sf.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrSize}))
	wantErr(t, "truncate of a symlink", eno, unix.EINVAL)
	eno, _ = c.call(fuse.OpSetattr, sf.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrMode, Mode: 0o777}))
	wantErr(t, "chmod of a symlink", eno, unix.EOPNOTSUPP)
	eno, _ = c.call(fuse.OpSetxattr, sf.NodeID, b(fuse.SetxattrIn{Size: 1}), name("user.x"), []byte("v"))
	wantErr(t, "user xattr on a symlink", eno, unix.EPERM)
	// CREATE over an existing symlink name must not open the target.
	eno, _ = c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR | unix.O_TRUNC, Mode: 0o644}), name("sf"))
	wantErr(t, "CREATE over a symlink", eno, unix.ELOOP)
	// chown of the link changes the link, not the target.
	eno, _ = c.call(fuse.OpSetattr, sf.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrUID | fuse.FattrGID, UID: 77, GID: 78}))
	if eno != 0 {
		t.Fatal(eno)
	}
	if st := hostStat(t, c.path("sf")); st.Uid != 77 || st.Gid != 78 {
		t.Errorf("symlink owner %d:%d", st.Uid, st.Gid)
	}
	if st := hostStat(t, outside+"/secret"); st.Uid != 0 || st.Size != 6 || st.Mode&0o777 != 0o600 {
		t.Errorf("target changed: %+v", st)
	}
	// LINK of the symlink makes a second link to the symlink itself.
	eno, _ = c.call(fuse.OpLink, fuse.RootID, b(fuse.LinkIn{Oldnodeid: sf.NodeID}), name("sf2"))
	if eno != 0 {
		t.Fatal(eno)
	}
	if tgt, _ := os.Readlink(c.path("sf2")); tgt != outside+"/secret" {
		t.Errorf("LINK of a symlink: %q", tgt)
	}
}

func TestStaleAndBadIDs(t *testing.T) {
	c := newTFS(t, Options{})
	for _, id := range []uint64{0, 2, 1 << 32, 0xffff_ffff_ffff_ffff, 5<<32 | 3} {
		eno, _ := c.call(fuse.OpGetattr, id, b(fuse.GetattrIn{}))
		wantErr(t, "GETATTR bad nodeid", eno, unix.ESTALE)
		_, eno = c.lookup(id, "x")
		wantErr(t, "LOOKUP bad parent", eno, unix.ESTALE)
		eno, _ = c.call(fuse.OpOpen, id, b(fuse.OpenIn{}))
		wantErr(t, "OPEN bad nodeid", eno, unix.ESTALE)
	}
	os.WriteFile(c.path("f"), []byte("x"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	dh := c.opendir(fuse.RootID)
	for _, bad := range []uint64{0, fh + 1<<32, fh ^ 0xffff, 1, dh} {
		_, eno := c.read(f.NodeID, bad, 0, 10)
		wantErr(t, "READ bad fh", eno, unix.EBADF)
		_, eno = c.write(f.NodeID, bad, 0, []byte("x"), 0)
		wantErr(t, "WRITE bad fh", eno, unix.EBADF)
	}
	eno, _ := c.call(fuse.OpReaddir, fuse.RootID, b(fuse.ReadIn{Fh: fh, Size: 4096}))
	wantErr(t, "READDIR of a file fh", eno, unix.EBADF)
	eno, _ = c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	if eno != 0 {
		t.Fatal(eno)
	}
	_, eno = c.read(f.NodeID, fh, 0, 10)
	wantErr(t, "READ after RELEASE", eno, unix.EBADF)
	eno, _ = c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	wantErr(t, "double RELEASE", eno, unix.EBADF)
	eno, _ = c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: dh}))
	wantErr(t, "RELEASE of a dir fh", eno, unix.EBADF)
	c.call(fuse.OpReleasedir, fuse.RootID, b(fuse.ReleaseIn{Fh: dh}))
}

func TestSetattr(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("0123456789"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	set := func(a fuse.SetattrIn) fuse.Attr {
		t.Helper()
		eno, p := c.call(fuse.OpSetattr, f.NodeID, b(a))
		if eno != 0 {
			t.Fatalf("SETATTR %+v: %v", a, eno)
		}
		return parse[fuse.AttrOut](t, p).Attr
	}
	if a := set(fuse.SetattrIn{Valid: fuse.FattrMode, Mode: 0o4751}); a.Mode != unix.S_IFREG|0o4751 {
		t.Errorf("mode %o", a.Mode)
	}
	if a := set(fuse.SetattrIn{Valid: fuse.FattrUID | fuse.FattrGID, UID: 1000, GID: 2000}); a.UID != 1000 || a.GID != 2000 {
		t.Errorf("owner %d:%d", a.UID, a.GID)
	}
	if a := set(fuse.SetattrIn{Valid: fuse.FattrGID, GID: 3000}); a.UID != 1000 || a.GID != 3000 {
		t.Errorf("gid only: %d:%d", a.UID, a.GID)
	}
	if a := set(fuse.SetattrIn{Valid: fuse.FattrSize, Size: 4}); a.Size != 4 {
		t.Errorf("size %d", a.Size)
	}
	if got, _ := os.ReadFile(c.path("f")); string(got) != "0123" {
		t.Errorf("host content %q", got)
	}
	unix.Chmod(c.path("f"), 0o6755)
	a := set(fuse.SetattrIn{Valid: fuse.FattrSize | fuse.FattrKillSuidgid, Size: 2})
	if a.Size != 2 || a.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 || a.Mode&0o777 != 0o755 {
		t.Errorf("truncate with KILL_SUIDGID: mode %o size %d", a.Mode, a.Size)
	}
	a = set(fuse.SetattrIn{Valid: fuse.FattrAtime | fuse.FattrMtime, Atime: 1000, Atimensec: 5, Mtime: 2000, Mtimensec: 7})
	if a.Atime != 1000 || a.Atimensec != 5 || a.Mtime != 2000 || a.Mtimensec != 7 {
		t.Errorf("times %+v", a)
	}
	a = set(fuse.SetattrIn{Valid: fuse.FattrMtime | fuse.FattrMtimeNow})
	if a.Mtime < 1e9 || a.Atime != 1000 {
		t.Errorf("MTIME_NOW: %+v", a)
	}
	eno, _ := c.call(fuse.OpSetattr, f.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrAtime, Atimensec: 2e9}))
	wantErr(t, "bad nsec", eno, unix.EINVAL)
	eno, _ = c.call(fuse.OpSetattr, f.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrSize, Size: 1 << 63}))
	wantErr(t, "size > OFFSET_MAX", eno, unix.EINVAL)

	// With a file handle.
	fh := c.open(f.NodeID, unix.O_RDWR)
	a = set(fuse.SetattrIn{Valid: fuse.FattrFH | fuse.FattrSize | fuse.FattrMode | fuse.FattrAtime, Fh: fh, Size: 100, Mode: 0o600, Atime: 5})
	if a.Size != 100 || a.Mode&0o7777 != 0o600 || a.Atime != 5 {
		t.Errorf("setattr via fh: %+v", a)
	}
	eno, _ = c.call(fuse.OpSetattr, f.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrFH | fuse.FattrSize, Fh: fh + 1}))
	wantErr(t, "setattr bad fh", eno, unix.EBADF)
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))

	os.Mkdir(c.path("d"), 0o755)
	d := c.mustLookup(fuse.RootID, "d")
	eno, _ = c.call(fuse.OpSetattr, d.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrSize}))
	wantErr(t, "truncate dir", eno, unix.EISDIR)
	eno, p := c.call(fuse.OpSetattr, d.NodeID, b(fuse.SetattrIn{Valid: fuse.FattrMode, Mode: 0o700}))
	if eno != 0 || parse[fuse.AttrOut](t, p).Attr.Mode != unix.S_IFDIR|0o700 {
		t.Errorf("chmod dir: %v", eno)
	}
}

func TestStatx(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("abc"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	eno, p := c.call(fuse.OpStatx, f.NodeID, b(fuse.StatxIn{SxMask: unix.STATX_BASIC_STATS | unix.STATX_BTIME}))
	if eno != 0 {
		t.Fatal(eno)
	}
	if len(p) != fuse.StatxOutSize {
		t.Fatalf("STATX payload %d", len(p))
	}
	s := parse[fuse.StatxOut](t, p).Stat
	st := hostStat(t, c.path("f"))
	if s.Ino != st.Ino || s.Size != 3 || s.Mode != unix.S_IFREG|0o644 || s.Mask&unix.STATX_BASIC_STATS != unix.STATX_BASIC_STATS {
		t.Errorf("statx %+v", s)
	}
}

func TestReadlink(t *testing.T) {
	c := newTFS(t, Options{})
	target := strings.Repeat("x/", 1000) + "end"
	os.Symlink(target, c.path("l"))
	os.WriteFile(c.path("f"), nil, 0o644)
	l := c.mustLookup(fuse.RootID, "l")
	eno, p := c.call(fuse.OpReadlink, l.NodeID)
	if eno != 0 || string(p) != target {
		t.Fatalf("READLINK %v %d bytes", eno, len(p))
	}
	f := c.mustLookup(fuse.RootID, "f")
	eno, _ = c.call(fuse.OpReadlink, f.NodeID)
	wantErr(t, "READLINK of a file", eno, unix.EINVAL)
	// A guest buffer too small for the answer gets EINVAL, not a partial write.
	eno, _ = c.callOut(fuse.OutHeaderSize+10, fuse.OpReadlink, l.NodeID)
	wantErr(t, "READLINK into a small buffer", eno, unix.EINVAL)
}

func TestCreateOpsAndCreds(t *testing.T) {
	c := newTFS(t, Options{})
	c.uid, c.gid = 1234, 5678
	// MKDIR with the request's umask.
	eno, p := c.call(fuse.OpMkdir, fuse.RootID, b(fuse.MkdirIn{Mode: 0o777, Umask: 0o022}), name("d"))
	if eno != 0 {
		t.Fatal(eno)
	}
	e := parse[fuse.EntryOut](t, p)
	st := hostStat(t, c.path("d"))
	if st.Mode != unix.S_IFDIR|0o755 || st.Uid != 1234 || st.Gid != 5678 || e.Attr.Ino != st.Ino {
		t.Errorf("mkdir: mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
	}
	if n, _ := c.nlookup(e.NodeID); n != 1 {
		t.Errorf("MKDIR counted %d references", n)
	}
	eno, _ = c.call(fuse.OpMkdir, fuse.RootID, b(fuse.MkdirIn{Mode: 0o777}), name("d"))
	wantErr(t, "MKDIR existing", eno, unix.EEXIST)

	// SYMLINK.
	eno, p = c.call(fuse.OpSymlink, e.NodeID, name("l"), name("/etc/passwd"))
	if eno != 0 {
		t.Fatal(eno)
	}
	if tgt, _ := os.Readlink(c.path("d/l")); tgt != "/etc/passwd" {
		t.Errorf("symlink target %q", tgt)
	}
	if st := hostStat(t, c.path("d/l")); st.Uid != 1234 || st.Gid != 5678 || parse[fuse.EntryOut](t, p).Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("symlink owner %d:%d", st.Uid, st.Gid)
	}
	eno, _ = c.call(fuse.OpSymlink, e.NodeID, name("l2"), name(strings.Repeat("a", 4096)))
	wantErr(t, "SYMLINK long target", eno, unix.ENAMETOOLONG)
	eno, _ = c.call(fuse.OpSymlink, e.NodeID, name("l3"), []byte("no-nul"))
	wantErr(t, "SYMLINK target without NUL", eno, unix.EINVAL)

	// MKNOD fifo and socket as the user; devices need root (CAP_MKNOD is an
	// fs capability, dropped with a non-root fsuid).
	for _, tc := range []struct {
		n    string
		mode uint32
	}{{"fifo", unix.S_IFIFO | 0o666}, {"sock", unix.S_IFSOCK | 0o600}, {"reg", unix.S_IFREG | 0o640}} {
		eno, _ := c.call(fuse.OpMknod, e.NodeID, b(fuse.MknodIn{Mode: tc.mode, Umask: 0o027}), name(tc.n))
		if eno != 0 {
			t.Fatalf("MKNOD %s: %v", tc.n, eno)
		}
		st := hostStat(t, c.path("d/"+tc.n))
		if st.Mode != tc.mode&^0o027 || st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("MKNOD %s: mode %o owner %d:%d", tc.n, st.Mode, st.Uid, st.Gid)
		}
	}
	eno, _ = c.call(fuse.OpMknod, e.NodeID, b(fuse.MknodIn{Mode: unix.S_IFCHR | 0o600, Rdev: fuse.EncodeDev(1, 3)}), name("nouser"))
	wantErr(t, "MKNOD device as a user", eno, unix.EPERM)
	eno, _ = c.call(fuse.OpMknod, e.NodeID, b(fuse.MknodIn{Mode: unix.S_IFDIR | 0o600}), name("x"))
	wantErr(t, "MKNOD of a dir", eno, unix.EINVAL)
	c.uid, c.gid = 0, 0
	for _, tc := range []struct {
		n            string
		typ          uint32
		major, minor uint32
	}{{"null", unix.S_IFCHR, 1, 3}, {"blk", unix.S_IFBLK, 259, 70000}} {
		eno, p := c.call(fuse.OpMknod, e.NodeID, b(fuse.MknodIn{Mode: tc.typ | 0o600, Rdev: fuse.EncodeDev(tc.major, tc.minor)}), name(tc.n))
		if eno != 0 {
			t.Fatalf("MKNOD %s: %v", tc.n, eno)
		}
		st := hostStat(t, c.path("d/"+tc.n))
		if st.Mode != tc.typ|0o600 || unix.Major(st.Rdev) != tc.major || unix.Minor(st.Rdev) != tc.minor {
			t.Errorf("MKNOD %s: mode %o rdev %d:%d", tc.n, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if got := parse[fuse.EntryOut](t, p).Attr.Rdev; got != fuse.EncodeDev(tc.major, tc.minor) {
			t.Errorf("attr rdev %#x", got)
		}
		// The FS never opens a device for the guest.
		dev := c.mustLookup(e.NodeID, tc.n)
		eno, _ = c.call(fuse.OpOpen, dev.NodeID, b(fuse.OpenIn{Flags: unix.O_RDWR}))
		wantErr(t, "OPEN of a device", eno, unix.ENXIO)
	}
	fifo := c.mustLookup(e.NodeID, "fifo")
	eno, _ = c.call(fuse.OpOpen, fifo.NodeID, b(fuse.OpenIn{Flags: unix.O_RDONLY}))
	wantErr(t, "OPEN of a fifo", eno, unix.ENXIO)

	// A user without write permission on the parent is refused by the host.
	os.Mkdir(c.path("ro"), 0o755)
	ro := c.mustLookup(fuse.RootID, "ro")
	c.uid, c.gid = 1234, 5678
	eno, _ = c.call(fuse.OpMkdir, ro.NodeID, b(fuse.MkdirIn{Mode: 0o777}), name("x"))
	wantErr(t, "MKDIR without permission", eno, unix.EACCES)
	// Credentials are restored after each request.
	if uid, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uid != 0 {
		t.Errorf("fsuid left at %d", uid)
	}
}

func TestUnlinkRmdirRenameLink(t *testing.T) {
	c := newTFS(t, Options{})
	os.Mkdir(c.path("d"), 0o755)
	os.WriteFile(c.path("d/a"), []byte("A"), 0o644)
	os.WriteFile(c.path("d/b"), []byte("B"), 0o644)
	os.Mkdir(c.path("e"), 0o755)
	d := c.mustLookup(fuse.RootID, "d")
	e := c.mustLookup(fuse.RootID, "e")

	rename := func(op uint32, flags uint32, from, to string) unix.Errno {
		var hdr []byte
		if op == fuse.OpRename {
			hdr = b(fuse.RenameIn{Newdir: e.NodeID})
		} else {
			hdr = b(fuse.Rename2In{Newdir: e.NodeID, Flags: flags})
		}
		eno, _ := c.call(op, d.NodeID, hdr, name(from), name(to))
		return eno
	}
	if eno := rename(fuse.OpRename, 0, "a", "a2"); eno != 0 {
		t.Fatal(eno)
	}
	if got, _ := os.ReadFile(c.path("e/a2")); string(got) != "A" {
		t.Fatal("RENAME did not move the file")
	}
	os.WriteFile(c.path("e/b"), []byte("eB"), 0o644)
	wantErr(t, "RENAME_NOREPLACE", rename(fuse.OpRename2, unix.RENAME_NOREPLACE, "b", "b"), unix.EEXIST)
	if eno := rename(fuse.OpRename2, unix.RENAME_EXCHANGE, "b", "b"); eno != 0 {
		t.Fatal(eno)
	}
	if x, _ := os.ReadFile(c.path("d/b")); string(x) != "eB" {
		t.Error("RENAME_EXCHANGE did not swap")
	}
	if eno := rename(fuse.OpRename2, unix.RENAME_WHITEOUT, "b", "w"); eno != 0 {
		t.Fatal(eno)
	}
	if st := hostStat(t, c.path("d/b")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Error("RENAME_WHITEOUT left no whiteout")
	}
	wantErr(t, "RENAME2 unknown flag", rename(fuse.OpRename2, 1<<7, "b", "z"), unix.EINVAL)
	wantErr(t, "RENAME missing", rename(fuse.OpRename, 0, "nope", "z"), unix.ENOENT)
	eno, _ := c.call(fuse.OpRename, d.NodeID, b(fuse.RenameIn{Newdir: 77 << 32}), name("b"), name("z"))
	wantErr(t, "RENAME to a stale dir", eno, unix.ESTALE)

	// LINK: same inode, nlink 2, one more reference.
	a2 := c.mustLookup(e.NodeID, "a2")
	eno, p := c.call(fuse.OpLink, d.NodeID, b(fuse.LinkIn{Oldnodeid: a2.NodeID}), name("hard"))
	if eno != 0 {
		t.Fatal(eno)
	}
	le := parse[fuse.EntryOut](t, p)
	if le.NodeID != a2.NodeID || le.Attr.Nlink != 2 {
		t.Errorf("LINK entry %+v", le)
	}
	if n, _ := c.nlookup(a2.NodeID); n != 2 {
		t.Errorf("LINK references %d", n)
	}
	eno, _ = c.call(fuse.OpLink, d.NodeID, b(fuse.LinkIn{Oldnodeid: e.NodeID}), name("dirlink"))
	wantErr(t, "LINK of a directory", eno, unix.EPERM)

	// UNLINK keeps the inode alive for the guest (it holds a reference).
	eno, _ = c.call(fuse.OpUnlink, e.NodeID, name("a2"))
	if eno != 0 {
		t.Fatal(eno)
	}
	eno, _ = c.call(fuse.OpUnlink, d.NodeID, name("hard"))
	if eno != 0 {
		t.Fatal(eno)
	}
	eno, p = c.call(fuse.OpGetattr, a2.NodeID, b(fuse.GetattrIn{}))
	if eno != 0 || parse[fuse.AttrOut](t, p).Attr.Nlink != 0 {
		t.Errorf("GETATTR of an unlinked inode: %v", eno)
	}
	eno, _ = c.call(fuse.OpUnlink, d.NodeID, name("nope"))
	wantErr(t, "UNLINK missing", eno, unix.ENOENT)
	eno, _ = c.call(fuse.OpRmdir, fuse.RootID, name("d"))
	wantErr(t, "RMDIR non-empty", eno, unix.ENOTEMPTY)
	eno, _ = c.call(fuse.OpUnlink, fuse.RootID, name("d"))
	wantErr(t, "UNLINK of a dir", eno, unix.EISDIR)
	os.RemoveAll(c.path("d"))
	os.Mkdir(c.path("d"), 0o755)
	if eno, _ := c.call(fuse.OpRmdir, fuse.RootID, name("d")); eno != 0 {
		t.Fatal(eno)
	}
	if _, err := os.Stat(c.path("d")); !os.IsNotExist(err) {
		t.Error("RMDIR left the dir")
	}
}

func TestStatfsAccess(t *testing.T) {
	c := newTFS(t, Options{})
	eno, p := c.call(fuse.OpStatfs, fuse.RootID)
	if eno != 0 {
		t.Fatal(eno)
	}
	var st unix.Statfs_t
	unix.Statfs(c.dir, &st)
	k := parse[fuse.Kstatfs](t, p)
	if len(p) != fuse.KstatfsSize || k.Blocks != st.Blocks || k.Bsize != uint32(st.Bsize) || k.Namelen != 255 {
		t.Errorf("statfs %+v", k)
	}

	os.WriteFile(c.path("private"), nil, 0o600)
	os.WriteFile(c.path("public"), nil, 0o644)
	priv := c.mustLookup(fuse.RootID, "private")
	pub := c.mustLookup(fuse.RootID, "public")
	access := func(id uint64, uid uint32, mask uint32) unix.Errno {
		c.uid, c.gid = uid, uid
		eno, _ := c.call(fuse.OpAccess, id, b(fuse.AccessIn{Mask: mask}))
		c.uid, c.gid = 0, 0
		return eno
	}
	wantErr(t, "root R|W private", access(priv.NodeID, 0, unix.R_OK|unix.W_OK), 0)
	wantErr(t, "user R private", access(priv.NodeID, 1000, unix.R_OK), unix.EACCES)
	wantErr(t, "user R public", access(pub.NodeID, 1000, unix.R_OK), 0)
	wantErr(t, "user W public", access(pub.NodeID, 1000, unix.W_OK), unix.EACCES)
	wantErr(t, "root X non-exec", access(pub.NodeID, 0, unix.X_OK), unix.EACCES)
	wantErr(t, "bad mask", access(pub.NodeID, 0, 8), unix.EINVAL)
}

func TestDestroyForgetsAll(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("x"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	c.open(f.NodeID, unix.O_RDONLY)
	if eno, _ := c.call(fuse.OpDestroy, fuse.RootID); eno != 0 {
		t.Fatal(eno)
	}
	if c.fs.inodes.Len() != 1 || c.fs.handles.Len() != 0 {
		t.Errorf("after DESTROY: %d inodes, %d handles", c.fs.inodes.Len(), c.fs.handles.Len())
	}
	c.call(fuse.OpInit, 0, b(fuse.InitIn{Major: 7, Minor: 38}))
	eno, _ := c.call(fuse.OpGetattr, f.NodeID, b(fuse.GetattrIn{}))
	wantErr(t, "old nodeid after remount", eno, unix.ESTALE)
	if e := c.mustLookup(fuse.RootID, "f"); !bytes.Equal(b(e.Attr)[:8], b(f.Attr)[:8]) {
		t.Error("LOOKUP after remount differs")
	}
}
