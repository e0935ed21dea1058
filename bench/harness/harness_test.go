package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vfsd/bench/hostload"
	"vfsd/bench/report"
	"vfsd/tools/daemon"
)

// vfsdBin is $VFSD_BIN, else a fresh build of ./cmd/vfsd.
func vfsdBin(t *testing.T) string {
	b, err := daemon.VfsdFromEnv(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The harness end to end on a tiny configuration: both daemons, two queues
// for vfsd, the floor, plots; checks the table, the JSON and the PNGs, not
// the numbers.
func TestHarnessTiny(t *testing.T) {
	if _, err := os.Stat(daemon.VirtiofsdPath); err != nil {
		t.Skipf("reference daemon not installed: %v", err)
	}
	var ws []hostload.Workload
	for _, n := range []string{"getattr", "write4k", "readdirplus"} {
		w, err := hostload.LookupWorkload(n)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	// A wrapper with --pprof-addr around the real vfsd exercises the
	// profile path (its profile is the wrapper's own, nearly idle).
	real := vfsdBin(t)
	fake := filepath.Join(t.TempDir(), "fakevfsd")
	if b, err := exec.Command("go", "build", "-o", fake, "./testdata/fakevfsd").CombinedOutput(); err != nil {
		t.Fatalf("build fakevfsd: %v\n%s", err, b)
	}
	t.Setenv("FAKE_VFSD_REAL", real)
	out := t.TempDir()
	var table, prog bytes.Buffer
	o := Options{VfsdBin: fake, Workloads: ws, Depths: []int{4}, VfsdQueues: 2, Repeat: 2,
		Warmup: 100 * time.Millisecond, Duration: 250 * time.Millisecond, Cache: "auto", FileSize: 2 << 20,
		DirEntries: 200, ReaddirSize: 4096, OutDir: out, Floor: true, Profile: true, ProfileSeconds: 1,
		ProfileTop: 5, Plots: true, Out: &table, Progress: &prog,
		Polled: ws[:1], PolledClientPoll: 20 * time.Microsecond, Memory: true}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	// 3 workloads x (1 queue, 2 queues).
	if len(rep.Host) != 6 {
		t.Fatalf("%d host rows, want 6", len(rep.Host))
	}
	for _, r := range rep.Host {
		if r.Vfsd == nil || len(r.Vfsd.Runs) != 2 || r.Floor == nil || len(r.Floor.Runs) != 1 {
			t.Fatalf("row %s depth=%d q=%d: missing runs: %+v", r.Workload, r.Depth, r.Queues, r)
		}
		if (r.Queues == 1) != (r.Ref != nil) {
			t.Fatalf("row %s q=%d: reference present=%v", r.Workload, r.Queues, r.Ref != nil)
		}
		if r.Ref != nil && (len(r.Ref.Runs) != 2 || r.OpsRatio <= 0 || r.P99Ratio <= 0) {
			t.Fatalf("row %s depth=%d: reference runs %d, ratios %v %v", r.Workload, r.Depth, len(r.Ref.Runs), r.OpsRatio, r.P99Ratio)
		}
	}
	// The polled row: depth 1, both daemons, both runs.
	if len(rep.Polled) != 1 {
		t.Fatalf("%d polled rows, want 1", len(rep.Polled))
	}
	if r := rep.Polled[0]; r.Workload != "getattr" || r.Depth != 1 || r.Ref == nil || len(r.Vfsd.Runs) != 2 ||
		len(r.Ref.Runs) != 2 || r.OpsRatio <= 0 {
		t.Fatalf("polled row: %+v", r)
	}
	// Memory: both daemons, both runs, every entry known, footprints of
	// the host runs found (no kernel part: a unit test must not drop the
	// machine's caches).
	m := rep.Memory
	if m == nil || len(m.Vfsd.Runs) != 2 || len(m.Ref.Runs) != 2 || m.Vfsd.Inodes != 200 || m.Ref.Inodes != 200 ||
		m.IdleRatio <= 0 || m.Vfsd.HostMax == 0 || m.Ref.HostMax == 0 || m.Kernel {
		t.Fatalf("memory: %+v", m)
	}
	for _, n := range rep.Notes {
		if strings.Contains(n, "failed") {
			t.Errorf("note: %s", n)
		}
	}
	txt := table.String()
	for _, want := range []string{"vfsd ops/s", "readdirplus", "floor ops/s", "results: " + out,
		"Depth 1 with a frontend that polls the used ring up to 20µs", "Memory (median of the runs)", "vfsd/ref"} {
		if !strings.Contains(txt, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if !strings.Contains(prog.String(), "getattr depth=4 queues=2 vfsd (2/2)") ||
		!strings.Contains(prog.String(), "getattr depth=1 queues=1 virtiofsd, client polls 20µs (2/2)") ||
		!strings.Contains(prog.String(), "memory: virtiofsd, 200 nodes known (2/2)") {
		t.Errorf("progress lines lack a run:\n%s", prog.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back report.Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Host) != 6 || len(back.Polled) != 1 || back.Host[0].Vfsd.Samples == 0 || len(back.Host[0].Vfsd.Hist) == 0 ||
		back.Memory == nil || back.Memory.Vfsd.IdlePSS == 0 {
		t.Fatalf("JSON round trip lost rows or samples")
	}
	if b := back.Machine.BusyStart; b < 0 || b > 1 {
		t.Errorf("cpu_busy_start %v, want a share of the CPUs", b)
	}
	for _, w := range ws {
		fi, err := os.Stat(filepath.Join(out, "latency-"+w.Name+".png"))
		if err != nil || fi.Size() < 1000 {
			t.Fatalf("plot for %s: %v", w.Name, err)
		}
	}
	if len(rep.Profiles) != len(ws) {
		t.Fatalf("%d profiles, want %d", len(rep.Profiles), len(ws))
	}
	for _, p := range rep.Profiles {
		if p.Error != "" || p.File == "" || !strings.Contains(txt, "vfsd CPU profile, "+p.Workload) {
			t.Fatalf("profile %s: error %q, file %q", p.Workload, p.Error, p.File)
		}
		if _, err := os.Stat(p.File); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "table.txt")); err != nil {
		t.Fatal(err)
	}
}

func TestParseCPUStat(t *testing.T) {
	busy, total, ok := parseCPUStat("cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 3 0\n")
	if !ok || total != 1000 || busy != 160 {
		t.Fatalf("busy %d of %d (ok %v), want 160 of 1000", busy, total, ok)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2 x 4 5", "cpu 1 2"} {
		if _, _, ok := parseCPUStat(bad); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}
