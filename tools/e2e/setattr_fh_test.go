package e2e

import (
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/tools/fuseclient"
)

// SETATTR with FATTR_FH acts on the open handle (fchmod, ftruncate), as a
// Linux guest sends it for a change made through an open file.
func TestSetattrThroughHandle(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), []byte("0123456789"), 0o644)
	f := lookup(t, e, root, "f")
	o, err := e.C.Open(e.Ctx, f.NodeID, unix.O_RDWR, 0)
	must(t, "OPEN", err)
	a, err := e.C.Setattr(e.Ctx, f.NodeID, fuseclient.SetattrIn{Valid: fuseclient.FattrMode | fuseclient.FattrFH, FH: o.FH, Mode: 0o600})
	must(t, "SETATTR mode by handle", err)
	if a.Attr.Mode&0o7777 != 0o600 {
		t.Errorf("SETATTR reply mode %o", a.Attr.Mode)
	}
	if st := hostStat(t, e.Path("f")); st.Mode&0o7777 != 0o600 {
		t.Errorf("host mode %o, want 600", st.Mode&0o7777)
	}
	_, err = e.C.Setattr(e.Ctx, f.NodeID, fuseclient.SetattrIn{Valid: fuseclient.FattrSize | fuseclient.FattrFH, FH: o.FH, Size: 4})
	must(t, "SETATTR size by handle", err)
	if got := string(readHost(t, e.Path("f"))); got != "0123" {
		t.Errorf("host content %q, want 0123", got)
	}
}
