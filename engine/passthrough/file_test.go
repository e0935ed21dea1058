package passthrough

import (
	"bytes"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

func TestOpenReadWrite(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("hello world"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)

	got, eno := c.read(f.NodeID, fh, 6, 100)
	if eno != 0 || string(got) != "world" {
		t.Fatalf("READ %v %q", eno, got)
	}
	got, _ = c.read(f.NodeID, fh, 100, 10)
	if len(got) != 0 {
		t.Errorf("READ past EOF: %q", got)
	}
	// The reply is bounded by the guest's buffer.
	eno, p := c.callOut(fuse.OutHeaderSize+3, fuse.OpRead, f.NodeID, b(fuse.ReadIn{Fh: fh, Size: 100}))
	if eno != 0 || string(p) != "hel" {
		t.Errorf("READ into 3 bytes: %v %q", eno, p)
	}

	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB across segments
	n, eno := c.write(f.NodeID, fh, 5, big, 0)
	if eno != 0 || n != uint32(len(big)) {
		t.Fatalf("WRITE %d %v", n, eno)
	}
	host, _ := os.ReadFile(c.path("f"))
	if !bytes.Equal(host[:5], []byte("hello")) || !bytes.Equal(host[5:], big) {
		t.Fatal("host content differs after WRITE")
	}
	eno, _ = c.call(fuse.OpWrite, f.NodeID, b(fuse.WriteIn{Fh: fh, Size: 10}), []byte("short"))
	wantErr(t, "WRITE size > data", eno, unix.EINVAL)
	_, eno = c.write(f.NodeID, fh, 1<<63, []byte("x"), 0)
	wantErr(t, "WRITE offset > OFFSET_MAX", eno, unix.EINVAL)
	_, eno = c.read(f.NodeID, fh, 1<<63, 1)
	wantErr(t, "READ offset > OFFSET_MAX", eno, unix.EINVAL)

	// Read-only handle refuses writes with the host's errno.
	ro := c.open(f.NodeID, unix.O_RDONLY)
	_, eno = c.write(f.NodeID, ro, 0, []byte("x"), 0)
	wantErr(t, "WRITE on O_RDONLY", eno, unix.EBADF)

	// O_APPEND: writes land at the end whatever offset the guest says.
	ap := c.open(f.NodeID, unix.O_WRONLY|unix.O_APPEND)
	c.write(f.NodeID, ap, 0, []byte("TAIL"), 0)
	host, _ = os.ReadFile(c.path("f"))
	if !bytes.HasSuffix(host, []byte("TAIL")) || len(host) != 5+len(big)+4 {
		t.Error("O_APPEND write did not append")
	}

	// O_TRUNC with ATOMIC_O_TRUNC, and KILL_SUIDGID on open-truncate.
	unix.Chmod(c.path("f"), 0o4755)
	eno, p = c.call(fuse.OpOpen, f.NodeID, b(fuse.OpenIn{Flags: unix.O_WRONLY | unix.O_TRUNC, OpenFlags: fuse.OpenKillSuidgid}))
	if eno != 0 {
		t.Fatal(eno)
	}
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: parse[fuse.OpenOut](t, p).Fh}))
	if st := hostStat(t, c.path("f")); st.Size != 0 || st.Mode&unix.S_ISUID != 0 {
		t.Errorf("O_TRUNC + KILL_SUIDGID: size %d mode %o", st.Size, st.Mode)
	}
	// WRITE with KILL_SUIDGID.
	unix.Chmod(c.path("f"), 0o6775)
	c.write(f.NodeID, fh, 0, []byte("x"), fuse.WriteKillSuidgid)
	if st := hostStat(t, c.path("f")); st.Mode&0o7777 != 0o775 {
		t.Errorf("WRITE + KILL_SUIDGID: mode %o", st.Mode)
	}
	unix.Chmod(c.path("f"), 0o2755&^0o010) // sgid without group exec: kept
	c.write(f.NodeID, fh, 0, []byte("x"), fuse.WriteKillSuidgid)
	if st := hostStat(t, c.path("f")); st.Mode&0o7777 != 0o2745 {
		t.Errorf("WRITE + KILL_SUIDGID, sgid without g+x: mode %o", st.Mode)
	}

	// OPEN refuses O_PATH/O_CREAT smuggling and bad access modes.
	eno, _ = c.call(fuse.OpOpen, f.NodeID, b(fuse.OpenIn{Flags: unix.O_ACCMODE}))
	wantErr(t, "OPEN O_ACCMODE", eno, unix.EINVAL)
	fh2 := c.open(f.NodeID, unix.O_RDONLY|unix.O_PATH|unix.O_CREAT|unix.O_DIRECTORY)
	if _, eno := c.read(f.NodeID, fh2, 0, 1); eno != 0 {
		t.Errorf("smuggled flags changed the open: %v", eno)
	}
	os.Mkdir(c.path("d"), 0o755)
	d := c.mustLookup(fuse.RootID, "d")
	eno, _ = c.call(fuse.OpOpen, d.NodeID, b(fuse.OpenIn{}))
	wantErr(t, "OPEN of a dir", eno, unix.EISDIR)

	for _, h := range []uint64{fh, ro, ap, fh2} {
		if eno, _ := c.call(fuse.OpFlush, f.NodeID, b(fuse.FlushIn{Fh: h})); eno != 0 {
			t.Error("FLUSH", eno)
		}
		for _, fl := range []uint32{0, fuse.FsyncFdatasync} {
			if eno, _ := c.call(fuse.OpFsync, f.NodeID, b(fuse.FsyncIn{Fh: h, FsyncFlags: fl})); eno != 0 {
				t.Error("FSYNC", eno)
			}
		}
		if eno, _ := c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: h, ReleaseFlags: fuse.ReleaseFlush})); eno != 0 {
			t.Error("RELEASE", eno)
		}
	}
	if c.fs.handles.Len() != 0 {
		t.Errorf("%d handles left", c.fs.handles.Len())
	}
	eno, _ = c.call(fuse.OpFlush, f.NodeID, b(fuse.FlushIn{Fh: fh}))
	wantErr(t, "FLUSH released", eno, unix.EBADF)
}

