package e2e

import (
	"bytes"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/daemon"
	"vfsd/tools/fuseclient"
)

func TestInit(t *testing.T) {
	e := Start(t, Options{})
	if e.Init.Major != 7 || e.Init.Minor < 31 {
		t.Fatalf("INIT answered %d.%d", e.Init.Major, e.Init.Minor)
	}
	if e.Init.MaxWrite < 4096 {
		t.Fatalf("INIT max_write %d", e.Init.MaxWrite)
	}
	if e.Init.Flags&^fuseclient.Linux61Flags&^uint64(fuseclient.InitInitReserved) != 0 {
		t.Fatalf("INIT flags %#x include bits the guest did not offer (%#x)", e.Init.Flags, e.Init.Flags&^fuseclient.Linux61Flags)
	}
	t.Logf("INIT: %d.%d flags %#x max_write %d max_pages %d", e.Init.Major, e.Init.Minor, e.Init.Flags, e.Init.MaxWrite, e.Init.MaxPages)
}

func TestLookup(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), []byte("hello"), 0o640)
	ent := lookup(t, e, root, "f")
	checkAttr(t, "LOOKUP f", ent.Attr, hostStat(t, e.Path("f")))
	again := lookup(t, e, root, "f")
	if again.NodeID != ent.NodeID {
		t.Fatalf("second LOOKUP gave nodeid %d, first %d", again.NodeID, ent.NodeID)
	}
	_, err := e.C.Lookup(e.Ctx, root, "missing")
	wantErrno(t, "LOOKUP missing", err, unix.ENOENT)
	must(t, "mkdir", os.Mkdir(e.Path("d"), 0o755))
	writeHost(t, e.Path("d", "g"), nil, 0o600)
	d := lookup(t, e, root, "d")
	g := lookup(t, e, d.NodeID, "g")
	checkAttr(t, "LOOKUP d/g", g.Attr, hostStat(t, e.Path("d", "g")))
	_, err = e.C.Lookup(e.Ctx, ent.NodeID, "x")
	wantErrno(t, "LOOKUP in a file", err, unix.ENOTDIR)
}

func TestForget(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), nil, 0o644)
	ent := lookup(t, e, root, "f")
	lookup(t, e, root, "f")
	must(t, "FORGET", e.C.Forget(e.Ctx, ent.NodeID, 2))
	// The name resolves again to the same file afterwards.
	again := lookup(t, e, root, "f")
	checkAttr(t, "LOOKUP after FORGET", again.Attr, hostStat(t, e.Path("f")))
	if s := e.FE.Queue(0).Stats(); s.Completed != 1 {
		t.Fatalf("hiprio queue completed %d chains, want 1 (the FORGET)", s.Completed)
	}
}

func TestBatchForget(t *testing.T) {
	e := Start(t, Options{})
	var f []fuseclient.ForgetOne
	for _, n := range []string{"a", "b", "c"} {
		writeHost(t, e.Path(n), nil, 0o644)
		ent := lookup(t, e, root, n)
		f = append(f, fuseclient.ForgetOne{NodeID: ent.NodeID, Nlookup: 1})
	}
	must(t, "BATCH_FORGET", e.C.BatchForget(e.Ctx, f))
	for _, n := range []string{"a", "b", "c"} {
		lookup(t, e, root, n)
	}
}

func TestGetattr(t *testing.T) {
	e := Start(t, Options{})
	a, err := e.C.Getattr(e.Ctx, root, nil)
	must(t, "GETATTR root", err)
	checkAttr(t, "GETATTR root", a.Attr, hostStat(t, e.Dir))
	ent, fh := openFile(t, e, "f", []byte("abc"), unix.O_RDONLY)
	must(t, "host chmod", os.Chmod(e.Path("f"), 0o600))
	must(t, "host truncate", os.Truncate(e.Path("f"), 1000))
	a, err = e.C.Getattr(e.Ctx, ent.NodeID, nil)
	must(t, "GETATTR", err)
	checkAttr(t, "GETATTR after host change", a.Attr, hostStat(t, e.Path("f")))
	a, err = e.C.Getattr(e.Ctx, ent.NodeID, &fh)
	must(t, "GETATTR fh", err)
	checkAttr(t, "GETATTR with fh", a.Attr, hostStat(t, e.Path("f")))
}

