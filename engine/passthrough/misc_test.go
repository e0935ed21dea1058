package passthrough

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// TestExtensions: request extensions (total_extlen) are stripped, never
// interpreted; a length beyond the arguments is refused.
func TestExtensions(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), nil, 0o644)
	send := func(op uint32, extlen uint16, body []byte) unix.Errno {
		h := fuse.InHeader{Len: uint32(fuse.InHeaderSize + len(body)), Opcode: op, Unique: 5, NodeID: fuse.RootID, TotalExtlen: extlen}
		buf := append(append([]byte(nil), fuse.Bytes(&h)...), body...)
		var req fuse.Request
		if err := req.Decode(fuse.Scatter{buf}); err != nil {
			t.Fatal(err)
		}
		out := make([]byte, 4096)
		var rep fuse.Reply
		rep.Reset(fuse.Scatter{out}, 5)
		c.fs.Handle(&req, &rep)
		return unix.Errno(-int32(binary.LittleEndian.Uint32(out[4:])))
	}
	ext := make([]byte, 16) // e.g. a fuse_secctx_header the guest was not asked for
	wantErr(t, "LOOKUP with extension", send(fuse.OpLookup, 2, append(name("f"), ext...)), 0)
	wantErr(t, "extension longer than args", send(fuse.OpLookup, 9, append(name("f"), ext...)), unix.EINVAL)
	wantErr(t, "WRITE with extension", send(fuse.OpWrite, 1, make([]byte, fuse.WriteInSize+8)), unix.EINVAL)
}

// TestPanicBecomesEIO: the dispatch boundary answers EIO if a handler
// panics (tests run with recovery off so that bugs are loud).
func TestPanicBecomesEIO(t *testing.T) {
	c := newTFS(t, Options{})
	recoverPanics = true
	saved := ops[fuse.OpStatfs]
	ops[fuse.OpStatfs] = opEntry{fn: func(*FS, txn, *fuse.Request, *fuse.Reply, []byte) { panic("boom") }}
	defer func() { recoverPanics = false; ops[fuse.OpStatfs] = saved }()
	eno, _ := c.call(fuse.OpStatfs, fuse.RootID)
	wantErr(t, "panicking handler", eno, unix.EIO)
}

// TestSetxattrACLKillSgid: SETXATTR_ACL_KILL_SGID on system.posix_acl_access
// drops S_ISGID (the guest decided the writer is outside the group).
func TestSetxattrACLKillSgid(t *testing.T) {
	c := newTFS(t, Options{Xattr: true})
	os.WriteFile(c.path("f"), nil, 0o644)
	unix.Chmod(c.path("f"), 0o2775)
	f := c.mustLookup(fuse.RootID, "f")
	// POSIX ACL xattr: version 2, USER_OBJ rwx, GROUP_OBJ rwx, OTHER r-x.
	acl := make([]byte, 4+3*8)
	binary.LittleEndian.PutUint32(acl, 2)
	for i, e := range [][2]uint16{{0x01, 7}, {0x04, 7}, {0x20, 5}} {
		binary.LittleEndian.PutUint16(acl[4+8*i:], e[0])
		binary.LittleEndian.PutUint16(acl[6+8*i:], e[1])
		binary.LittleEndian.PutUint32(acl[8+8*i:], ^uint32(0))
	}
	eno, _ := c.call(fuse.OpSetxattr, f.NodeID, b(fuse.SetxattrIn{Size: uint32(len(acl)), SetxattrFlags: fuse.SetxattrACLKillSgid}),
		name("system.posix_acl_access"), acl)
	if eno == unix.EOPNOTSUPP {
		t.Skip("host filesystem without POSIX ACLs")
	}
	if eno != 0 {
		t.Fatal(eno)
	}
	if st := hostStat(t, c.path("f")); st.Mode&0o7777 != 0o775 {
		t.Errorf("mode %o after ACL_KILL_SGID, want 0775", st.Mode&0o7777)
	}
}

// TestWriteOverMaxWrite: a WRITE larger than the announced max_write is
// refused, one of exactly max_write is served.
func TestWriteOverMaxWrite(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	fh := c.open(f.NodeID, unix.O_RDWR)
	_, eno := c.write(f.NodeID, fh, 0, make([]byte, maxWrite+1), 0)
	wantErr(t, "WRITE of max_write+1 bytes", eno, unix.EINVAL)
	n, eno := c.write(f.NodeID, fh, 0, make([]byte, maxWrite), 0)
	if eno != 0 || n != maxWrite {
		t.Errorf("WRITE of max_write bytes: %d %v", n, eno)
	}
}

// TestDestroyDropsEverything: DESTROY of a session that never restarted
// deletes every record and stored fd (without walking the tables' whole
// capacity: see opDestroy).
func TestDestroyDropsEverything(t *testing.T) {
	r := newRig(t)
	os.Mkdir(r.c.path("d"), 0o755)
	os.WriteFile(r.c.path("d/f"), nil, 0o644)
	d := r.mustLookup("d")
	f := r.c.mustLookup(d.NodeID, "f")
	r.c.open(f.NodeID, unix.O_RDWR)
	r.c.opendir(d.NodeID)
	r.c.call(fuse.OpUnlink, d.NodeID, name("f")) // kept in the store as ino.<id>
	if len(r.store.names("ino.")) != 1 || len(r.store.names("fh.")) != 2 {
		t.Fatalf("store before DESTROY: %v %v", r.store.names("ino."), r.store.names("fh."))
	}
	if e, _ := r.c.call(fuse.OpDestroy, fuse.RootID); e != 0 {
		t.Fatal(e)
	}
	if n, h := r.c.fs.inodes.Len(), r.c.fs.handles.Len(); n != 1 || h != 0 {
		t.Errorf("after DESTROY: %d inode records (want the root's), %d handles", n, h)
	}
	if got := append(r.store.names("ino."), r.store.names("fh.")...); len(got) != 0 {
		t.Errorf("store after DESTROY holds %v", got)
	}
}