func TestWritebackOpen(t *testing.T) {
	c := newTFS(t, Options{Writeback: true})
	os.WriteFile(c.path("f"), []byte("abc"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	// With writeback the guest may read what it opened write-only, and
	// sends explicit offsets: O_APPEND is dropped on the host.
	fh := c.open(f.NodeID, unix.O_WRONLY|unix.O_APPEND)
	if got, eno := c.read(f.NodeID, fh, 0, 10); eno != 0 || string(got) != "abc" {
		t.Errorf("READ of a write-only open with writeback: %v %q", eno, got)
	}
	c.write(f.NodeID, fh, 1, []byte("X"), fuse.WriteCache)
	if got, _ := os.ReadFile(c.path("f")); string(got) != "aXc" {
		t.Errorf("writeback write at offset: %q", got)
	}
}

func TestCacheModes(t *testing.T) {
	for _, tc := range []struct {
		mode      string
		ttl       uint64
		fileFlags uint32
	}{{"auto", 1, 0}, {"always", 86400, fuse.FopenKeepCache}, {"never", 0, fuse.FopenDirectIO}, {"metadata", 86400, fuse.FopenDirectIO}} {
		c := newTFS(t, Options{Cache: tc.mode})
		os.WriteFile(c.path("f"), nil, 0o644)
		e := c.mustLookup(fuse.RootID, "f")
		if e.EntryValid != tc.ttl || e.AttrValid != tc.ttl {
			t.Errorf("%s: ttl %d/%d", tc.mode, e.EntryValid, e.AttrValid)
		}
		_, p := c.call(fuse.OpOpen, e.NodeID, b(fuse.OpenIn{}))
		if got := parse[fuse.OpenOut](t, p).OpenFlags; got != tc.fileFlags {
			t.Errorf("%s: open flags %#x", tc.mode, got)
		}
	}
	if _, err := New(Options{Root: t.TempDir(), Cache: "sometimes"}); err == nil {
		t.Error("unknown cache mode accepted")
	}
}

func TestCreateAndTmpfile(t *testing.T) {
	c := newTFS(t, Options{})
	c.uid, c.gid = 4321, 8765
	eno, p := c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR | unix.O_EXCL, Mode: 0o666, Umask: 0o022}), name("new"))
	if eno != 0 {
		t.Fatal(eno)
	}
	if len(p) != fuse.EntryOutSize+fuse.OpenOutSize {
		t.Fatalf("CREATE payload %d", len(p))
	}
	e := parse[fuse.EntryOut](t, p)
	o := parse[fuse.OpenOut](t, p[fuse.EntryOutSize:])
	st := hostStat(t, c.path("new"))
	if st.Mode != unix.S_IFREG|0o644 || st.Uid != 4321 || st.Gid != 8765 || e.Attr.Ino != st.Ino {
		t.Errorf("CREATE: mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
	}
	c.write(e.NodeID, o.Fh, 0, []byte("data"), 0)
	if got, _ := os.ReadFile(c.path("new")); string(got) != "data" {
		t.Errorf("write through CREATE's fh: %q", got)
	}
	eno, _ = c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR | unix.O_EXCL, Mode: 0o666}), name("new"))
	wantErr(t, "CREATE O_EXCL existing", eno, unix.EEXIST)
	if n, _ := c.nlookup(e.NodeID); n != 1 {
		t.Errorf("CREATE references %d", n)
	}

	// TMPFILE: an unnamed file, owned by the requester, linkable later.
	eno, p = c.call(fuse.OpTmpfile, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o600}), name("/"))
	if eno != 0 {
		t.Fatal(eno)
	}
	te := parse[fuse.EntryOut](t, p)
	to := parse[fuse.OpenOut](t, p[fuse.EntryOutSize:])
	if te.Attr.Nlink != 0 || te.Attr.UID != 4321 || te.Attr.Mode != unix.S_IFREG|0o600 {
		t.Errorf("TMPFILE attr %+v", te.Attr)
	}
	c.write(te.NodeID, to.Fh, 0, []byte("tmp"), 0)
	c.uid, c.gid = 0, 0
	if eno, _ := c.call(fuse.OpLink, fuse.RootID, b(fuse.LinkIn{Oldnodeid: te.NodeID}), name("linked")); eno != 0 {
		t.Fatal("LINK of a tmpfile:", eno)
	}
	if got, _ := os.ReadFile(c.path("linked")); string(got) != "tmp" {
		t.Errorf("linked tmpfile content %q", got)
	}
	eno, _ = c.call(fuse.OpTmpfile, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDONLY, Mode: 0o600}), name("/"))
	wantErr(t, "TMPFILE read-only", eno, unix.EINVAL)
}