func TestSetattr(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", []byte("0123456789"), unix.O_RDWR)
	a, err := e.C.Setattr(e.Ctx, ent.NodeID, fuseclient.SetattrIn{Valid: fuseclient.FattrMode, Mode: 0o751})
	must(t, "SETATTR mode", err)
	st := hostStat(t, e.Path("f"))
	if st.Mode&0o7777 != 0o751 {
		t.Fatalf("host mode %o, want 751", st.Mode&0o7777)
	}
	checkAttr(t, "SETATTR mode", a.Attr, st)
	a, err = e.C.Setattr(e.Ctx, ent.NodeID, fuseclient.SetattrIn{Valid: fuseclient.FattrSize | fuseclient.FattrFH, FH: fh, Size: 4})
	must(t, "SETATTR size", err)
	if got := readHost(t, e.Path("f")); string(got) != "0123" {
		t.Fatalf("host content %q after truncate to 4", got)
	}
	checkAttr(t, "SETATTR size", a.Attr, hostStat(t, e.Path("f")))
	_, err = e.C.Setattr(e.Ctx, ent.NodeID, fuseclient.SetattrIn{Valid: fuseclient.FattrUID | fuseclient.FattrGID, UID: 1234, GID: 5678})
	must(t, "SETATTR uid/gid", err)
	st = hostStat(t, e.Path("f"))
	if st.Uid != 1234 || st.Gid != 5678 {
		t.Fatalf("host owner %d:%d, want 1234:5678", st.Uid, st.Gid)
	}
	a, err = e.C.Setattr(e.Ctx, ent.NodeID, fuseclient.SetattrIn{Valid: fuseclient.FattrAtime | fuseclient.FattrMtime,
		Atime: 1000000000, Atimensec: 5, Mtime: 1500000000, Mtimensec: 123456789})
	must(t, "SETATTR times", err)
	st = hostStat(t, e.Path("f"))
	if st.Atim.Sec != 1000000000 || st.Atim.Nsec != 5 || st.Mtim.Sec != 1500000000 || st.Mtim.Nsec != 123456789 {
		t.Fatalf("host times atime %v mtime %v", st.Atim, st.Mtim)
	}
	checkAttr(t, "SETATTR times", a.Attr, st)
	_, err = e.C.Setattr(e.Ctx, ent.NodeID+1000000, fuseclient.SetattrIn{Valid: fuseclient.FattrMode, Mode: 0o600})
	if err == nil {
		t.Fatal("SETATTR on an unknown nodeid succeeded")
	}
}

func TestStatx(t *testing.T) {
	e := Start(t, Options{})
	e.SkipForReference("no FUSE_STATX (FUSE 7.39) in QEMU 7.2's virtiofsd")
	writeHost(t, e.Path("f"), []byte("statx"), 0o640)
	ent := lookup(t, e, root, "f")
	o, err := e.C.Statx(e.Ctx, ent.NodeID, nil, 0, unix.STATX_BASIC_STATS|unix.STATX_BTIME)
	must(t, "STATX", err)
	var sx unix.Statx_t
	must(t, "host statx", unix.Statx(unix.AT_FDCWD, e.Path("f"), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &sx))
	s := o.Stat
	if s.Mask&unix.STATX_BASIC_STATS != unix.STATX_BASIC_STATS {
		t.Fatalf("STATX mask %#x lacks basic stats", s.Mask)
	}
	if s.Ino != sx.Ino || s.Size != sx.Size || s.Mode != sx.Mode || s.Nlink != sx.Nlink || s.UID != sx.Uid ||
		s.Mtime.Sec != sx.Mtime.Sec || s.Mtime.Nsec != sx.Mtime.Nsec {
		t.Fatalf("STATX %+v, host %+v", s, sx)
	}
	if sx.Mask&unix.STATX_BTIME != 0 && s.Mask&unix.STATX_BTIME != 0 && s.Btime.Sec != sx.Btime.Sec {
		t.Fatalf("STATX btime %d, host %d", s.Btime.Sec, sx.Btime.Sec)
	}
}

func TestReadlink(t *testing.T) {
	e := Start(t, Options{})
	must(t, "host symlink", os.Symlink("some/where/else", e.Path("l")))
	ent := lookup(t, e, root, "l")
	checkAttr(t, "LOOKUP symlink", ent.Attr, hostStat(t, e.Path("l")))
	got, err := e.C.Readlink(e.Ctx, ent.NodeID)
	must(t, "READLINK", err)
	if got != "some/where/else" {
		t.Fatalf("READLINK %q", got)
	}
	writeHost(t, e.Path("f"), nil, 0o644)
	_, err = e.C.Readlink(e.Ctx, lookup(t, e, root, "f").NodeID)
	wantErrnoUnguarded(t, e, "READLINK of a file", err, unix.EINVAL)
}

func TestSymlink(t *testing.T) {
	e := Start(t, Options{})
	ent, err := e.C.Symlink(e.Ctx, root, "l", "../target")
	must(t, "SYMLINK", err)
	got, err := os.Readlink(e.Path("l"))
	must(t, "host readlink", err)
	if got != "../target" {
		t.Fatalf("host symlink points at %q", got)
	}
	checkAttr(t, "SYMLINK", ent.Attr, hostStat(t, e.Path("l")))
	_, err = e.C.Symlink(e.Ctx, root, "l", "x")
	wantErrno(t, "SYMLINK over existing", err, unix.EEXIST)
}

