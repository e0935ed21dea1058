package passthrough

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"vfsd/engine/fuse"
)

func TestSlotTable(t *testing.T) {
	var st slotTable[int]
	st.init(1000)
	vals := map[uint32]*int{}
	for _, s := range []uint32{0, 1, 511, 512, 999, 1 << 20, 1<<30 - 1} {
		v := new(int)
		*v = int(s)
		st.set(s, v)
		vals[s] = v
	}
	if st.len() != len(vals) {
		t.Fatalf("len %d, want %d", st.len(), len(vals))
	}
	for s, v := range vals {
		if st.get(s) != v {
			t.Errorf("get(%d) = %p, want %p", s, st.get(s), v)
		}
	}
	for _, s := range []uint32{2, 510, 513, 1000, 1<<20 + 1, 1<<32 - 1} {
		if st.get(s) != nil {
			t.Errorf("get(%d) of an empty slot: %v", s, *st.get(s))
		}
	}
	if len(st.pages) > (1<<30)/slotPage {
		t.Errorf("directory of %d pages", len(st.pages))
	}
	var seen []uint32
	st.each(func(s uint32, v *int) {
		if uint32(*v) != s {
			t.Errorf("each: slot %d holds %d", s, *v)
		}
		seen = append(seen, s)
		st.clear(s)
	})
	if fmt.Sprint(seen) != "[0 1 511 512 999 1048576 1073741823]" {
		t.Errorf("each visited %v", seen)
	}
	if st.len() != 0 || st.get(512) != nil {
		t.Errorf("after clearing: len %d", st.len())
	}
	st.set(3, vals[0])
	st.set(3, vals[1]) // replace: still one
	if st.len() != 1 {
		t.Errorf("len %d after a replace", st.len())
	}
	st.reset()
	if st.len() != 0 || st.get(3) != nil {
		t.Error("reset left entries")
	}
}

// TestFirstRequestAfterResumeSmall: the first request after a restart that
// loads an inode at a high slot allocates little (the slot table is sparse:
// a flat slice grown to the slot cost 8 bytes per slot below it).
func TestFirstRequestAfterResumeSmall(t *testing.T) {
	r := newRig(t)
	abandon(r.c.fs)
	r.c = openTFS(t, Options{Root: r.dir, FDStore: r.store, MaxInodes: 1 << 20}, true)
	var hi uint64
	for i := range 16 {
		n := fmt.Sprint("f", i)
		os.WriteFile(filepath.Join(r.dir, n), nil, 0o644)
		if e := r.mustLookup(n); uint32(e.NodeID) >= uint32(hi) {
			hi = e.NodeID
		}
	}
	abandon(r.c.fs)
	c := openTFS(t, Options{Root: r.dir, FDStore: r.store, MaxInodes: 1 << 20, Resume: r.store.handBack(t)}, false)
	getattr := b(fuse.GetattrIn{})
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	e, _ := c.call(fuse.OpGetattr, hi, getattr)
	runtime.ReadMemStats(&m1)
	if e != 0 {
		t.Fatal(e)
	}
	if n := m1.TotalAlloc - m0.TotalAlloc; n > 256<<10 {
		t.Errorf("first GETATTR after resume (inode at slot %d) allocated %d bytes", uint32(hi), n)
	}
}

// TestTableStats: entries and capacities of both maps, as the worker's
// metrics read them.
func TestTableStats(t *testing.T) {
	c := newTFS(t, Options{MaxInodes: 1000, MaxHandles: 100})
	in, inCap, h, hCap := c.fs.TableStats()
	if in != 1 || h != 0 || inCap != c.fs.inodes.Cap() || hCap != c.fs.handles.Cap() || inCap < 800 || hCap < 80 {
		t.Fatalf("fresh: %d/%d inodes, %d/%d handles", in, inCap, h, hCap)
	}
	os.WriteFile(c.path("f"), nil, 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	c.open(f.NodeID, 0)
	c.open(f.NodeID, 0)
	if in, _, h, _ := c.fs.TableStats(); in != 2 || h != 2 {
		t.Errorf("after a lookup and two opens: %d inodes, %d handles", in, h)
	}
	done := make(chan struct{})
	go func() { // concurrent with requests (run with -race)
		defer close(done)
		for range 100 {
			c.fs.TableStats()
		}
	}()
	c.open(f.NodeID, 0)
	<-done
}

// TestReaddirCache: a directory listed in small READDIR(PLUS) requests,
// each continuing from the last (served from the handle's getdents cache),
// and restarted from offset 0 halfway, yields every name once per pass;
// RELEASEDIR gives the cache back.
func TestReaddirCache(t *testing.T) {
	c := newTFS(t, Options{})
	os.Mkdir(c.path("d"), 0o755)
	want := map[string]bool{}
	for i := range 700 {
		n := fmt.Sprintf("entry-with-a-longish-name-%04d", i)
		os.WriteFile(filepath.Join(c.path("d"), n), nil, 0o644)
		want[n] = true
	}
	d := c.mustLookup(fuse.RootID, "d")
	for _, op := range []uint32{fuse.OpReaddir, fuse.OpReaddirplus} {
		dh := c.opendir(d.NodeID)
		list := func(stopAfter int) map[string]int {
			seen := map[string]int{}
			off := uint64(0)
			for reqs := 0; stopAfter == 0 || reqs < stopAfter; reqs++ {
				e, p := c.call(op, d.NodeID, b(fuse.ReadIn{Fh: dh, Offset: off, Size: 1024}))
				if e != 0 {
					t.Fatal(e)
				}
				if len(p) == 0 {
					break
				}
				for len(p) > 0 {
					base := 0
					if op == fuse.OpReaddirplus {
						base = fuse.EntryOutSize
					}
					off = binary.LittleEndian.Uint64(p[base+8:])
					nl := int(binary.LittleEndian.Uint32(p[base+16:]))
					seen[string(p[base+24:base+24+nl])]++
					p = p[base+(24+nl+7)&^7:]
				}
			}
			return seen
		}
		list(20) // a partial pass, then from the start again
		seen := list(0)
		for n := range want {
			if seen[n] != 1 {
				t.Errorf("op %d: %s listed %d times", op, n, seen[n])
			}
		}
		if len(seen) != len(want)+2 { // "." and ".."
			t.Errorf("op %d: %d names listed, want %d", op, len(seen), len(want)+2)
		}
		list(5)
		if c.fs.dirCache.Load() == 0 {
			t.Errorf("op %d: nothing cached mid-listing", op)
		}
		c.call(fuse.OpReleasedir, d.NodeID, b(fuse.ReleaseIn{Fh: dh}))
		if n := c.fs.dirCache.Load(); n != 0 {
			t.Errorf("op %d: %d bytes cached after RELEASEDIR", op, n)
		}
	}
}