// CREATE without O_EXCL of a name that exists opens it only if it is a
// regular file: open(2) would block the queue thread on a FIFO with no peer
// (found by FuzzHandle: a FIFO from its MKNOD seed, then CREATE O_RDONLY of
// the same name) and would open a device node on the host.
func TestCreateExisting(t *testing.T) {
	c := newTFS(t, Options{})
	create := func(nm string, flags uint32) (unix.Errno, []byte) {
		return c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: flags, Mode: 0o644}), name(nm))
	}
	release := func(p []byte) {
		e := parse[fuse.EntryOut](t, p)
		c.call(fuse.OpRelease, e.NodeID, b(fuse.ReleaseIn{Fh: parse[fuse.OpenOut](t, p[fuse.EntryOutSize:]).Fh}))
	}

	if err := unix.Mkfifo(c.path("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Should CREATE block on the FIFO, a writer opened after 3 s lets it go.
	unblock := time.AfterFunc(3*time.Second, func() {
		if fd, err := unix.Open(c.path("fifo"), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		}
	})
	start := time.Now()
	eno, _ := create("fifo", unix.O_RDONLY)
	unblock.Stop()
	if took := time.Since(start); eno != unix.ENXIO || took > 2*time.Second {
		t.Errorf("CREATE of an existing FIFO: %v after %v, want ENXIO at once", eno, took.Round(time.Millisecond))
	}

	switch err := unix.Mknod(c.path("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err {
	case nil:
		eno, p := create("null", unix.O_RDWR)
		if eno == 0 {
			release(p)
		}
		wantErr(t, "CREATE of an existing device node", eno, unix.ENXIO)
	case unix.EPERM:
		t.Log("no CAP_MKNOD: device node case not run")
	default:
		t.Fatal(err)
	}

	os.Mkdir(c.path("dir"), 0o755)
	eno, _ = create("dir", unix.O_RDWR)
	wantErr(t, "CREATE of an existing directory", eno, unix.EISDIR)
	os.Symlink("target", c.path("link"))
	eno, _ = create("link", unix.O_RDWR)
	wantErr(t, "CREATE of an existing symlink", eno, unix.ELOOP)

	// A regular file is opened as open(2) would: kept, or truncated with
	// O_TRUNC; with O_EXCL it is EEXIST.
	os.WriteFile(c.path("file"), []byte("data"), 0o644)
	eno, p := create("file", unix.O_RDWR)
	if eno != 0 {
		t.Fatalf("CREATE of an existing file: %v", eno)
	}
	release(p)
	if got, _ := os.ReadFile(c.path("file")); string(got) != "data" {
		t.Errorf("CREATE without O_TRUNC changed the file: %q", got)
	}
	eno, p = create("file", unix.O_WRONLY|unix.O_TRUNC)
	if eno != 0 {
		t.Fatalf("CREATE O_TRUNC of an existing file: %v", eno)
	}
	release(p)
	if st := hostStat(t, c.path("file")); st.Size != 0 {
		t.Errorf("CREATE O_TRUNC left %d bytes", st.Size)
	}
	eno, _ = create("file", unix.O_RDWR|unix.O_EXCL)
	wantErr(t, "CREATE O_EXCL of an existing file", eno, unix.EEXIST)

	// The guest's access is checked on the existing file, as open(2) does.
	os.WriteFile(c.path("ro"), []byte("x"), 0o444)
	c.uid, c.gid = 4321, 8765
	eno, _ = create("ro", unix.O_RDWR)
	wantErr(t, "CREATE O_RDWR of another user's read-only file", eno, unix.EACCES)
}

func TestFallocateLseekCopy(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), bytes.Repeat([]byte{'x'}, 1<<20), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)

	eno, _ := c.call(fuse.OpFallocate, f.NodeID, b(fuse.FallocateIn{Fh: fh, Offset: 64 << 10, Length: 128 << 10,
		Mode: unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE}))
	if eno != 0 {
		t.Fatal(eno)
	}
	host, _ := os.ReadFile(c.path("f"))
	if len(host) != 1<<20 || host[64<<10] != 0 || host[192<<10-1] != 0 || host[192<<10] != 'x' {
		t.Error("PUNCH_HOLE did not zero the range or changed the size")
	}
	seek := func(off uint64, whence uint32) (uint64, unix.Errno) {
		eno, p := c.call(fuse.OpLseek, f.NodeID, b(fuse.LseekIn{Fh: fh, Offset: off, Whence: whence}))
		if eno != 0 {
			return 0, eno
		}
		return parse[fuse.LseekOut](t, p).Offset, 0
	}
	if off, eno := seek(0, unix.SEEK_HOLE); eno != 0 || off != 64<<10 {
		t.Errorf("SEEK_HOLE: %d %v", off, eno)
	}
	if off, eno := seek(64<<10, unix.SEEK_DATA); eno != 0 || off != 192<<10 {
		t.Errorf("SEEK_DATA: %d %v", off, eno)
	}
	_, eno = seek(2<<20, unix.SEEK_DATA)
	wantErr(t, "SEEK_DATA past EOF", eno, unix.ENXIO)
	_, eno = seek(0, 9)
	wantErr(t, "bad whence", eno, unix.EINVAL)

	eno, _ = c.call(fuse.OpFallocate, f.NodeID, b(fuse.FallocateIn{Fh: fh, Offset: 1 << 20, Length: 1 << 20}))
	if eno != 0 || hostStat(t, c.path("f")).Size != 2<<20 {
		t.Errorf("FALLOCATE extend: %v", eno)
	}
	eno, _ = c.call(fuse.OpFallocate, f.NodeID, b(fuse.FallocateIn{Fh: fh, Length: 1 << 63}))
	wantErr(t, "FALLOCATE huge", eno, unix.EINVAL)

	os.WriteFile(c.path("g"), nil, 0o644)
	g := c.mustLookup(fuse.RootID, "g")
	gh := c.open(g.NodeID, unix.O_RDWR)
	eno, p := c.call(fuse.OpCopyFileRange, f.NodeID, b(fuse.CopyFileRangeIn{FhIn: fh, OffIn: 190 << 10, NodeidOut: g.NodeID, FhOut: gh, OffOut: 10, Len: 4096}))
	if eno != 0 || parse[fuse.WriteOut](t, p).Size != 4096 {
		t.Fatalf("COPY_FILE_RANGE %v", eno)
	}
	got, _ := os.ReadFile(c.path("g"))
	if len(got) != 10+4096 || got[10] != 0 || got[10+2048] != 'x' {
		t.Error("COPY_FILE_RANGE content")
	}
	eno, _ = c.call(fuse.OpCopyFileRange, f.NodeID, b(fuse.CopyFileRangeIn{FhIn: fh, FhOut: gh, Len: 1, Flags: 1}))
	wantErr(t, "COPY_FILE_RANGE flags", eno, unix.EINVAL)
	eno, _ = c.call(fuse.OpCopyFileRange, f.NodeID, b(fuse.CopyFileRangeIn{FhIn: fh, FhOut: 99, Len: 1}))
	wantErr(t, "COPY_FILE_RANGE bad fh", eno, unix.EBADF)

	if eno, _ := c.call(fuse.OpSyncfs, fuse.RootID, b(fuse.SyncfsIn{})); eno != 0 {
		t.Error("SYNCFS", eno)
	}
	eno, _ = c.call(fuse.OpSyncfs, f.NodeID, b(fuse.SyncfsIn{}))
	wantErr(t, "SYNCFS on a file", eno, unix.ENOTDIR)
}

