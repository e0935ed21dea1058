package report

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"vfsd/bench/hostload"
	"vfsd/tools/daemon"
)

func memRun(idle, loaded uint64, user, kernel float64) hostload.MemResult {
	return hostload.MemResult{Idle: daemon.Memory{PSS: idle}, Loaded: daemon.Memory{PSS: loaded}, Inodes: 100,
		UserPerInode: user, KernelPerInode: kernel, FDsPerInode: 1}
}

func TestMemoryFinish(t *testing.T) {
	m := &Memory{Vfsd: &MemAgg{}, Ref: &MemAgg{}, Kernel: true}
	m.Vfsd.Add(memRun(10<<20, 12<<20, 700, -20))
	m.Vfsd.Add(memRun(12<<20, 13<<20, 600, 10))
	m.Vfsd.Add(memRun(11<<20, 14<<20, 800, 0))
	m.Ref.Add(memRun(2<<20, 3<<20, 200, 1500))
	m.Ref.Fail(errors.New("boom\nmore"))
	rows := []*Row{
		{Workload: "getattr", Depth: 1, Queues: 1, Vfsd: &Agg{Runs: []hostload.Result{{MemPSS: 5 << 20}}},
			Ref: &Agg{Runs: []hostload.Result{{MemPSS: 3 << 20}}}},
		{Workload: "readdirplus", Depth: 32, Queues: 2, Vfsd: &Agg{Runs: []hostload.Result{{MemPSS: 9 << 20}, {MemPSS: 7 << 20}}}},
	}
	m.Finish(rows)
	v, r := m.Vfsd, m.Ref
	if v.IdlePSS != 11<<20 || v.LoadedPSS != 13<<20 || v.UserPerInode != 700 || v.KernelPerInode != 0 || v.Inodes != 100 {
		t.Fatalf("vfsd medians: %+v", v)
	}
	if v.HostMax != 9<<20 || v.HostMaxAt != "readdirplus d32 q2" || r.HostMax != 3<<20 || r.HostMaxAt != "getattr d1" {
		t.Fatalf("host maxima: vfsd %d at %q, ref %d at %q", v.HostMax, v.HostMaxAt, r.HostMax, r.HostMaxAt)
	}
	if m.IdleRatio != 5.5 || m.PerInodeRatio != 700.0/1700 {
		t.Fatalf("ratios: idle %v, per inode %v", m.IdleRatio, m.PerInodeRatio)
	}
	if len(r.Errors) != 1 || r.Errors[0] != "boom" {
		t.Fatalf("errors: %q", r.Errors)
	}
	var b bytes.Buffer
	WriteMemoryTable(&b, m)
	for _, want := range []string{"11.0 MiB", "1700 B", "5.50", "0.41", "readdirplus d32 q2"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// A side without runs: no ratios, FAILED in the table.
	m = &Memory{Vfsd: &MemAgg{}, Ref: &MemAgg{}}
	m.Vfsd.Add(memRun(1<<20, 2<<20, 100, 0))
	m.Finish(nil)
	b.Reset()
	WriteMemoryTable(&b, m)
	if m.IdleRatio != 0 || m.PerInodeRatio != 0 || !strings.Contains(b.String(), "FAILED") {
		t.Fatalf("one-sided memory: %+v\n%s", m, b.String())
	}
}
