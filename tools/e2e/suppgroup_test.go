package e2e

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/tools/daemon"
	"vfsd/tools/fuseclient"
)

// FUSE_CREATE_SUPP_GROUP end to end (Linux 6.5+ guests offer it): a guest
// user who may write a directory only through a supplementary group
// creates in it when the request carries that group, and is refused
// without it; the worker thread's groups are restored afterwards (a later
// request without the extension is refused again).
func TestCreateSuppGroup(t *testing.T) {
	if k, err := daemon.FromEnv(); err != nil || k != daemon.Vfsd {
		t.Skip("vfsd only: the reference does not offer FUSE_CREATE_SUPP_GROUP")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	e := Start(t, Options{NoInit: true})
	in, err := e.C.Init(e.Ctx, fuseclient.Linux61Flags|fuse.FlagCreateSuppGroup)
	must(t, "INIT", err)
	if in.Flags&fuse.FlagCreateSuppGroup == 0 {
		t.Fatalf("vfsd did not accept FUSE_CREATE_SUPP_GROUP (flags %#x)", in.Flags)
	}
	must(t, "mkdir", os.Mkdir(e.Path("grp"), 0o770))
	must(t, "chown", os.Chown(e.Path("grp"), 0, 4242))
	must(t, "chmod", os.Chmod(e.Path("grp"), 0o770))
	d := lookup(t, e, root, "grp")
	ext := make([]byte, 16)
	binary.LittleEndian.PutUint32(ext[0:], 16)
	binary.LittleEndian.PutUint32(ext[4:], fuse.ExtGroups)
	binary.LittleEndian.PutUint32(ext[8:], 1)
	binary.LittleEndian.PutUint32(ext[12:], 4242)
	user := &fuseclient.Creds{UID: 1000, GID: 1000, PID: 1}
	mkdir := func(name string, withExt bool) int32 {
		t.Helper()
		r := &fuseclient.Req{Op: fuse.OpMkdir, NodeID: d.NodeID, Creds: user, Out: 256,
			Args: [][]byte{le32(0o755, 0), append([]byte(name), 0)}}
		if withExt {
			r.Ext = ext
		}
		rep, err := e.C.Do(e.Ctx, r, nil)
		must(t, "MKDIR "+name, err)
		return rep.Error
	}
	if eno := mkdir("without", false); eno != -int32(unix.EACCES) {
		t.Errorf("MKDIR without the group: error %d, want -EACCES", eno)
	}
	if eno := mkdir("with", true); eno != 0 {
		t.Fatalf("MKDIR with the supplementary group: error %d", eno)
	}
	if st := hostStat(t, e.Path("grp/with")); st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("grp/with owned by %d:%d, want 1000:1000", st.Uid, st.Gid)
	}
	if eno := mkdir("again-without", false); eno != -int32(unix.EACCES) {
		t.Errorf("MKDIR without the group after one with it: error %d, want -EACCES (groups not restored?)", eno)
	}
}

// le32 encodes little-endian u32s.
func le32(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}