// readdirAll lists a directory with small READDIR(PLUS) buffers, following
// the offsets, and returns the names and entries in order.
func readdirAll(t *testing.T, c *tfs, dir uint64, plus bool, bufSize uint32) ([]string, []fuse.EntryOut) {
	t.Helper()
	dh := c.opendir(dir)
	defer c.call(fuse.OpReleasedir, dir, b(fuse.ReleaseIn{Fh: dh}))
	op := uint32(fuse.OpReaddir)
	if plus {
		op = fuse.OpReaddirplus
	}
	var names []string
	var ents []fuse.EntryOut
	off := uint64(0)
	for calls := 0; ; calls++ {
		if calls > 1000 {
			t.Fatal("READDIR does not end")
		}
		eno, p := c.call(op, dir, b(fuse.ReadIn{Fh: dh, Offset: off, Size: bufSize}))
		if eno != 0 {
			t.Fatal(eno)
		}
		if len(p) == 0 {
			return names, ents
		}
		for len(p) > 0 {
			var e fuse.EntryOut
			if plus {
				e = parse[fuse.EntryOut](t, p)
				p = p[fuse.EntryOutSize:]
			}
			d := parse[fuse.Dirent](t, p)
			if int(d.Namelen) > len(p)-fuse.DirentSize {
				t.Fatal("dirent name overruns the reply")
			}
			n := string(p[fuse.DirentSize : fuse.DirentSize+d.Namelen])
			rec := fuse.DirentLen(int(d.Namelen))
			if plus && e.Attr.Ino != d.Ino {
				t.Fatalf("%s: entry ino %d, dirent ino %d", n, e.Attr.Ino, d.Ino)
			}
			if pad := p[fuse.DirentSize+d.Namelen : rec]; bytes.Count(pad, []byte{0}) != len(pad) {
				t.Fatal("dirent padding not zero")
			}
			names = append(names, n)
			ents = append(ents, e)
			off = d.Off
			p = p[rec:]
		}
	}
}

