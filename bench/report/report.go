package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"vfsd/bench/hostload"
)

// Report is one harness run.
type Report struct {
	Started  time.Time     `json:"started"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Machine  Machine       `json:"machine"`
	Settings any           `json:"settings"`
	Host     []*Row        `json:"host,omitempty"`
	// Polled are depth-1 host rows with a frontend that polls for its
	// replies before sleeping (harness Options.Polled).
	Polled   []*Row      `json:"host_polled_client,omitempty"`
	Profiles []*Profile  `json:"profiles,omitempty"`
	Memory   *Memory     `json:"memory,omitempty"`
	Guest    []*GuestRow `json:"guest,omitempty"`
	// Notes are things the reader must know: skipped parts, failed runs.
	Notes []string `json:"notes,omitempty"`
}

// Machine describes where the numbers come from.
type Machine struct {
	Kernel    string  `json:"kernel"`
	CPUs      int     `json:"cpus"`
	LoadStart float64 `json:"loadavg1_start"`
	LoadEnd   float64 `json:"loadavg1_end"`
	// BusyStart is the share of all CPUs that was busy in the second
	// before the first run (from /proc/stat; -1 when unreadable): the load
	// average still holds the build that comes before a run.
	BusyStart   float64 `json:"cpu_busy_start"`
	VfsdBin     string  `json:"vfsd_bin"`
	VfsdVersion string  `json:"vfsd_commit,omitempty"`
	RefBin      string  `json:"ref_bin"`
}

// Row is one host workload at one depth and queue count.
type Row struct {
	Workload string `json:"workload"`
	Depth    int    `json:"depth"`
	Queues   int    `json:"queues"`
	Vfsd     *Agg   `json:"vfsd,omitempty"`
	Ref      *Agg   `json:"ref,omitempty"` // nil for queues > 1 (the reference serves one)
	// Plain is vfsd --no-supervisor (no supervisor, journal, fd store or
	// inflight region: recovery off), measured in the same interleaving
	// when the harness runs with RecoveryCost; RecoveryRatio is Vfsd/Plain
	// ops/s.
	Plain         *Agg    `json:"plain,omitempty"`
	RecoveryRatio float64 `json:"recovery_ratio,omitempty"`
	Floor         *Agg    `json:"floor,omitempty"`
	// OpsRatio is vfsd/reference ops/s, P99Ratio vfsd/reference p99
	// latency (0 when either side is missing).
	OpsRatio float64 `json:"ops_ratio,omitempty"`
	P99Ratio float64 `json:"p99_ratio,omitempty"`
	// OpsRatioRange and RecoveryRatioRange are the lowest and highest
	// ratio of one repetition's runs (run i against run i: the runs of
	// a repetition are adjacent in time); zero when a side lost a run.
	OpsRatioRange      [2]float64 `json:"ops_ratio_range,omitzero"`
	RecoveryRatioRange [2]float64 `json:"recovery_ratio_range,omitzero"`
}

// Agg summarises the repeated runs of one configuration on one daemon (or
// the floor): the median of the per-run throughputs and CPU costs, and
// percentiles over every sample of every run pooled.
type Agg struct {
	Runs      []hostload.Result `json:"runs"`
	Errors    []string          `json:"errors,omitempty"` // runs that failed outright
	OpsPerSec float64           `json:"ops_per_sec"`
	OpsMin    float64           `json:"ops_per_sec_min"`
	OpsMax    float64           `json:"ops_per_sec_max"`
	MBPerSec  float64           `json:"mb_per_sec,omitempty"`
	CPUPerOp  time.Duration     `json:"cpu_per_op_ns"`
	Samples   int               `json:"samples"`
	P50       time.Duration     `json:"p50_ns"`
	P99       time.Duration     `json:"p99_ns"`
	P999      time.Duration     `json:"p999_ns"`
	Max       time.Duration     `json:"max_ns"`
	// Hist is the pooled latency histogram: counts per bucket, bucket i
	// holding samples in [HistBase*2^(i/4), HistBase*2^((i+1)/4)).
	Hist []uint64 `json:"hist_quarter_octaves"`
	// Lat is every pooled sample, sorted (for the plots; not in the JSON).
	Lat []time.Duration `json:"-"`
}

// HistBase is the lower edge of Agg.Hist's first bucket.
const HistBase = 100 * time.Nanosecond

// Add folds one run into a.
func (a *Agg) Add(r hostload.Result) {
	a.Lat = append(a.Lat, r.Lat...)
	r.Lat = nil
	a.Runs = append(a.Runs, r)
}

// Fail records a run that produced no result.
func (a *Agg) Fail(err error) { a.Errors = append(a.Errors, FirstLine(err)) }

// FirstLine is an error's first line (a failed daemon run appends the
// daemon's output to its error).
func FirstLine(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return msg
}

// Finish computes the summary fields after the last Add.
func (a *Agg) Finish() {
	if len(a.Runs) == 0 {
		return
	}
	ops := make([]float64, len(a.Runs))
	mbs := make([]float64, len(a.Runs))
	cpu := make([]float64, len(a.Runs))
	for i, r := range a.Runs {
		ops[i], mbs[i], cpu[i] = r.OpsPerSec, r.MBPerSec, float64(r.CPUPerOp)
	}
	a.OpsPerSec, a.MBPerSec, a.CPUPerOp = median(ops), median(mbs), time.Duration(median(cpu))
	a.OpsMin, a.OpsMax = slices.Min(ops), slices.Max(ops)
	slices.Sort(a.Lat)
	a.Samples = len(a.Lat)
	a.P50, a.P99, a.P999 = hostload.Percentile(a.Lat, 0.5), hostload.Percentile(a.Lat, 0.99), hostload.Percentile(a.Lat, 0.999)
	if len(a.Lat) > 0 {
		a.Max = a.Lat[len(a.Lat)-1]
	}
	a.Hist = a.Hist[:0]
	for _, l := range a.Lat {
		i := 0
		if l > HistBase {
			i = int(4 * math.Log2(float64(l)/float64(HistBase)))
		}
		for len(a.Hist) <= i {
			a.Hist = append(a.Hist, 0)
		}
		a.Hist[i]++
	}
}

// ErrCount is the number of failed operations over the runs.
func (a *Agg) ErrCount() (n uint64, first string) {
	for _, r := range a.Runs {
		n += r.Errors
		if first == "" {
			first = r.FirstError
		}
	}
	return n, first
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Ratios fills in the row's vfsd/reference ratios.
func (r *Row) Ratios() {
	r.OpsRatio, r.P99Ratio, r.RecoveryRatio = 0, 0, 0
	r.OpsRatioRange, r.RecoveryRatioRange = [2]float64{}, [2]float64{}
	if r.Vfsd != nil && r.Plain != nil && len(r.Vfsd.Runs) > 0 && len(r.Plain.Runs) > 0 && r.Plain.OpsPerSec > 0 {
		r.RecoveryRatio = r.Vfsd.OpsPerSec / r.Plain.OpsPerSec
		r.RecoveryRatioRange = runRatios(r.Vfsd, r.Plain)
	}
	if r.Vfsd == nil || r.Ref == nil || len(r.Vfsd.Runs) == 0 || len(r.Ref.Runs) == 0 {
		return
	}
	if r.Ref.OpsPerSec > 0 {
		r.OpsRatio = r.Vfsd.OpsPerSec / r.Ref.OpsPerSec
		r.OpsRatioRange = runRatios(r.Vfsd, r.Ref)
	}
	if r.Ref.P99 > 0 {
		r.P99Ratio = float64(r.Vfsd.P99) / float64(r.Ref.P99)
	}
}

// runRatios is the range of a's run i ops/s over b's run i: zero unless
// both hold every repetition (a failed run would pair runs of different
// repetitions).
func runRatios(a, b *Agg) [2]float64 {
	if len(a.Runs) != len(b.Runs) || len(a.Errors) > 0 || len(b.Errors) > 0 {
		return [2]float64{}
	}
	lo, hi := math.Inf(1), 0.0
	for i := range a.Runs {
		if b.Runs[i].OpsPerSec <= 0 {
			return [2]float64{}
		}
		q := a.Runs[i].OpsPerSec / b.Runs[i].OpsPerSec
		lo, hi = min(lo, q), max(hi, q)
	}
	return [2]float64{lo, hi}
}

// ratioRange renders a per-repetition range: 0.91–1.24 ("-" if unknown).
func ratioRange(r [2]float64) string {
	if r[0] <= 0 {
		return "-"
	}
	return ratio(r[0]) + "–" + ratio(r[1])
}

// Profile is the CPU profile of vfsd under one workload.
type Profile struct {
	Workload string `json:"workload"`
	Depth    int    `json:"depth"`
	File     string `json:"file,omitempty"` // the raw profile, for go tool pprof
	Top      any    `json:"top,omitempty"`
	Text     string `json:"text,omitempty"`
	Error    string `json:"error,omitempty"`
}

// GuestRow is one fio (or metadata) job in the guest, one cache mode.
type GuestRow struct {
	Job   string      `json:"job"`
	Cache string      `json:"cache"`
	Vfsd  *GuestValue `json:"vfsd,omitempty"`
	Ref   *GuestValue `json:"ref,omitempty"`
	// Ratio is vfsd/reference of the job's main figure (IOPS, or ops/s),
	// each side's best boot; MeanRatio the same over each side's mean of
	// its boots.
	Ratio     float64 `json:"ratio,omitempty"`
	MeanRatio float64 `json:"mean_ratio,omitempty"`
	P99Ratio  float64 `json:"p99_ratio,omitempty"`
}

// GuestValue is what one daemon achieved on one guest job.
type GuestValue struct {
	IOPS     float64       `json:"iops"` // or bogo ops/s for the metadata job
	MBPerSec float64       `json:"mb_per_sec,omitempty"`
	P50      time.Duration `json:"clat_p50_ns,omitempty"`
	P99      time.Duration `json:"clat_p99_ns,omitempty"`
	Error    string        `json:"error,omitempty"`
	// BootsIOPS: every successful boot's IOPS when the value is the best
	// of several boots (guestfio.Options.Boots).
	BootsIOPS []float64 `json:"boots_iops,omitempty"`
}

// WriteJSON writes r to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Dur renders a latency compactly: 850ns, 12.3µs, 4.56ms, 1.23s.
func Dur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < 100*time.Microsecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// Rate renders ops/s with a k/M suffix.
func Rate(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func ratio(v float64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func cpuUs(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	us := float64(d) / 1e3
	if us >= 100 {
		return fmt.Sprintf("%.0f", us)
	}
	return fmt.Sprintf("%.2f", us)
}

// WriteHostTable prints the host rows as one aligned table.
func WriteHostTable(w io.Writer, rows []*Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tdepth\tq\t|\tvfsd ops/s\tp50\tp99\tp99.9\t|\tref ops/s\tp50\tp99\tp99.9\t|\tops ratio\trepeats\tp99 ratio\t|\tcpu µs/op vfsd\tref\t|\tfloor ops/s\tcpu µs/op\t|\tvfsd/floor\t")
	for _, r := range rows {
		v, f := r.Vfsd, r.Floor
		cols := []string{r.Workload, fmt.Sprint(r.Depth), fmt.Sprint(r.Queues)}
		side := func(a *Agg) []string {
			if a == nil || len(a.Runs) == 0 {
				s := "n/a"
				if a != nil && len(a.Errors) > 0 {
					s = "FAILED"
				}
				return []string{s, "", "", ""}
			}
			return []string{Rate(a.OpsPerSec), Dur(a.P50), Dur(a.P99), Dur(a.P999)}
		}
		cols = append(cols, bar(side(v))...)
		cols = append(cols, bar(side(r.Ref))...)
		cols = append(cols, bar([]string{ratio(r.OpsRatio), ratioRange(r.OpsRatioRange), ratio(r.P99Ratio)})...)
		cpu := []string{"-", "-"}
		if v != nil && len(v.Runs) > 0 {
			cpu[0] = cpuUs(v.CPUPerOp)
		}
		if r.Ref != nil && len(r.Ref.Runs) > 0 {
			cpu[1] = cpuUs(r.Ref.CPUPerOp)
		}
		cols = append(cols, bar(cpu)...)
		fl := []string{"-", "-"}
		toFloor := "-"
		if f != nil && len(f.Runs) > 0 {
			fl = []string{Rate(f.OpsPerSec), cpuUs(f.CPUPerOp)}
			if v != nil && len(v.Runs) > 0 && f.OpsPerSec > 0 {
				toFloor = ratio(v.OpsPerSec / f.OpsPerSec)
			}
		}
		cols = append(cols, bar(fl)...)
		cols = append(cols, bar([]string{toFloor})...)
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	tw.Flush()
}

// WriteRecoveryTable prints, for the rows that have it, vfsd (supervised:
// recovery on) against vfsd --no-supervisor (recovery off).
func WriteRecoveryTable(w io.Writer, rows []*Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tdepth\t|\trecovery on ops/s\tp99\t|\toff ops/s\tp99\t|\ton/off\trepeats\t|\tcpu µs/op on\toff\t")
	for _, r := range rows {
		if r.Plain == nil || r.Vfsd == nil || len(r.Vfsd.Runs) == 0 {
			continue
		}
		off := []string{"FAILED", "", "", "", ""}
		if len(r.Plain.Runs) > 0 {
			off = []string{Rate(r.Plain.OpsPerSec), Dur(r.Plain.P99), ratio(r.RecoveryRatio),
				ratioRange(r.RecoveryRatioRange), cpuUs(r.Plain.CPUPerOp)}
		}
		cols := []string{r.Workload, fmt.Sprint(r.Depth)}
		cols = append(cols, bar([]string{Rate(r.Vfsd.OpsPerSec), Dur(r.Vfsd.P99)})...)
		cols = append(cols, bar(off[:2])...)
		cols = append(cols, bar(off[2:4])...)
		cols = append(cols, bar([]string{cpuUs(r.Vfsd.CPUPerOp), off[4]})...)
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	tw.Flush()
}

// bar puts the group separator column before a group of columns.
func bar(c []string) []string {
	return append([]string{"|"}, c...)
}

// WriteGuestTable prints the guest rows.
func WriteGuestTable(w io.Writer, rows []*GuestRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "job\tcache\t|\tvfsd IOPS\tMB/s\tclat p50\tp99\t|\tref IOPS\tMB/s\tclat p50\tp99\t|\tratio\tmean ratio\tp99 ratio\t")
	for _, r := range rows {
		side := func(g *GuestValue) []string {
			switch {
			case g == nil:
				return []string{"|", "n/a", "", "", ""}
			case g.Error != "":
				return []string{"|", "FAILED", "", "", ""}
			}
			mb := "-"
			if g.MBPerSec > 0 {
				mb = fmt.Sprintf("%.1f", g.MBPerSec)
			}
			return []string{"|", Rate(g.IOPS), mb, Dur(g.P50), Dur(g.P99)}
		}
		cols := []string{r.Job, r.Cache}
		cols = append(cols, side(r.Vfsd)...)
		cols = append(cols, side(r.Ref)...)
		cols = append(cols, "|", ratio(r.Ratio), ratio(r.MeanRatio), ratio(r.P99Ratio))
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	tw.Flush()
}