func TestMknod(t *testing.T) {
	e := Start(t, Options{})
	ent, err := e.C.Mknod(e.Ctx, root, "fifo", unix.S_IFIFO|0o640, 0, 0)
	must(t, "MKNOD fifo", err)
	st := hostStat(t, e.Path("fifo"))
	if st.Mode != unix.S_IFIFO|0o640 {
		t.Fatalf("host fifo mode %o", st.Mode)
	}
	checkAttr(t, "MKNOD fifo", ent.Attr, st)
	ent, err = e.C.Mknod(e.Ctx, root, "reg", unix.S_IFREG|0o666, 0, 0o022)
	must(t, "MKNOD reg", err)
	st = hostStat(t, e.Path("reg"))
	if st.Mode != unix.S_IFREG|0o644 {
		t.Fatalf("host file mode %o, want 100644 (umask 022 applied)", st.Mode)
	}
	checkAttr(t, "MKNOD reg", ent.Attr, st)
	if e.Kind == "virtiofsd" {
		t.Log("reference virtiofsd: character device nodes not tested (its sandbox drops CAP_MKNOD)")
		return
	}
	ent, err = e.C.Mknod(e.Ctx, root, "null", unix.S_IFCHR|0o600, uint32(unix.Mkdev(1, 3)), 0)
	must(t, "MKNOD chr", err)
	st = hostStat(t, e.Path("null"))
	if st.Mode != unix.S_IFCHR|0o600 || st.Rdev != unix.Mkdev(1, 3) {
		t.Fatalf("host char device mode %o rdev %#x", st.Mode, st.Rdev)
	}
	checkAttr(t, "MKNOD chr", ent.Attr, st)
}

func TestMkdir(t *testing.T) {
	e := Start(t, Options{})
	ent, err := e.C.Mkdir(e.Ctx, root, "d", 0o750, 0)
	must(t, "MKDIR", err)
	st := hostStat(t, e.Path("d"))
	if st.Mode != unix.S_IFDIR|0o750 {
		t.Fatalf("host dir mode %o", st.Mode)
	}
	checkAttr(t, "MKDIR", ent.Attr, st)
	_, err = e.C.Mkdir(e.Ctx, ent.NodeID, "sub", 0o777, 0o027)
	must(t, "MKDIR sub", err)
	if st := hostStat(t, e.Path("d", "sub")); st.Mode != unix.S_IFDIR|0o750 {
		t.Fatalf("host subdir mode %o, want 40750 (umask 027)", st.Mode)
	}
	_, err = e.C.Mkdir(e.Ctx, root, "d", 0o755, 0)
	wantErrno(t, "MKDIR existing", err, unix.EEXIST)
	// Credentials of the request decide the owner.
	pub := pubDir(t, e)
	_, err = e.C.As(fuseclient.Creds{UID: 1000, GID: 1001, PID: 1}).Mkdir(e.Ctx, pub, "owned", 0o777, 0)
	must(t, "MKDIR as 1000", err)
	if st := hostStat(t, e.Path("pub", "owned")); st.Uid != 1000 || st.Gid != 1001 {
		t.Fatalf("host dir owner %d:%d, want 1000:1001", st.Uid, st.Gid)
	}
}

func TestUnlink(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), []byte("x"), 0o644)
	must(t, "host link", os.Link(e.Path("f"), e.Path("g")))
	g := lookup(t, e, root, "g")
	lookup(t, e, root, "f")
	must(t, "UNLINK", e.C.Unlink(e.Ctx, root, "f"))
	hostMissing(t, e.Path("f"))
	if st := hostStat(t, e.Path("g")); st.Nlink != 1 {
		t.Fatalf("host nlink %d after unlinking the other name", st.Nlink)
	}
	a, err := e.C.Getattr(e.Ctx, g.NodeID, nil)
	must(t, "GETATTR g", err)
	if a.Attr.Nlink != 1 {
		t.Fatalf("GETATTR nlink %d", a.Attr.Nlink)
	}
	wantErrnoUnguarded(t, e, "UNLINK missing", e.C.Unlink(e.Ctx, root, "f"), unix.ENOENT)
	must(t, "mkdir", os.Mkdir(e.Path("d"), 0o755))
	lookup(t, e, root, "d")
	wantErrno(t, "UNLINK dir", e.C.Unlink(e.Ctx, root, "d"), unix.EISDIR)
}

func TestRmdir(t *testing.T) {
	e := Start(t, Options{})
	must(t, "mkdir", os.MkdirAll(e.Path("d", "sub"), 0o755))
	d := lookup(t, e, root, "d")
	wantErrno(t, "RMDIR non-empty", e.C.Rmdir(e.Ctx, root, "d"), unix.ENOTEMPTY)
	lookup(t, e, d.NodeID, "sub")
	must(t, "RMDIR sub", e.C.Rmdir(e.Ctx, d.NodeID, "sub"))
	hostMissing(t, e.Path("d", "sub"))
	must(t, "RMDIR d", e.C.Rmdir(e.Ctx, root, "d"))
	hostMissing(t, e.Path("d"))
	writeHost(t, e.Path("f"), nil, 0o644)
	lookup(t, e, root, "f")
	wantErrno(t, "RMDIR file", e.C.Rmdir(e.Ctx, root, "f"), unix.ENOTDIR)
}