func TestReaddir(t *testing.T) {
	c := newTFS(t, Options{})
	var want []string
	for i := range 150 {
		n := strings.Repeat("n", i%40+1) + string(rune('a'+i%26)) + string(rune('0'+i/26))
		os.WriteFile(c.path(n), nil, 0o644)
		want = append(want, n)
	}
	os.Mkdir(c.path("sub"), 0o755)
	want = append(want, "sub", ".", "..")
	sort.Strings(want)

	for _, plus := range []bool{false, true} {
		names, ents := readdirAll(t, c, fuse.RootID, plus, 600)
		got := append([]string(nil), names...)
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("plus=%v: names differ: got %d want %d", plus, len(got), len(want))
		}
		if !plus {
			continue
		}
		for i, n := range names {
			e := ents[i]
			if n == "." || n == ".." {
				if e.NodeID != 0 || e.Attr.Mode != unix.S_IFDIR {
					t.Errorf("%s: nodeid %#x mode %o, want 0 and S_IFDIR", n, e.NodeID, e.Attr.Mode)
				}
				continue
			}
			st := hostStat(t, c.path(n))
			if e.NodeID == 0 || e.Attr.Ino != st.Ino || e.Attr.Mode != st.Mode {
				t.Errorf("%s: entry %+v", n, e)
			}
			// One reference per emitted entry, exactly.
			if k, _ := c.nlookup(e.NodeID); k != 1 {
				t.Errorf("%s: nlookup %d after one READDIRPLUS", n, k)
			}
		}
		if c.fs.inodes.Len() != 1+len(want)-2 {
			t.Errorf("%d inode records, want %d", c.fs.inodes.Len(), 1+len(want)-2)
		}
	}
	// A buffer that fits nothing returns nothing and counts nothing.
	dh := c.opendir(fuse.RootID)
	before := c.fs.inodes.Len()
	eno, p := c.call(fuse.OpReaddirplus, fuse.RootID, b(fuse.ReadIn{Fh: dh, Size: 100}))
	if eno != 0 || len(p) != 0 || c.fs.inodes.Len() != before {
		t.Errorf("tiny READDIRPLUS: %v %d bytes", eno, len(p))
	}
	eno, _ = c.call(fuse.OpFsyncdir, fuse.RootID, b(fuse.FsyncIn{Fh: dh}))
	wantErr(t, "FSYNCDIR", eno, 0)
	eno, _ = c.call(fuse.OpFsync, fuse.RootID, b(fuse.FsyncIn{Fh: dh}))
	wantErr(t, "FSYNC of a dir fh", eno, unix.EBADF)
	eno, _ = c.call(fuse.OpReaddir, fuse.RootID, b(fuse.ReadIn{Fh: dh, Offset: 1 << 63, Size: 4096}))
	wantErr(t, "READDIR offset > OFFSET_MAX", eno, unix.EINVAL)
	c.call(fuse.OpReleasedir, fuse.RootID, b(fuse.ReleaseIn{Fh: dh}))
	eno, _ = c.call(fuse.OpReaddir, fuse.RootID, b(fuse.ReadIn{Fh: dh, Size: 4096}))
	wantErr(t, "READDIR released", eno, unix.EBADF)

	// An entry removed between listing calls just disappears.
	os.Mkdir(c.path("sub/x"), 0o755)
	sub := c.mustLookup(fuse.RootID, "sub")
	names, _ := readdirAll(t, c, sub.NodeID, true, 4096)
	if len(names) != 3 {
		t.Errorf("sub lists %v", names)
	}
}

