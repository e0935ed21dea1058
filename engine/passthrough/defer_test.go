package passthrough

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/maptable"
)

// inodeFd is the fd of the in-memory inode nodeid (-2 when not in memory).
func inodeFd(fs *FS, nodeid uint64) int {
	fs.imu.RLock()
	defer fs.imu.RUnlock()
	if in := fs.islots.get(uint32(nodeid)); in != nil && uint64(in.tid) == nodeid {
		return in.fd
	}
	return -2
}

// TestDeferredOpen: a new inode from LOOKUP, READDIRPLUS or CREATE gets no
// fd until a request needs one or a second LOOKUP finds it (deferOpen),
// FORGET of one never used closes nothing, and the first use opens it by
// its file handle.
// In the eager mode (TestEagerInodes) every inode has its fd at once.
func TestDeferredOpen(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("data"), 0o644)
	os.Symlink("f", c.path("l"))
	os.Mkdir(c.path("d"), 0o755)
	os.WriteFile(c.path("d/g"), []byte("g"), 0o644)
	deferred := c.fs.deferOpen
	wantFd := func(what string, nodeid uint64, open bool) {
		t.Helper()
		if fd := inodeFd(c.fs, nodeid); open != (fd >= 0) {
			t.Errorf("%s: fd %d, want opened %v", what, fd, open)
		}
	}
	f := c.mustLookup(fuse.RootID, "f")
	l := c.mustLookup(fuse.RootID, "l")
	d := c.mustLookup(fuse.RootID, "d")
	wantFd("LOOKUP f", f.NodeID, !deferred)
	wantFd("LOOKUP l", l.NodeID, !deferred)
	wantFd("LOOKUP d", d.NodeID, !deferred)

	// READDIRPLUS of d: g comes back deferred too.
	names, ents := readdirAll(t, c, d.NodeID, true, 4096)
	var g uint64
	for i, n := range names {
		if n == "g" {
			g = ents[i].NodeID
		}
	}
	if g == 0 {
		t.Fatalf("READDIRPLUS of d: %v", names)
	}
	wantFd("READDIRPLUS g", g, !deferred)
	wantFd("OPENDIR d", d.NodeID, true)

	// First uses open it; the attributes are the file's.
	eno, p := c.call(fuse.OpGetattr, f.NodeID, b(fuse.GetattrIn{}))
	if eno != 0 {
		t.Fatalf("GETATTR f: %v", eno)
	}
	if a := parse[fuse.AttrOut](t, p); a.Attr.Size != 4 || a.Attr.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("GETATTR f: %+v", a.Attr)
	}
	wantFd("GETATTR f", f.NodeID, true)
	// A second LOOKUP opens it too (which checks that the key is still
	// its inode's); the hits after it cost one statx.
	if l2 := c.mustLookup(fuse.RootID, "l"); l2.NodeID != l.NodeID {
		t.Fatalf("second LOOKUP of l: nodeid %#x, first %#x", l2.NodeID, l.NodeID)
	}
	wantFd("second LOOKUP l", l.NodeID, true)
	if eno, p = c.call(fuse.OpReadlink, l.NodeID); eno != 0 || string(p) != "f" {
		t.Errorf("READLINK l: %q %v", p, eno)
	}
	wantFd("READLINK l", l.NodeID, true)

	// CREATE: the handle's fd is open, the inode deferred.
	eno, p = c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR | unix.O_CREAT | unix.O_EXCL, Mode: 0o644}), name("n"))
	if eno != 0 {
		t.Fatalf("CREATE: %v", eno)
	}
	n := parse[fuse.EntryOut](t, p)
	wantFd("CREATE n", n.NodeID, !deferred)

	// FORGET of the never-used g and n closes nothing and frees their records.
	records := c.fs.inodes.Len()
	c.call(fuse.OpForget, g, b(fuse.ForgetIn{Nlookup: 1}))
	c.call(fuse.OpForget, n.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if got := c.fs.inodes.Len(); got != records-2 {
		t.Errorf("%d inode records after two FORGETs, want %d", got, records-2)
	}
	for _, id := range []uint64{g, n.NodeID} {
		if e, _ := c.call(fuse.OpGetattr, id, b(fuse.GetattrIn{})); e != unix.ESTALE {
			t.Errorf("GETATTR of a forgotten nodeid: %v, want ESTALE", e)
		}
	}
}