func TestRename(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("a"), []byte("A"), 0o644)
	must(t, "mkdir", os.Mkdir(e.Path("d"), 0o755))
	d := lookup(t, e, root, "d")
	lookup(t, e, root, "a")
	must(t, "RENAME", e.C.Rename(e.Ctx, root, "a", d.NodeID, "b"))
	hostMissing(t, e.Path("a"))
	if got := readHost(t, e.Path("d", "b")); string(got) != "A" {
		t.Fatalf("host d/b = %q", got)
	}
	writeHost(t, e.Path("c"), []byte("C"), 0o644)
	lookup(t, e, d.NodeID, "b")
	lookup(t, e, root, "c")
	must(t, "RENAME over existing", e.C.Rename(e.Ctx, d.NodeID, "b", root, "c"))
	if got := readHost(t, e.Path("c")); string(got) != "A" {
		t.Fatalf("host c = %q after rename over it", got)
	}
	wantErrnoUnguarded(t, e, "RENAME missing", e.C.Rename(e.Ctx, root, "nope", root, "x"), unix.ENOENT)
}

func TestRename2(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("a"), []byte("A"), 0o644)
	writeHost(t, e.Path("b"), []byte("B"), 0o644)
	lookup(t, e, root, "a")
	lookup(t, e, root, "b")
	wantErrno(t, "RENAME2 NOREPLACE", e.C.Rename2(e.Ctx, root, "a", root, "b", unix.RENAME_NOREPLACE), unix.EEXIST)
	if got := readHost(t, e.Path("b")); string(got) != "B" {
		t.Fatalf("host b = %q after refused rename", got)
	}
	must(t, "RENAME2 EXCHANGE", e.C.Rename2(e.Ctx, root, "a", root, "b", unix.RENAME_EXCHANGE))
	if a, b := readHost(t, e.Path("a")), readHost(t, e.Path("b")); string(a) != "B" || string(b) != "A" {
		t.Fatalf("after exchange host a=%q b=%q", a, b)
	}
	must(t, "RENAME2 NOREPLACE to new", e.C.Rename2(e.Ctx, root, "a", root, "c", unix.RENAME_NOREPLACE))
	hostMissing(t, e.Path("a"))
	if got := readHost(t, e.Path("c")); string(got) != "B" {
		t.Fatalf("host c = %q", got)
	}
}

func TestLink(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), []byte("x"), 0o644)
	f := lookup(t, e, root, "f")
	must(t, "mkdir", os.Mkdir(e.Path("d"), 0o755))
	d := lookup(t, e, root, "d")
	ent, err := e.C.Link(e.Ctx, f.NodeID, d.NodeID, "g")
	must(t, "LINK", err)
	st := hostStat(t, e.Path("d", "g"))
	if st.Nlink != 2 || st.Ino != hostStat(t, e.Path("f")).Ino {
		t.Fatalf("host link nlink %d ino %d", st.Nlink, st.Ino)
	}
	if ent.NodeID != f.NodeID {
		t.Fatalf("LINK nodeid %d, original %d", ent.NodeID, f.NodeID)
	}
	checkAttr(t, "LINK", ent.Attr, st)
	_, err = e.C.Link(e.Ctx, f.NodeID, d.NodeID, "g")
	wantErrno(t, "LINK existing", err, unix.EEXIST)
}

func TestOpen(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), []byte("content"), 0o644)
	ent := lookup(t, e, root, "f")
	openInode(t, e, ent.NodeID)
	before := fdsOn(t, e, "f")
	o, err := e.C.Open(e.Ctx, ent.NodeID, unix.O_RDWR|unix.O_TRUNC, 0)
	must(t, "OPEN O_TRUNC", err)
	if got := readHost(t, e.Path("f")); len(got) != 0 {
		t.Fatalf("host content %q after O_TRUNC open", got)
	}
	// One more fd in the worker, and its copy in the supervisor's fd store.
	waitFDs(t, e, "f", "OPEN", openedFDs(before))
	must(t, "RELEASE", e.C.Release(e.Ctx, ent.NodeID, o.FH, unix.O_RDWR, 0, 0))
	waitFDs(t, e, "f", "RELEASE", before)
	must(t, "mkdir", os.Mkdir(e.Path("d"), 0o755))
	d := lookup(t, e, root, "d")
	_, err = e.C.Open(e.Ctx, d.NodeID, unix.O_RDWR, 0)
	wantErrno(t, "OPEN dir O_RDWR", err, unix.EISDIR)
	// No permission test here: virtiofs mounts with default_permissions, so
	// the guest kernel checks modes before it sends OPEN.
}