func TestXattr(t *testing.T) {
	c := newTFS(t, Options{Xattr: true})
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	set := func(id uint64, n string, v []byte, flags uint32) unix.Errno {
		eno, _ := c.call(fuse.OpSetxattr, id, b(fuse.SetxattrIn{Size: uint32(len(v)), Flags: flags}), name(n), v)
		return eno
	}
	wantErr(t, "SETXATTR", set(f.NodeID, "user.k", []byte("value"), 0), 0)
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(c.path("f"), "user.k", buf); err != nil || string(buf[:n]) != "value" {
		t.Fatalf("host xattr %q %v", buf[:n], err)
	}
	wantErr(t, "XATTR_CREATE existing", set(f.NodeID, "user.k", []byte("v"), unix.XATTR_CREATE), unix.EEXIST)
	wantErr(t, "XATTR_REPLACE missing", set(f.NodeID, "user.none", []byte("v"), unix.XATTR_REPLACE), unix.ENODATA)
	wantErr(t, "bad flags", set(f.NodeID, "user.k", []byte("v"), 4), unix.EINVAL)
	eno, _ := c.call(fuse.OpSetxattr, f.NodeID, b(fuse.SetxattrIn{Size: 100}), name("user.k"), []byte("short"))
	wantErr(t, "value shorter than size", eno, unix.EINVAL)
	eno, _ = c.call(fuse.OpSetxattr, f.NodeID, b(fuse.SetxattrIn{Size: 1 << 20}), name("user.k"))
	wantErr(t, "value > XATTR_SIZE_MAX", eno, unix.E2BIG)
	wantErr(t, "empty name", set(f.NodeID, "", nil, 0), unix.EINVAL)
	wantErr(t, "long name", set(f.NodeID, "user."+strings.Repeat("x", 300), nil, 0), unix.ERANGE)

	get := func(n string, size uint32) (unix.Errno, []byte) {
		return c.call(fuse.OpGetxattr, f.NodeID, b(fuse.GetxattrIn{Size: size}), name(n))
	}
	eno, p := get("user.k", 0)
	if eno != 0 || parse[fuse.GetxattrOut](t, p).Size != 5 {
		t.Errorf("GETXATTR size query: %v %x", eno, p)
	}
	if eno, p := get("user.k", 64); eno != 0 || string(p) != "value" {
		t.Errorf("GETXATTR: %v %q", eno, p)
	}
	eno, _ = get("user.k", 2)
	wantErr(t, "GETXATTR small", eno, unix.ERANGE)
	eno, _ = get("user.none", 64)
	wantErr(t, "GETXATTR missing", eno, unix.ENODATA)

	set(f.NodeID, "user.j", []byte("w"), 0)
	eno, p = c.call(fuse.OpListxattr, f.NodeID, b(fuse.GetxattrIn{Size: 0}))
	if eno != 0 || parse[fuse.GetxattrOut](t, p).Size < uint32(len("user.k\x00user.j\x00")) {
		t.Errorf("LISTXATTR size: %v", eno)
	}
	eno, p = c.call(fuse.OpListxattr, f.NodeID, b(fuse.GetxattrIn{Size: 4096}))
	if eno != 0 || !bytes.Contains(p, []byte("user.k\x00")) || !bytes.Contains(p, []byte("user.j\x00")) {
		t.Errorf("LISTXATTR: %v %q", eno, p)
	}
	eno, _ = c.call(fuse.OpListxattr, f.NodeID, b(fuse.GetxattrIn{Size: 3}))
	wantErr(t, "LISTXATTR small", eno, unix.ERANGE)

	eno, _ = c.call(fuse.OpRemovexattr, f.NodeID, name("user.k"))
	wantErr(t, "REMOVEXATTR", eno, 0)
	if _, err := unix.Getxattr(c.path("f"), "user.k", buf); err != unix.ENODATA {
		t.Error("host xattr still there")
	}
	eno, _ = c.call(fuse.OpRemovexattr, f.NodeID, name("user.k"))
	wantErr(t, "REMOVEXATTR missing", eno, unix.ENODATA)

	// On a directory, and on a fifo (path form through procfs: user.* is
	// not allowed there by the host, trusted.* is for root).
	os.Mkdir(c.path("d"), 0o755)
	d := c.mustLookup(fuse.RootID, "d")
	wantErr(t, "xattr on a dir", set(d.NodeID, "user.d", []byte("1"), 0), 0)
	unix.Mkfifo(c.path("p"), 0o644)
	p2 := c.mustLookup(fuse.RootID, "p")
	wantErr(t, "user xattr on a fifo", set(p2.NodeID, "user.x", []byte("1"), 0), unix.EPERM)
	wantErr(t, "trusted xattr on a fifo", set(p2.NodeID, "trusted.x", []byte("1"), 0), 0)
	if n, err := unix.Lgetxattr(c.path("p"), "trusted.x", buf); err != nil || string(buf[:n]) != "1" {
		t.Errorf("fifo xattr on host: %v", err)
	}
	// A symlink's own xattrs, never its target's.
	os.WriteFile(c.path("target"), nil, 0o644)
	os.Symlink("target", c.path("l"))
	l := c.mustLookup(fuse.RootID, "l")
	wantErr(t, "trusted xattr on a symlink", set(l.NodeID, "trusted.l", []byte("L"), 0), 0)
	if _, err := unix.Lgetxattr(c.path("l"), "trusted.l", buf); err != nil {
		t.Error("symlink xattr not on the link:", err)
	}
	if _, err := unix.Getxattr(c.path("target"), "trusted.l", buf); err != unix.ENODATA {
		t.Error("symlink xattr landed on the target")
	}

	// SETXATTR_EXT: the 16-byte setxattr_in.
	c.fs.flags.Store(c.fs.flags.Load() &^ fuse.FlagSetxattrExt)
	eno, _ = c.call(fuse.OpSetxattr, f.NodeID, b(fuse.SetxattrIn{Size: 1})[:fuse.SetxattrInCompat], name("user.c"), []byte("c"))
	wantErr(t, "compat setxattr_in", eno, 0)
	c.fs.flags.Store(c.fs.flags.Load() | fuse.FlagSetxattrExt)
	eno, _ = c.call(fuse.OpSetxattr, f.NodeID, b(fuse.SetxattrIn{Size: 1})[:fuse.SetxattrInCompat], name("user.c"), []byte("c"))
	wantErr(t, "compat setxattr_in on an EXT session", eno, unix.EINVAL)

	c2 := newTFS(t, Options{Xattr: false})
	eno, _ = c2.call(fuse.OpGetxattr, fuse.RootID, b(fuse.GetxattrIn{Size: 10}), name("user.k"))
	wantErr(t, "xattrs disabled", eno, unix.ENOSYS)
}

