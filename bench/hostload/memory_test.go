package hostload

import (
	"context"
	"os"
	"strings"
	"testing"

	"vfsd/tools/daemon"
)

// TestMeasureMemory: both daemons answer READDIRPLUS for every entry and
// report plausible memory; the reference keeps an O_PATH fd per node it
// hands out, vfsd none for a node only listed (it opens one at first use).
func TestMeasureMemory(t *testing.T) {
	s := testShare(t)
	kinds := []daemon.Kind{daemon.Vfsd}
	if _, err := os.Stat(daemon.VirtiofsdPath); err == nil {
		kinds = append(kinds, daemon.Virtiofsd)
	}
	for _, k := range kinds {
		c := MemConfig{Kind: k, Share: s, SockDir: t.TempDir(), Settle: 1}
		if k == daemon.Vfsd {
			c.Bin = testVfsdBin(t)
		}
		r, err := MeasureMemory(context.Background(), c)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		t.Logf("%s: %+v", k, r)
		if r.Inodes != s.DirEntries {
			t.Fatalf("%s: %d nodes handed out, the directory has %d entries", k, r.Inodes, s.DirEntries)
		}
		if r.Idle.PSS == 0 || r.Loaded.PSS == 0 || r.Idle.RSS < r.Idle.PSS || r.Idle.Procs == 0 || r.Idle.Skipped == 0 {
			t.Fatalf("%s: implausible memory %+v", k, r)
		}
		switch {
		case k == daemon.Virtiofsd && r.FDsPerInode < 0.99:
			t.Fatalf("reference: %.2f fds per node, want 1", r.FDsPerInode)
		case k == daemon.Vfsd && r.FDsPerInode > 0.01:
			t.Fatalf("vfsd: %.2f fds per node only listed, want none", r.FDsPerInode)
		}
		if r.SlabIdle != 0 || r.KernelPerInode != 0 {
			t.Fatalf("%s: kernel memory measured without MemConfig.Kernel", k)
		}
	}
}

// testVfsdBin is $VFSD_BIN, else a fresh build of ./cmd/vfsd.
func testVfsdBin(t *testing.T) string {
	t.Helper()
	b, err := daemon.VfsdFromEnv(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSlabInUse(t *testing.T) {
	in := `slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
ext4_inode_cache   100  140   1128   14    4 : tunables    0    0    0 : slabdata   10   10      0
dentry              21   42    192   21    1 : tunables    0    0    0 : slabdata    2    2      0
`
	v, err := slabInUse(strings.NewReader(in))
	if err != nil || v != 100*1128+21*192 {
		t.Fatalf("slab in use = %d, %v", v, err)
	}
	if _, err := slabInUse(strings.NewReader("slabinfo - version: 1.1\n")); err == nil {
		t.Fatal("old format accepted")
	}
	if _, err := slabInUse(strings.NewReader("slabinfo - version: 2.1\ndentry x 1 192\n")); err == nil {
		t.Fatal("bad count accepted")
	}
}
