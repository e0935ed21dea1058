package hostload

import (
	"context"
	"os"
	"testing"
	"time"

	"vfsd/tools/daemon"
)

// Correctness only: every workload runs on the floor and on the reference
// daemon and yields a plausible, error-free result. No timing assertions.

func testShare(t *testing.T) *Share {
	t.Helper()
	s, err := PrepareShare(t.TempDir(), 2<<20, 300)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkResult(t *testing.T, what string, w Workload, r Result) {
	t.Helper()
	if r.Ops == 0 || r.Errors != 0 || len(r.Lat) != int(r.Ops) || r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.P999 || r.P999 > r.Max {
		t.Fatalf("%s %s: implausible result %+v (first error %q)", what, w.Name, r, r.FirstError)
	}
	if w.IsIO() && r.Bytes != r.Ops*uint64(w.Size) {
		t.Fatalf("%s %s: %d bytes for %d ops", what, w.Name, r.Bytes, r.Ops)
	}
	if w.Name == "readdirplus" && (r.Entries < r.Ops || r.Entries > r.Ops*24) {
		t.Fatalf("%s %s: %d entries for %d listings", what, w.Name, r.Entries, r.Ops)
	}
}

func TestFloorWorkloads(t *testing.T) {
	s := testShare(t)
	for _, w := range Workloads {
		r, err := RunFloor(context.Background(), FloorConfig{Workload: w, Workers: 2, Warmup: 10 * time.Millisecond,
			Duration: 50 * time.Millisecond, Share: s})
		if err != nil {
			t.Fatalf("floor %s: %v", w.Name, err)
		}
		checkResult(t, "floor", w, r)
		if r.CPU <= 0 {
			t.Fatalf("floor %s: no thread CPU time", w.Name)
		}
	}
}

func TestReferenceWorkloads(t *testing.T) {
	if _, err := os.Stat(daemon.VirtiofsdPath); err != nil {
		t.Skipf("reference daemon not installed: %v", err)
	}
	s := testShare(t)
	for _, w := range Workloads {
		r, err := RunDaemon(context.Background(), DaemonConfig{Kind: daemon.Virtiofsd, Workload: w, Depth: 4,
			Warmup: 20 * time.Millisecond, Duration: 100 * time.Millisecond, Share: s, SockDir: t.TempDir()})
		if err != nil {
			t.Fatalf("virtiofsd %s: %v", w.Name, err)
		}
		checkResult(t, "virtiofsd", w, r)
	}
	if _, err := RunDaemon(context.Background(), DaemonConfig{Kind: daemon.Virtiofsd, Workload: Workloads[0], Queues: 2,
		Share: s}); err == nil {
		t.Fatal("two request queues on the reference accepted")
	}
}

func TestOffsets(t *testing.T) {
	// Sequential: 4 workers over 16 blocks get 4 blocks each, in order, wrapping.
	o := newOffsets(16*4096, 4096, true, 1, 4, nil)
	var got []int64
	for range 6 {
		got = append(got, o.next()/4096)
	}
	want := []int64{4, 5, 6, 7, 4, 5}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("sequential offsets %v, want %v", got, want)
		}
	}
	// More workers than blocks: the whole file, from different places.
	o = newOffsets(2*4096, 4096, true, 3, 8, nil)
	if a, b := o.next(), o.next(); a != 4096 || b != 0 {
		t.Fatalf("offsets %d %d, want 4096 0", a, b)
	}
}

func TestPercentile(t *testing.T) {
	s := make([]time.Duration, 1000)
	for i := range s {
		s[i] = time.Duration(i + 1)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Fatalf("p%v = %d, want %d", c.p, got, c.want)
		}
	}
	if Percentile(nil, 0.5) != 0 {
		t.Fatal("percentile of nothing")
	}
}