func TestLocks(t *testing.T) {
	saved := lockRetryMax
	lockRetryMax = 2 * time.Millisecond
	defer func() { lockRetryMax = saved }()
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("data"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	h1 := c.open(f.NodeID, unix.O_RDWR)
	h2 := c.open(f.NodeID, unix.O_RDWR)
	wr := fuse.FileLock{Start: 0, End: fuse.OffsetMax, Type: unix.F_WRLCK}

	eno, _ := c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: h1, Owner: 1, Lk: wr}))
	wantErr(t, "SETLK", eno, 0)
	eno, p := c.call(fuse.OpGetlk, f.NodeID, b(fuse.LkIn{Fh: h2, Owner: 2, Lk: fuse.FileLock{Start: 10, End: 20, Type: unix.F_RDLCK}}))
	if eno != 0 {
		t.Fatal(eno)
	}
	if lk := parse[fuse.LkOut](t, p).Lk; lk.Type != unix.F_WRLCK || lk.Start != 0 || lk.End != fuse.OffsetMax {
		t.Errorf("GETLK conflict %+v", lk)
	}
	eno, p = c.call(fuse.OpGetlk, f.NodeID, b(fuse.LkIn{Fh: h1, Owner: 1, Lk: wr}))
	if eno != 0 || parse[fuse.LkOut](t, p).Lk.Type != unix.F_UNLCK {
		t.Errorf("GETLK own lock: %v", eno)
	}
	eno, _ = c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: h2, Owner: 2, Lk: wr}))
	wantErr(t, "SETLK conflicting", eno, unix.EAGAIN)
	eno, _ = c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: h2, Owner: 2, Lk: fuse.FileLock{Start: 5, End: 4, Type: unix.F_WRLCK}}))
	wantErr(t, "SETLK end < start", eno, unix.EINVAL)
	eno, _ = c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: h2, Owner: 2, Lk: fuse.FileLock{Type: 7}}))
	wantErr(t, "SETLK bad type", eno, unix.EINVAL)

	// SETLKW waits until the holder unlocks. Blocking ops run on another
	// goroutine with a cloned request and their own reply, as the dataplane does.
	setlkw := func(unique uint64, lk fuse.LkIn) chan unix.Errno {
		done := make(chan unix.Errno, 1)
		var req fuse.Request
		buf := make([]byte, fuse.InHeaderSize+fuse.LkInSize)
		hdr := fuse.InHeader{Len: uint32(len(buf)), Opcode: fuse.OpSetlkw, Unique: unique, NodeID: f.NodeID}
		copy(buf, fuse.Bytes(&hdr))
		copy(buf[fuse.InHeaderSize:], fuse.Bytes(&lk))
		if err := req.Decode(fuse.Scatter{buf}); err != nil {
			t.Fatal(err)
		}
		r := req.Clone()
		go func() {
			out := make([]byte, 64)
			var rep fuse.Reply
			rep.Reset(fuse.Scatter{out}, unique)
			c.fs.Handle(r, &rep)
			var oh fuse.OutHeader
			fuse.Parse(out, &oh)
			done <- unix.Errno(-oh.Error)
		}()
		return done
	}
	done := setlkw(9001, fuse.LkIn{Fh: h2, Owner: 2, Lk: wr})
	select {
	case e := <-done:
		t.Fatalf("SETLKW returned %v while the lock is held", e)
	case <-time.After(30 * time.Millisecond):
	}
	c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: h1, Owner: 1, Lk: fuse.FileLock{End: fuse.OffsetMax, Type: unix.F_UNLCK}}))
	select {
	case e := <-done:
		wantErr(t, "SETLKW after unlock", e, 0)
	case <-time.After(5 * time.Second):
		t.Fatal("SETLKW did not get the lock")
	}

	// INTERRUPT ends a waiting SETLKW with EINTR; so does an INTERRUPT
	// that arrives before the SETLKW runs.
	done = setlkw(9002, fuse.LkIn{Fh: h1, Owner: 1, Lk: wr})
	waitWaiters(t, c.fs, 1)
	if eno, p := c.call(fuse.OpInterrupt, 0, b(fuse.InterruptIn{Unique: 9002})); eno != 0 || p != nil {
		t.Fatal("INTERRUPT must not be answered")
	}
	select {
	case e := <-done:
		wantErr(t, "interrupted SETLKW", e, unix.EINTR)
	case <-time.After(5 * time.Second):
		t.Fatal("INTERRUPT did not end SETLKW")
	}
	c.call(fuse.OpInterrupt, 0, b(fuse.InterruptIn{Unique: 9003}))
	wantErr(t, "pre-interrupted SETLKW", <-setlkw(9003, fuse.LkIn{Fh: h1, Owner: 1, Lk: wr}), unix.EINTR)

	// RELEASE of the handle a SETLKW waits on ends the wait with EBADF.
	h3 := c.open(f.NodeID, unix.O_RDWR)
	done = setlkw(9005, fuse.LkIn{Fh: h3, Owner: 3, Lk: wr})
	waitWaiters(t, c.fs, 1)
	c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: h3}))
	select {
	case e := <-done:
		wantErr(t, "SETLKW on a released handle", e, unix.EBADF)
	case <-time.After(5 * time.Second):
		t.Fatal("RELEASE did not end SETLKW")
	}

	// flock through FUSE_LK_FLOCK, SETLKW ended by DESTROY.
	eno, _ = c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: h1, Owner: 1, Lk: wr, LkFlags: fuse.LkFlock}))
	wantErr(t, "flock EX", eno, 0)
	if err := unix.Flock(openHost(t, c.path("f")), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Errorf("host flock while guest holds it: %v", err)
	}
	done = setlkw(9004, fuse.LkIn{Fh: h2, Owner: 2, Lk: wr, LkFlags: fuse.LkFlock})
	waitWaiters(t, c.fs, 1)
	c.call(fuse.OpDestroy, fuse.RootID)
	select {
	case e := <-done:
		wantErr(t, "SETLKW at DESTROY", e, unix.EINTR)
	case <-time.After(5 * time.Second):
		t.Fatal("DESTROY did not end SETLKW")
	}
}

func openHost(t *testing.T, p string) int {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