// corruptHandle changes the file handle in nodeid's record (for ext4: its
// generation), as if the inode behind the record's key were another one.
func corruptHandle(t *testing.T, fs *FS, nodeid uint64) {
	t.Helper()
	fs.imu.Lock()
	err := fs.inodes.Update(maptable.ID(nodeid), maptable.UpdateFunc(func(val []byte) {
		n := binary.LittleEndian.Uint32(val[recFhLen:])
		val[recFh+int(n)-1] ^= 0xff
	}))
	fs.imu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeferredStale: nothing keeps a deferred inode alive, so its number
// can come back as another inode with the same key (simulated by changing
// the recorded handle: a rename that raced the lookup's statx and
// name_to_handle_at looks the same). The old nodeid answers ESTALE and
// loses its record (its FORGET is harmless); a LOOKUP or CREATE of the
// new inode gets a new nodeid at once, and so does a LOOKUP after the
// ESTALE. A file deleted on the host answers ESTALE too.
func TestDeferredStale(t *testing.T) {
	c := newTFS(t, Options{})
	if !c.fs.deferOpen {
		t.Skip("inodes are opened at once here")
	}
	for _, n := range []string{"f", "g", "h", "n"} {
		os.WriteFile(c.path(n), []byte(n), 0o644)
	}
	check := func(what string, old, nu uint64) {
		t.Helper()
		if nu == old {
			t.Fatalf("%s answered the stale nodeid %#x", what, old)
		}
		if e, _ := c.call(fuse.OpGetattr, nu, b(fuse.GetattrIn{})); e != 0 {
			t.Errorf("%s: GETATTR of the new nodeid: %v", what, e)
		}
		if e, _ := c.call(fuse.OpGetattr, old, b(fuse.GetattrIn{})); e != unix.ESTALE {
			t.Errorf("%s: GETATTR of the stale nodeid: %v, want ESTALE", what, e)
		}
		c.call(fuse.OpForget, old, b(fuse.ForgetIn{Nlookup: 1}))
		if e, _ := c.call(fuse.OpGetattr, nu, b(fuse.GetattrIn{})); e != 0 {
			t.Errorf("%s: GETATTR of the new nodeid after the old one's FORGET: %v", what, e)
		}
	}

	// f: used first (ESTALE), then looked up again.
	f := c.mustLookup(fuse.RootID, "f")
	corruptHandle(t, c.fs, f.NodeID)
	if e, _ := c.call(fuse.OpGetattr, f.NodeID, b(fuse.GetattrIn{})); e != unix.ESTALE {
		t.Fatalf("GETATTR with a handle of another inode: %v, want ESTALE", e)
	}
	check("LOOKUP after ESTALE", f.NodeID, c.mustLookup(fuse.RootID, "f").NodeID)

	// g: looked up again first.
	g := c.mustLookup(fuse.RootID, "g")
	corruptHandle(t, c.fs, g.NodeID)
	check("LOOKUP of a reused key", g.NodeID, c.mustLookup(fuse.RootID, "g").NodeID)

	// n: CREATE (no O_EXCL) opens the existing file: its fd's handle.
	n := c.mustLookup(fuse.RootID, "n")
	corruptHandle(t, c.fs, n.NodeID)
	e, p := c.call(fuse.OpCreate, fuse.RootID, b(fuse.CreateIn{Flags: unix.O_RDWR | unix.O_CREAT, Mode: 0o644}), name("n"))
	if e != 0 {
		t.Fatalf("CREATE: %v", e)
	}
	ne := parse[fuse.EntryOut](t, p)
	var oo fuse.OpenOut
	fuse.Parse(p[fuse.EntryOutSize:], &oo)
	c.call(fuse.OpRelease, ne.NodeID, b(fuse.ReleaseIn{Fh: oo.Fh}))
	check("CREATE of a reused key", n.NodeID, ne.NodeID)

	// h: deleted on the host while nothing held it open.
	h := c.mustLookup(fuse.RootID, "h")
	os.Remove(c.path("h"))
	if e, _ := c.call(fuse.OpGetattr, h.NodeID, b(fuse.GetattrIn{})); e != unix.ESTALE {
		t.Errorf("GETATTR of a file deleted on the host: %v, want ESTALE", e)
	}
	c.call(fuse.OpForget, h.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if n := c.fs.inodes.Len(); n != 4 {
		t.Errorf("%d inode records, want 4 (the root, f, g, n)", n)
	}
}
