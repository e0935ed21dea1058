package passthrough

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// suppGroupsExt is a FUSE_EXT_GROUPS request extension naming gid.
func suppGroupsExt(gid uint32) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], 16)
	binary.LittleEndian.PutUint32(b[4:], fuse.ExtGroups)
	binary.LittleEndian.PutUint32(b[8:], 1)
	binary.LittleEndian.PutUint32(b[12:], gid)
	return b
}

// With FUSE_CREATE_SUPP_GROUP, a guest user who may write a directory only
// through a supplementary group creates in it; without the extension the
// host refuses (EACCES), as for a user outside the group.
func TestCreateSuppGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (fsuid switching)")
	}
	c := newTFS(t, Options{})
	if !c.fs.has(fuse.FlagCreateSuppGroup) {
		t.Fatal("FUSE_CREATE_SUPP_GROUP not negotiated")
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(c.path("grp"), 0o770))
	must(os.Chown(c.path("grp"), 0, 4242))
	must(os.Chmod(c.path("grp"), 0o770))
	d := c.mustLookup(fuse.RootID, "grp")
	c.uid, c.gid = 1000, 1000
	eno, _ := c.call(fuse.OpMkdir, d.NodeID, b(fuse.MkdirIn{Mode: 0o755}), name("no-ext"))
	wantErr(t, "MKDIR without the group", eno, unix.EACCES)
	c.extlen = 2
	eno, _ = c.call(fuse.OpMkdir, d.NodeID, b(fuse.MkdirIn{Mode: 0o755}), name("with-ext"), suppGroupsExt(4242))
	wantErr(t, "MKDIR with the supplementary group", eno, 0)
	eno, _ = c.call(fuse.OpCreate, d.NodeID, b(fuse.CreateIn{Flags: unix.O_WRONLY, Mode: 0o644}), name("file"), suppGroupsExt(4242))
	wantErr(t, "CREATE with the supplementary group", eno, 0)
	eno, _ = c.call(fuse.OpMkdir, d.NodeID, b(fuse.MkdirIn{Mode: 0o755}), name("other"), suppGroupsExt(777))
	wantErr(t, "MKDIR with a group the directory does not grant", eno, unix.EACCES)
	c.uid, c.gid, c.extlen = 0, 0, 0
	var st unix.Stat_t
	must(unix.Stat(c.path("grp/with-ext"), &st))
	if st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("with-ext owned by %d:%d, want 1000:1000", st.Uid, st.Gid)
	}
	// The queue thread's groups are the process's again.
	if gs, _ := unix.Getgroups(); len(gs) != len(c.fs.groups) {
		t.Errorf("thread groups %v after the request, process had %v", gs, c.fs.groups)
	}
}

func TestSuppGroupParse(t *testing.T) {
	var r fuse.Request
	r.Arg = append([]byte("name\x00\x00\x00\x00"), suppGroupsExt(7)...)
	if _, ok := r.SuppGroup(); ok {
		t.Error("found a group with total_extlen 0")
	}
	r.TotalExtlen = 2
	if g, ok := r.SuppGroup(); !ok || g != 7 {
		t.Errorf("SuppGroup = %d, %v", g, ok)
	}
	r.TotalExtlen = 200
	if _, ok := r.SuppGroup(); ok {
		t.Error("total_extlen past the arguments accepted")
	}
	bad := suppGroupsExt(7)
	binary.LittleEndian.PutUint32(bad, 12) // size not a multiple of 8
	r.Arg, r.TotalExtlen = bad, 2
	if _, ok := r.SuppGroup(); ok {
		t.Error("malformed extension accepted")
	}
}
