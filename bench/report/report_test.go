package report

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"vfsd/bench/hostload"
)

func run(ops float64, cpu time.Duration, lat ...time.Duration) hostload.Result {
	return hostload.Result{Ops: uint64(len(lat)), OpsPerSec: ops, CPUPerOp: cpu, Lat: lat}
}

func TestAggFinish(t *testing.T) {
	var a Agg
	a.Add(run(100, 3*time.Microsecond, 5*time.Microsecond, 1*time.Microsecond))
	a.Add(run(300, 1*time.Microsecond, 2*time.Microsecond))
	a.Add(run(200, 2*time.Microsecond, 10*time.Millisecond))
	a.Finish()
	if a.OpsPerSec != 200 || a.OpsMin != 100 || a.OpsMax != 300 || a.CPUPerOp != 2*time.Microsecond {
		t.Fatalf("medians: %+v", a)
	}
	if a.Samples != 4 || a.P50 != 2*time.Microsecond || a.Max != 10*time.Millisecond || a.P99 != 10*time.Millisecond {
		t.Fatalf("percentiles: %+v", a)
	}
	var n uint64
	for _, c := range a.Hist {
		n += c
	}
	if n != 4 {
		t.Fatalf("histogram holds %d samples", n)
	}
	for _, r := range a.Runs {
		if r.Lat != nil {
			t.Fatal("per-run samples kept in Runs")
		}
	}
}

func TestTables(t *testing.T) {
	ok := &Agg{}
	ok.Add(run(1234, 5*time.Microsecond, 10*time.Microsecond, 20*time.Microsecond))
	ok.Finish()
	ref := &Agg{}
	ref.Add(run(617, 9*time.Microsecond, 20*time.Microsecond, 40*time.Microsecond))
	ref.Finish()
	failed := &Agg{}
	failed.Fail(errors.New("boom\nmore"))
	rows := []*Row{
		{Workload: "getattr", Depth: 1, Queues: 1, Vfsd: ok, Ref: ref, Floor: ok},
		{Workload: "getattr", Depth: 1, Queues: 2, Vfsd: failed},
	}
	for _, r := range rows {
		r.Ratios()
	}
	if rows[0].OpsRatio != 2 || rows[0].P99Ratio != 0.5 || rows[1].OpsRatio != 0 {
		t.Fatalf("ratios %v %v %v", rows[0].OpsRatio, rows[0].P99Ratio, rows[1].OpsRatio)
	}
	var b bytes.Buffer
	WriteHostTable(&b, rows)
	s := b.String()
	for _, want := range []string{"1234", "617", "2.00", "0.50", "FAILED", "n/a", "20.0µs", "5.00"} {
		if !strings.Contains(s, want) {
			t.Errorf("host table lacks %q:\n%s", want, s)
		}
	}
	if failed.Errors[0] != "boom" {
		t.Errorf("failure kept as %q", failed.Errors[0])
	}
	b.Reset()
	WriteGuestTable(&b, []*GuestRow{{Job: "seqread-1m", Cache: "never", Vfsd: &GuestValue{IOPS: 50, MBPerSec: 52.4, P99: time.Millisecond},
		Ref: &GuestValue{Error: "x"}}, {Job: "dentry", Cache: "auto", Vfsd: &GuestValue{IOPS: 60}, Ref: &GuestValue{IOPS: 50},
		Ratio: 1.2, MeanRatio: 0.87}})
	if s := b.String(); !strings.Contains(s, "52.4") || !strings.Contains(s, "FAILED") || !strings.Contains(s, "mean ratio") ||
		!regexp.MustCompile(`1\.20\s+0\.87`).MatchString(s) {
		t.Errorf("guest table:\n%s", s)
	}
}

// The repeats column pairs run i with run i, and is blank once a run of
// either side failed (its runs no longer line up).
func TestRunRatios(t *testing.T) {
	agg := func(ops ...float64) *Agg {
		a := &Agg{}
		for _, o := range ops {
			a.Add(run(o, time.Microsecond, time.Microsecond))
		}
		a.Finish()
		return a
	}
	row := &Row{Workload: "lookup", Depth: 1, Queues: 1, Vfsd: agg(300, 100, 200), Ref: agg(100, 100, 50),
		Plain: agg(300, 50, 250)}
	row.Ratios()
	if row.OpsRatio != 2 || row.OpsRatioRange != [2]float64{1, 4} {
		t.Fatalf("ops ratio %v, range %v", row.OpsRatio, row.OpsRatioRange)
	}
	if row.RecoveryRatioRange != [2]float64{0.8, 2} {
		t.Fatalf("recovery range %v", row.RecoveryRatioRange)
	}
	var b bytes.Buffer
	WriteHostTable(&b, []*Row{row})
	if s := b.String(); !strings.Contains(s, "repeats") || !strings.Contains(s, "1.00–4.00") {
		t.Errorf("host table:\n%s", s)
	}
	b.Reset()
	WriteRecoveryTable(&b, []*Row{row})
	if s := b.String(); !strings.Contains(s, "0.80–2.00") {
		t.Errorf("recovery table:\n%s", s)
	}
	row.Ref.Fail(errors.New("daemon died"))
	row.Plain = agg(300, 50)
	row.Ratios()
	if row.OpsRatio != 2 || row.OpsRatioRange != ([2]float64{}) || row.RecoveryRatioRange != ([2]float64{}) {
		t.Fatalf("after a failed run: ratio %v, ranges %v %v", row.OpsRatio, row.OpsRatioRange, row.RecoveryRatioRange)
	}
	b.Reset()
	WriteRecoveryTable(&b, []*Row{row})
	if s := b.String(); strings.Contains(s, "–") {
		t.Errorf("range shown for unpaired runs:\n%s", s)
	}
}

func TestFormat(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "-", 850: "850ns", 12300: "12.3µs", 456000: "456µs",
		4560000: "4.56ms", 1230 * time.Millisecond: "1.23s"} {
		if got := Dur(d); got != want {
			t.Errorf("Dur(%v) = %q, want %q", d, got, want)
		}
	}
	for v, want := range map[float64]string{0: "-", 12.34: "12.3", 617: "617", 12345: "12.3k", 2.5e6: "2.50M"} {
		if got := Rate(v); got != want {
			t.Errorf("Rate(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestPlotCDF(t *testing.T) {
	lat := make([]time.Duration, 5000)
	for i := range lat {
		lat[i] = time.Duration(1000 + i*i)
	}
	path := filepath.Join(t.TempDir(), "p.png")
	err := PlotCDF(path, "test", []Series{{Label: "vfsd", Kind: "vfsd", Lat: lat},
		{Label: "ref", Kind: "ref", Dashed: true, Lat: lat[:1]}, {Label: "empty", Kind: "floor"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("not a PNG: %v", err)
	}
	if err := PlotCDF(path, "none", nil); err == nil {
		t.Fatal("plot without samples accepted")
	}
	if xy := cdfPoints(lat, 100); len(xy) > 200 || xy[len(xy)-1].Y != 1 {
		t.Fatalf("cdfPoints: %d points, last %v", len(xy), xy[len(xy)-1])
	}
}