func TestCreate(t *testing.T) {
	e := Start(t, Options{})
	ent, o, err := e.C.Create(e.Ctx, root, "new", unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o640, 0)
	must(t, "CREATE", err)
	st := hostStat(t, e.Path("new"))
	if st.Mode != unix.S_IFREG|0o640 || st.Size != 0 {
		t.Fatalf("host mode %o size %d", st.Mode, st.Size)
	}
	checkAttr(t, "CREATE", ent.Attr, st)
	n, err := e.C.Write(e.Ctx, ent.NodeID, o.FH, 0, []byte("via fh"), 0)
	must(t, "WRITE to created", err)
	if n != 6 || string(readHost(t, e.Path("new"))) != "via fh" {
		t.Fatalf("WRITE %d, host %q", n, readHost(t, e.Path("new")))
	}
	_, _, err = e.C.Create(e.Ctx, root, "new", unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o640, 0)
	wantErrno(t, "CREATE O_EXCL existing", err, unix.EEXIST)
	pub := pubDir(t, e)
	_, _, err = e.C.As(fuseclient.Creds{UID: 1000, GID: 1002, PID: 1}).Create(e.Ctx, pub, "theirs", unix.O_WRONLY|unix.O_CREAT, unix.S_IFREG|0o600, 0)
	must(t, "CREATE as 1000", err)
	if st := hostStat(t, e.Path("pub", "theirs")); st.Uid != 1000 || st.Gid != 1002 {
		t.Fatalf("host owner %d:%d, want 1000:1002", st.Uid, st.Gid)
	}
}

func TestRead(t *testing.T) {
	e := Start(t, Options{})
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	ent, fh := openFile(t, e, "f", data, unix.O_RDONLY)
	buf := make([]byte, 4096)
	n, err := e.C.Read(e.Ctx, ent.NodeID, fh, 100, buf)
	must(t, "READ", err)
	if n != 4096 || !bytes.Equal(buf[:n], data[100:100+4096]) {
		t.Fatalf("READ got %d bytes, mismatch", n)
	}
	n, err = e.C.Read(e.Ctx, ent.NodeID, fh, uint64(len(data)-10), buf)
	must(t, "READ at end", err)
	if n != 10 || !bytes.Equal(buf[:n], data[len(data)-10:]) {
		t.Fatalf("READ at end got %d bytes", n)
	}
	n, err = e.C.Read(e.Ctx, ent.NodeID, fh, uint64(len(data)+100), buf)
	must(t, "READ past EOF", err)
	if n != 0 {
		t.Fatalf("READ past EOF got %d bytes", n)
	}
}

func TestWrite(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", []byte("xxxxxxxxxx"), unix.O_RDWR)
	n, err := e.C.Write(e.Ctx, ent.NodeID, fh, 2, []byte("abc"), 0)
	must(t, "WRITE", err)
	if n != 3 {
		t.Fatalf("WRITE reported %d", n)
	}
	if got := readHost(t, e.Path("f")); string(got) != "xxabcxxxxx" {
		t.Fatalf("host content %q", got)
	}
	n, err = e.C.Write(e.Ctx, ent.NodeID, fh, 20, []byte("z"), 0)
	must(t, "WRITE past EOF", err)
	if got := readHost(t, e.Path("f")); len(got) != 21 || got[20] != 'z' || got[15] != 0 {
		t.Fatalf("host content %q after write past EOF", got)
	}
	// Read-only open refuses writes.
	o, err := e.C.Open(e.Ctx, ent.NodeID, unix.O_RDONLY, 0)
	must(t, "OPEN ro", err)
	_, err = e.C.Write(e.Ctx, ent.NodeID, o.FH, 0, []byte("no"), 0)
	wantErrno(t, "WRITE to O_RDONLY handle", err, unix.EBADF)
}

func TestFlushRelease(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), nil, 0o644)
	ent := lookup(t, e, root, "f")
	openInode(t, e, ent.NodeID)
	closed := fdsOn(t, e, "f")
	o, err := e.C.Open(e.Ctx, ent.NodeID, unix.O_RDWR, 0)
	must(t, "OPEN", err)
	fh := o.FH
	_, err = e.C.Write(e.Ctx, ent.NodeID, fh, 0, []byte("data"), 0)
	must(t, "WRITE", err)
	must(t, "FLUSH", e.C.Flush(e.Ctx, ent.NodeID, fh, 0x1234))
	if got := readHost(t, e.Path("f")); string(got) != "data" {
		t.Fatalf("host content %q after FLUSH", got)
	}
	// One fd in the worker and (within lazyMax) its copy in the fd store.
	waitFDs(t, e, "f", "OPEN", openedFDs(closed))
	must(t, "RELEASE", e.C.Release(e.Ctx, ent.NodeID, fh, unix.O_RDWR, fuseclient.ReleaseFlush, 0x1234))
	// The worker closes its fd and the fd store drops its copy.
	waitFDs(t, e, "f", "RELEASE", closed)
}

