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
