package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"vfsd/bench/hostload"
)

// Memory compares what the daemons hold (hostload.MeasureMemory), plus the
// largest footprint each had at the end of a host run.
type Memory struct {
	Vfsd *MemAgg `json:"vfsd"`
	Ref  *MemAgg `json:"ref"`
	// Kernel says whether kernel memory was measured (root only).
	Kernel bool `json:"kernel_measured"`
	// IdleRatio is vfsd/reference idle PSS; PerInodeRatio vfsd/reference
	// memory per known node, user plus kernel (0 when a side is missing).
	IdleRatio     float64 `json:"idle_ratio,omitempty"`
	PerInodeRatio float64 `json:"per_inode_ratio,omitempty"`
}

// MemAgg summarises one daemon's memory runs: medians over the runs.
type MemAgg struct {
	Runs           []hostload.MemResult `json:"runs"`
	Errors         []string             `json:"errors,omitempty"`
	Inodes         int                  `json:"inodes"`
	IdlePSS        uint64               `json:"idle_pss_bytes"`
	IdleFile       uint64               `json:"idle_file_bytes"`
	LoadedPSS      uint64               `json:"loaded_pss_bytes"`
	UserPerInode   float64              `json:"user_bytes_per_inode"`
	KernelPerInode float64              `json:"kernel_bytes_per_inode"`
	FDsPerInode    float64              `json:"fds_per_inode"`
	// HostMax is the largest end-of-run PSS over the host rows, HostMaxAt
	// that row ("readdirplus d32").
	HostMax   uint64 `json:"host_max_pss_bytes,omitempty"`
	HostMaxAt string `json:"host_max_at,omitempty"`
}

// Add folds one run into a.
func (a *MemAgg) Add(r hostload.MemResult) { a.Runs = append(a.Runs, r) }

// Fail records a run that produced no result.
func (a *MemAgg) Fail(err error) { a.Errors = append(a.Errors, FirstLine(err)) }

// PerInode is user plus kernel memory per known node.
func (a *MemAgg) PerInode() float64 { return a.UserPerInode + a.KernelPerInode }

// finish computes the medians after the last Add.
func (a *MemAgg) finish() {
	if len(a.Runs) == 0 {
		return
	}
	col := func(f func(hostload.MemResult) float64) float64 {
		v := make([]float64, len(a.Runs))
		for i, r := range a.Runs {
			v[i] = f(r)
		}
		return median(v)
	}
	a.Inodes = a.Runs[0].Inodes
	a.IdlePSS = uint64(col(func(r hostload.MemResult) float64 { return float64(r.Idle.PSS) }))
	a.IdleFile = uint64(col(func(r hostload.MemResult) float64 { return float64(r.Idle.File) }))
	a.LoadedPSS = uint64(col(func(r hostload.MemResult) float64 { return float64(r.Loaded.PSS) }))
	a.UserPerInode = col(func(r hostload.MemResult) float64 { return r.UserPerInode })
	a.KernelPerInode = col(func(r hostload.MemResult) float64 { return r.KernelPerInode })
	a.FDsPerInode = col(func(r hostload.MemResult) float64 { return r.FDsPerInode })
}

// hostMax finds the largest end-of-run PSS of one daemon over the rows.
func (a *MemAgg) hostMax(rows []*Row, side func(*Row) *Agg) {
	for _, r := range rows {
		g := side(r)
		if g == nil {
			continue
		}
		for _, run := range g.Runs {
			if run.MemPSS > a.HostMax {
				a.HostMax = run.MemPSS
				a.HostMaxAt = fmt.Sprintf("%s d%d", r.Workload, r.Depth)
				if r.Queues > 1 {
					a.HostMaxAt += fmt.Sprintf(" q%d", r.Queues)
				}
			}
		}
	}
}

// Finish computes both sides' medians, the host maxima over rows and the
// ratios.
func (m *Memory) Finish(rows []*Row) {
	for _, s := range []struct {
		a    *MemAgg
		side func(*Row) *Agg
	}{{m.Vfsd, func(r *Row) *Agg { return r.Vfsd }}, {m.Ref, func(r *Row) *Agg { return r.Ref }}} {
		if s.a != nil {
			s.a.finish()
			s.a.hostMax(rows, s.side)
		}
	}
	m.IdleRatio, m.PerInodeRatio = 0, 0
	if m.Vfsd == nil || m.Ref == nil || len(m.Vfsd.Runs) == 0 || len(m.Ref.Runs) == 0 {
		return
	}
	if m.Ref.IdlePSS > 0 {
		m.IdleRatio = float64(m.Vfsd.IdlePSS) / float64(m.Ref.IdlePSS)
	}
	if p := m.Ref.PerInode(); p > 0 {
		m.PerInodeRatio = max(m.Vfsd.PerInode(), 0) / p
	}
}

// MiB renders a byte count in MiB with one decimal.
func MiB(b uint64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func bytesPer(v float64) string { return fmt.Sprintf("%.0f B", v) }

// WriteMemoryTable prints the memory comparison.
func WriteMemoryTable(w io.Writer, m *Memory) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "daemon\t|\tidle PSS\tof it files\t|\tnodes known\tPSS\t|\tper node: user\tkernel\ttotal\tfds\t|\tlargest PSS after a host run\tat\t")
	row := func(name string, a *MemAgg) {
		if a == nil {
			return
		}
		if len(a.Runs) == 0 {
			fmt.Fprintf(tw, "%s\t|\tFAILED\t\t|\t\t\t|\t\t\t\t\t|\t\t\t\n", name)
			return
		}
		kernel := "-"
		if m.Kernel {
			kernel = bytesPer(a.KernelPerInode)
		}
		cols := []string{name, "|", MiB(a.IdlePSS), MiB(a.IdleFile), "|", fmt.Sprint(a.Inodes), MiB(a.LoadedPSS),
			"|", bytesPer(a.UserPerInode), kernel, bytesPer(a.PerInode()), fmt.Sprintf("%.2f", a.FDsPerInode),
			"|", MiB(a.HostMax), a.HostMaxAt}
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	row("vfsd", m.Vfsd)
	row("reference", m.Ref)
	per := ratio(m.PerInodeRatio)
	if !m.Kernel && m.PerInodeRatio > 0 {
		per += " (user)"
	}
	fmt.Fprintf(tw, "vfsd/ref\t|\t%s\t\t|\t\t\t|\t\t\t%s\t\t|\t\t\t\n", ratio(m.IdleRatio), per)
	tw.Flush()
}