// fdsOn counts the daemon's fds on the shared file name, per process.
func fdsOn(t *testing.T, e *Env, name string) daemon.FDCount {
	t.Helper()
	c, err := e.Daemon.FDsSplit(e.Path(name))
	must(t, "count fds", err)
	return c
}

// openInode makes the daemon open node's inode (its O_PATH fd) if it has
// not yet: a GETATTR. vfsd opens a new inode at its first use, so that an
// fd count taken after it changes only by what the next request opens.
func openInode(t *testing.T, e *Env, node uint64) {
	t.Helper()
	_, err := e.C.Getattr(e.Ctx, node, nil)
	must(t, "GETATTR", err)
}

// openedFDs is what an OPEN adds to c: an fd in the worker and, supervised,
// its copy in the supervisor's fd store.
func openedFDs(c daemon.FDCount) daemon.FDCount {
	c.Worker++
	if c.Supervised {
		c.Rest++
	}
	return c
}

// waitFDs waits (2s at most) until the daemon's fds on name are want: the
// worker's change with the reply, the fd store's follows by a message.
func waitFDs(t *testing.T, e *Env, name, after string, want daemon.FDCount) {
	t.Helper()
	var got daemon.FDCount
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if got = fdsOn(t, e, name); got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fds on %s after %s: %+v, want %+v", name, after, got, want)
		}
	}
}

func TestFsync(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", nil, unix.O_RDWR)
	_, err := e.C.Write(e.Ctx, ent.NodeID, fh, 0, []byte("durable"), 0)
	must(t, "WRITE", err)
	must(t, "FSYNC", e.C.Fsync(e.Ctx, ent.NodeID, fh, false))
	must(t, "FSYNC datasync", e.C.Fsync(e.Ctx, ent.NodeID, fh, true))
	if got := readHost(t, e.Path("f")); string(got) != "durable" {
		t.Fatalf("host content %q", got)
	}
}

func TestFsyncdir(t *testing.T) {
	e := Start(t, Options{})
	o, err := e.C.Opendir(e.Ctx, root, unix.O_RDONLY)
	must(t, "OPENDIR", err)
	_, err = e.C.Mkdir(e.Ctx, root, "d", 0o755, 0)
	must(t, "MKDIR", err)
	must(t, "FSYNCDIR", e.C.Fsyncdir(e.Ctx, root, o.FH, false))
	hostStat(t, e.Path("d"))
	must(t, "RELEASEDIR", e.C.Releasedir(e.Ctx, root, o.FH))
}

func TestReaddir(t *testing.T) {
	e := Start(t, Options{})
	names := []string{"a", "bb", "ccc", "with space", "ü"}
	for _, n := range names {
		writeHost(t, e.Path(n), nil, 0o644)
	}
	must(t, "mkdir", os.Mkdir(e.Path("dir"), 0o755))
	names = append(names, "dir")
	o, err := e.C.Opendir(e.Ctx, root, unix.O_RDONLY)
	must(t, "OPENDIR", err)
	ents, err := e.C.ReaddirAll(e.Ctx, root, o.FH, 512)
	must(t, "READDIR", err)
	var got []string
	for _, d := range ents {
		if d.Name == "." || d.Name == ".." {
			continue
		}
		got = append(got, d.Name)
		st := hostStat(t, e.Path(d.Name))
		if d.Ino != st.Ino || d.Type != st.Mode&unix.S_IFMT>>12 {
			t.Fatalf("READDIR %q: ino %d type %d; host ino %d mode %o", d.Name, d.Ino, d.Type, st.Ino, st.Mode)
		}
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Fatalf("READDIR names %q, host %q", got, names)
	}
	must(t, "RELEASEDIR", e.C.Releasedir(e.Ctx, root, o.FH))
}

func TestReaddirplus1000(t *testing.T) {
	e := Start(t, Options{})
	must(t, "mkdir", os.Mkdir(e.Path("big"), 0o755))
	want := map[string]uint64{}
	for i := 0; i < 1000; i++ {
		n := "entry-" + string(rune('a'+i%26)) + "-" + itoa(i)
		writeHost(t, e.Path("big", n), nil, 0o644)
		want[n] = hostStat(t, e.Path("big", n)).Ino
	}
	d := lookup(t, e, root, "big")
	o, err := e.C.Opendir(e.Ctx, d.NodeID, unix.O_RDONLY)
	must(t, "OPENDIR", err)
	ents, err := e.C.ReaddirplusAll(e.Ctx, d.NodeID, o.FH, 4096)
	must(t, "READDIRPLUS", err)
	seen := map[string]bool{}
	var forget []fuseclient.ForgetOne
	for _, p := range ents {
		if p.Name == "." || p.Name == ".." {
			continue
		}
		if seen[p.Name] {
			t.Fatalf("READDIRPLUS returned %q twice", p.Name)
		}
		seen[p.Name] = true
		ino, ok := want[p.Name]
		if !ok {
			t.Fatalf("READDIRPLUS returned unknown %q", p.Name)
		}
		if p.Ino != ino || p.Entry.Attr.Ino != ino || p.Entry.NodeID == 0 {
			t.Fatalf("READDIRPLUS %q: ino %d attr ino %d nodeid %d, host ino %d", p.Name, p.Ino, p.Entry.Attr.Ino, p.Entry.NodeID, ino)
		}
		if p.Entry.Attr.Mode != unix.S_IFREG|0o644 {
			t.Fatalf("READDIRPLUS %q mode %o", p.Name, p.Entry.Attr.Mode)
		}
		forget = append(forget, fuseclient.ForgetOne{NodeID: p.Entry.NodeID, Nlookup: 1})
	}
	if len(seen) != 1000 {
		t.Fatalf("READDIRPLUS returned %d entries, want 1000", len(seen))
	}
	must(t, "RELEASEDIR", e.C.Releasedir(e.Ctx, d.NodeID, o.FH))
	must(t, "BATCH_FORGET", e.C.BatchForget(e.Ctx, forget))
}

