package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/tools/frontend"
)

// fillPattern returns n bytes that differ per seed and per offset.
func fillPattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		le64(b[i:], r.Uint64())
	}
	return b
}

func le64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

// largeIO writes 1 MiB through FUSE in max_write chunks, checks the host
// file, reads it back in max-pages chunks and compares.
func largeIO(t *testing.T, e *Env) {
	const size = 1 << 20
	data := fillPattern(1, size)
	ent, o, err := e.C.Create(e.Ctx, root, "big", unix.O_RDWR|unix.O_CREAT, unix.S_IFREG|0o644, 0)
	must(t, "CREATE", err)
	wchunk := min(size, int(e.Init.MaxWrite))
	for off := 0; off < size; off += wchunk {
		n, err := e.C.Write(e.Ctx, ent.NodeID, o.FH, uint64(off), data[off:off+wchunk], 0)
		must(t, "WRITE", err)
		if int(n) != wchunk {
			t.Fatalf("WRITE at %d: %d of %d bytes", off, n, wchunk)
		}
	}
	if got := readHost(t, e.Path("big")); !bytes.Equal(got, data) {
		t.Fatalf("host file differs (%d bytes, want %d)", len(got), size)
	}
	rchunk := 128 << 10
	if e.Init.MaxPages > 0 {
		rchunk = int(e.Init.MaxPages) * 4096
	}
	rchunk = min(rchunk, size)
	got := make([]byte, size)
	for off := 0; off < size; off += rchunk {
		n, err := e.C.Read(e.Ctx, ent.NodeID, o.FH, uint64(off), got[off:off+rchunk])
		must(t, "READ", err)
		if n != rchunk {
			t.Fatalf("READ at %d: %d of %d bytes", off, n, rchunk)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data read back differs from data written")
	}
	t.Logf("1 MiB in %d-byte writes and %d-byte reads", wchunk, rchunk)
}

func TestLargeIO(t *testing.T) {
	largeIO(t, Start(t, Options{}))
}

func largeIORepeated(t *testing.T, e *Env) {
	for i := 0; i < 3; i++ {
		largeIO(t, e)
		must(t, "UNLINK", e.C.Unlink(e.Ctx, root, "big"))
	}
}

// Guest RAM in two GPA-adjacent regions (separately mapped): the allocator
// goes round 6 MiB with 1 MiB buffers, so some straddle the boundary.
func TestLargeIOSplitRegions(t *testing.T) {
	largeIORepeated(t, Start(t, Options{Mem: frontend.MemOptions{Size: 6 << 20, Regions: 2, Adjacent: true}}))
}

// Every chain through an indirect descriptor table.
func TestLargeIOIndirect(t *testing.T) {
	largeIORepeated(t, Start(t, Options{Indirect: true}))
}

// Both at once: an indirect table whose buffers straddle regions.
func TestLargeIOSplitRegionsIndirect(t *testing.T) {
	e := Start(t, Options{Mem: frontend.MemOptions{Size: 6 << 20, Regions: 2, Adjacent: true}, Indirect: true})
	e.SkipForReference("libvhost-user counts iovecs, not descriptors, against the indirect table size and " +
		"panics \"Looped descriptor\" when a descriptor straddles two regions")
	largeIORepeated(t, e)
}

// concurrentIO runs workers goroutines, each writing, reading back and
// checking its own file, all at once.
func concurrentIO(t *testing.T, e *Env, workers, rounds int) {
	var wg sync.WaitGroup
	var inflight, peak atomic.Int64
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				name := fmt.Sprintf("w%d", w)
				ent, o, err := e.C.Create(e.Ctx, root, name, unix.O_RDWR|unix.O_CREAT, unix.S_IFREG|0o644, 0)
				if err != nil {
					return fmt.Errorf("CREATE %s: %w", name, err)
				}
				buf := make([]byte, 16<<10)
				for r := 0; r < rounds; r++ {
					data := fillPattern(uint64(w*1000+r), 16<<10)
					n := inflight.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					_, err := e.C.Write(e.Ctx, ent.NodeID, o.FH, uint64(r)*uint64(len(data)), data, 0)
					inflight.Add(-1)
					if err != nil {
						return fmt.Errorf("WRITE %s: %w", name, err)
					}
					m, err := e.C.Read(e.Ctx, ent.NodeID, o.FH, uint64(r)*uint64(len(data)), buf)
					if err != nil {
						return fmt.Errorf("READ %s: %w", name, err)
					}
					if !bytes.Equal(buf[:m], data) {
						return fmt.Errorf("%s round %d: read back differs", name, r)
					}
					if _, err := e.C.Getattr(e.Ctx, ent.NodeID, nil); err != nil {
						return fmt.Errorf("GETATTR %s: %w", name, err)
					}
				}
				return e.C.Release(e.Ctx, ent.NodeID, o.FH, unix.O_RDWR, 0, 0)
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for w := 0; w < workers; w++ {
		var want []byte
		for r := 0; r < rounds; r++ {
			want = append(want, fillPattern(uint64(w*1000+r), 16<<10)...)
		}
		if got := readHost(t, e.Path(fmt.Sprintf("w%d", w))); !bytes.Equal(got, want) {
			t.Fatalf("host file w%d differs", w)
		}
	}
	t.Logf("%d workers, peak %d writes in flight", workers, peak.Load())
}

// One request queue at depth 32 (both backends).
func TestDepth32(t *testing.T) {
	e := Start(t, Options{Depth: 32})
	concurrentIO(t, e, 32, 8)
}

// Four request queues at depth 16 each, all busy at once.
func TestMultiQueue(t *testing.T) {
	e := Start(t, Options{RequestQueues: 4, Depth: 16})
	concurrentIO(t, e, 64, 6)
	for i := 1; i < e.FE.NumQueues(); i++ {
		if s := e.FE.Queue(i).Stats(); s.Completed == 0 {
			t.Fatalf("request queue %d completed nothing", i)
		} else {
			t.Logf("queue %d: %+v", i, s)
		}
	}
}