func itoa(i int) string {
	return string(append([]byte(nil), []byte(func() string { return fmtInt(i) }())...))
}

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestStatfs(t *testing.T) {
	e := Start(t, Options{})
	s, err := e.C.Statfs(e.Ctx, root)
	must(t, "STATFS", err)
	var h unix.Statfs_t
	must(t, "host statfs", unix.Statfs(e.Dir, &h))
	if s.Bsize != uint32(h.Bsize) || s.Namelen != uint32(h.Namelen) || s.Blocks != h.Blocks || s.Files != h.Files {
		t.Fatalf("STATFS %+v, host %+v", s, h)
	}
}

func TestAccess(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("ro"), nil, 0o444)
	ent := lookup(t, e, root, "ro")
	err := e.C.Access(e.Ctx, ent.NodeID, unix.R_OK)
	if err == unix.ENOSYS {
		e.SkipForReference("no FUSE_ACCESS handler in QEMU 7.2's virtiofsd (ENOSYS)")
	}
	must(t, "ACCESS R_OK", err)
	user := e.C.As(fuseclient.Creds{UID: 1000, GID: 1000, PID: 1})
	wantErrno(t, "ACCESS W_OK on 0444 as uid 1000", user.Access(e.Ctx, ent.NodeID, unix.W_OK), unix.EACCES)
	must(t, "ACCESS R_OK as uid 1000", user.Access(e.Ctx, ent.NodeID, unix.R_OK))
}

func TestFallocate(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", nil, unix.O_RDWR)
	must(t, "FALLOCATE", e.C.Fallocate(e.Ctx, ent.NodeID, fh, 0, 1<<20, 0))
	st := hostStat(t, e.Path("f"))
	if st.Size != 1<<20 || st.Blocks*512 < 1<<20 {
		t.Fatalf("host size %d blocks %d after FALLOCATE 1 MiB", st.Size, st.Blocks)
	}
	must(t, "FALLOCATE punch", e.C.Fallocate(e.Ctx, ent.NodeID, fh, 0, 512<<10, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE))
	st2 := hostStat(t, e.Path("f"))
	if st2.Size != 1<<20 || st2.Blocks >= st.Blocks {
		t.Fatalf("host size %d blocks %d (before %d) after punching a hole", st2.Size, st2.Blocks, st.Blocks)
	}
}

func TestLseek(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", nil, unix.O_RDWR)
	// A file with data at [1 MiB, 1 MiB+4 KiB) and holes around it.
	_, err := e.C.Write(e.Ctx, ent.NodeID, fh, 1<<20, bytes.Repeat([]byte{1}, 4096), 0)
	must(t, "WRITE", err)
	must(t, "truncate", os.Truncate(e.Path("f"), 4<<20))
	off, err := e.C.Lseek(e.Ctx, ent.NodeID, fh, 0, unix.SEEK_DATA)
	must(t, "LSEEK SEEK_DATA", err)
	fd, err := unix.Open(e.Path("f"), unix.O_RDONLY, 0)
	must(t, "host open", err)
	defer unix.Close(fd)
	hostData, _ := unix.Seek(fd, 0, unix.SEEK_DATA)
	if off != uint64(hostData) {
		t.Fatalf("SEEK_DATA %d, host %d", off, hostData)
	}
	off, err = e.C.Lseek(e.Ctx, ent.NodeID, fh, 1<<20, unix.SEEK_HOLE)
	must(t, "LSEEK SEEK_HOLE", err)
	hostHole, _ := unix.Seek(fd, 1<<20, unix.SEEK_HOLE)
	if off != uint64(hostHole) {
		t.Fatalf("SEEK_HOLE %d, host %d", off, hostHole)
	}
	_, err = e.C.Lseek(e.Ctx, ent.NodeID, fh, 8<<20, unix.SEEK_DATA)
	wantErrno(t, "SEEK_DATA past EOF", err, unix.ENXIO)
}

func TestCopyFileRange(t *testing.T) {
	e := Start(t, Options{})
	src, sfh := openFile(t, e, "src", []byte("0123456789"), unix.O_RDONLY)
	dst, dfh := openFile(t, e, "dst", []byte("abcdefghij"), unix.O_RDWR)
	n, err := e.C.CopyFileRange(e.Ctx, src.NodeID, sfh, 2, dst.NodeID, dfh, 5, 4, 0)
	if err == unix.ENOSYS {
		e.SkipForReference("no FUSE_COPY_FILE_RANGE")
	}
	must(t, "COPY_FILE_RANGE", err)
	if n != 4 {
		t.Fatalf("COPY_FILE_RANGE copied %d", n)
	}
	if got := readHost(t, e.Path("dst")); string(got) != "abcde2345j" {
		t.Fatalf("host dst %q", got)
	}
}

func TestSyncfs(t *testing.T) {
	e := Start(t, Options{})
	err := e.C.Syncfs(e.Ctx, root)
	if err == unix.ENOSYS {
		e.SkipForReference("no FUSE_SYNCFS (ENOSYS)")
	}
	must(t, "SYNCFS", err)
}

func TestTmpfile(t *testing.T) {
	e := Start(t, Options{})
	ent, o, err := e.C.Tmpfile(e.Ctx, root, unix.O_RDWR, unix.S_IFREG|0o600, 0)
	if err == unix.ENOSYS || err == unix.EOPNOTSUPP {
		e.SkipForReference("no FUSE_TMPFILE (FUSE 7.37) in QEMU 7.2's virtiofsd")
	}
	must(t, "TMPFILE", err)
	if ents, _ := os.ReadDir(e.Dir); len(ents) != 0 {
		t.Fatalf("host directory has %d entries after TMPFILE", len(ents))
	}
	_, err = e.C.Write(e.Ctx, ent.NodeID, o.FH, 0, []byte("anon"), 0)
	must(t, "WRITE tmpfile", err)
	_, err = e.C.Link(e.Ctx, ent.NodeID, root, "named")
	must(t, "LINK tmpfile", err)
	if got := readHost(t, e.Path("named")); string(got) != "anon" {
		t.Fatalf("host named = %q", got)
	}
	if st := hostStat(t, e.Path("named")); st.Mode != unix.S_IFREG|0o600 || st.Ino != ent.Attr.Ino {
		t.Fatalf("host mode %o ino %d, TMPFILE ino %d", st.Mode, st.Ino, ent.Attr.Ino)
	}
}

func TestXattr(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), nil, 0o644)
	ent := lookup(t, e, root, "f")
	must(t, "SETXATTR", e.C.Setxattr(e.Ctx, ent.NodeID, "user.color", []byte("blue"), 0))
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(e.Path("f"), "user.color", buf)
	must(t, "host getxattr", err)
	if string(buf[:n]) != "blue" {
		t.Fatalf("host xattr %q", buf[:n])
	}
	wantErrno(t, "SETXATTR XATTR_CREATE existing", e.C.Setxattr(e.Ctx, ent.NodeID, "user.color", []byte("red"), unix.XATTR_CREATE), unix.EEXIST)
	must(t, "host setxattr", unix.Lsetxattr(e.Path("f"), "user.shape", []byte("round"), 0))
	_, size, err := e.C.Getxattr(e.Ctx, ent.NodeID, "user.shape", 0)
	must(t, "GETXATTR size", err)
	if size != 5 {
		t.Fatalf("GETXATTR size %d", size)
	}
	v, _, err := e.C.Getxattr(e.Ctx, ent.NodeID, "user.shape", 64)
	must(t, "GETXATTR", err)
	if string(v) != "round" {
		t.Fatalf("GETXATTR %q", v)
	}
	_, _, err = e.C.Getxattr(e.Ctx, ent.NodeID, "user.shape", 2)
	wantErrno(t, "GETXATTR small buffer", err, unix.ERANGE)
	_, _, err = e.C.Getxattr(e.Ctx, ent.NodeID, "user.none", 64)
	wantErrno(t, "GETXATTR missing", err, unix.ENODATA)
	_, lsize, err := e.C.Listxattr(e.Ctx, ent.NodeID, 0)
	must(t, "LISTXATTR size", err)
	names, _, err := e.C.Listxattr(e.Ctx, ent.NodeID, lsize)
	must(t, "LISTXATTR", err)
	slices.Sort(names)
	if !slices.Contains(names, "user.color") || !slices.Contains(names, "user.shape") {
		t.Fatalf("LISTXATTR %q", names)
	}
	must(t, "REMOVEXATTR", e.C.Removexattr(e.Ctx, ent.NodeID, "user.color"))
	_, err = unix.Lgetxattr(e.Path("f"), "user.color", buf)
	wantErrno(t, "host getxattr after REMOVEXATTR", err, unix.ENODATA)
	wantErrno(t, "REMOVEXATTR missing", e.C.Removexattr(e.Ctx, ent.NodeID, "user.color"), unix.ENODATA)
}
