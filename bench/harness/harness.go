package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"
	"golang.org/x/sys/unix"

	"vfsd/bench/guestfio"
	"vfsd/bench/hostload"
	"vfsd/bench/prof"
	"vfsd/bench/report"
	"vfsd/tools/daemon"
)

// Options configure a harness run.
type Options struct {
	VfsdBin, RefBin string
	Workloads       []hostload.Workload
	Depths          []int
	// VfsdQueues adds rows where vfsd serves this many request queues (the
	// reference serves one); <= 1: none.
	VfsdQueues int
	// RecoveryCost adds, for one request queue, vfsd --no-supervisor
	// (recovery off) to every row's interleaving.
	RecoveryCost     bool
	Repeat           int
	Warmup, Duration time.Duration
	Cache            string
	FileSize         int64
	DirEntries       int
	ReaddirSize      int
	// ClientPoll: how long the frontend's waiting request polls for its
	// reply before sleeping (tools/frontend PollCompletions).
	ClientPoll time.Duration
	// Polled adds depth-1 rows (one request queue, vfsd and the reference
	// interleaved) of these workloads with a frontend that polls for
	// PolledClientPoll before sleeping, as a KVM vCPU halt-polls: a
	// daemon's notification then finds the waiter awake instead of paying
	// its wake-up (report.Report.Polled).
	Polled           []hostload.Workload
	PolledClientPoll time.Duration
	// ShareDir is the host directory the daemons serve (default: a new
	// temporary directory, removed at the end).
	ShareDir string
	// OutDir receives results.json, table.txt, the plots and profiles.
	OutDir string
	Floor  bool
	// Profile: collect a CPU profile of vfsd per workload (when it has
	// --pprof-addr), ProfileSeconds long, ProfileTop functions printed.
	Profile        bool
	ProfileSeconds int
	ProfileTop     int
	Plots          bool
	// Memory measures both daemons' memory (hostload.MeasureMemory),
	// Repeat times each, after the host rows; MemoryKernel adds the
	// kernel memory they pin (drops the machine's dentry and inode caches;
	// root only).
	Memory, MemoryKernel bool

	Guest     bool
	GuestOpts guestfio.Options

	// Out gets the tables, Progress the progress lines.
	Out      io.Writer
	Progress io.Writer
}

// Settings is what of Options goes into the JSON.
type Settings struct {
	Workloads      []string      `json:"workloads"`
	Depths         []int         `json:"depths"`
	VfsdQueues     int           `json:"vfsd_queues"`
	RecoveryCost   bool          `json:"recovery_cost"`
	Repeat         int           `json:"repeat"`
	Warmup         time.Duration `json:"warmup_ns"`
	Duration       time.Duration `json:"duration_ns"`
	Cache          string        `json:"cache"`
	FileSize       int64         `json:"file_size"`
	DirEntries     int           `json:"dir_entries"`
	ReaddirSize    int           `json:"readdir_size"`
	ClientPoll     time.Duration `json:"client_poll_ns"`
	Polled         []string      `json:"polled,omitempty"`
	PolledPoll     time.Duration `json:"polled_client_poll_ns,omitempty"`
	ShareDir       string        `json:"share_dir"`
	Guest          bool          `json:"guest"`
	GuestJobs      []string      `json:"guest_jobs,omitempty"`
	GuestCaches    []string      `json:"guest_caches,omitempty"`
	GuestRuntime   time.Duration `json:"guest_runtime_ns,omitempty"`
	GuestBoots     int           `json:"guest_boots,omitempty"`
	Memory         bool          `json:"memory"`
	MemoryKernel   bool          `json:"memory_kernel,omitempty"`
	ProfileSeconds int           `json:"profile_seconds,omitempty"`
}

// config is one row's shape.
type config struct{ depth, queues int }

func (o *Options) configs() []config {
	var cs []config
	for _, d := range o.Depths {
		cs = append(cs, config{d, 1})
	}
	if o.VfsdQueues > 1 {
		for _, d := range o.Depths {
			cs = append(cs, config{d, o.VfsdQueues})
		}
	}
	return cs
}

// plannedRuns counts the measured runs (for the progress line and the estimate).
func (o *Options) plannedRuns(profile bool) (daemonRuns, floorRuns, profRuns int) {
	for _, c := range o.configs() {
		n := o.Repeat
		if c.queues == 1 {
			n *= 2
			if o.RecoveryCost {
				n += o.Repeat
			}
		}
		daemonRuns += n * len(o.Workloads)
		if o.Floor {
			floorRuns += len(o.Workloads)
		}
	}
	if profile {
		profRuns = len(o.Workloads)
	}
	daemonRuns += 2 * o.Repeat * len(o.polled())
	if o.Memory {
		daemonRuns += 2 * o.Repeat
	}
	return
}

// polled is Polled when its client polls (nothing otherwise).
func (o *Options) polled() []hostload.Workload {
	if o.PolledClientPoll <= 0 {
		return nil
	}
	return o.Polled
}

// Estimate is a rough wall time of the run (host part, and guest part).
func (o *Options) Estimate(profile bool) (host, guest time.Duration) {
	d, f, p := o.plannedRuns(profile)
	per := o.Warmup + o.Duration
	host = time.Duration(d)*(per+300*time.Millisecond) + time.Duration(f)*(per+50*time.Millisecond) +
		time.Duration(p)*(time.Duration(o.ProfileSeconds)*time.Second+o.Warmup+500*time.Millisecond)
	if o.Guest {
		guest = guestfio.Estimate(o.GuestOpts)
	}
	return host, guest
}

type progress struct {
	w           io.Writer
	start       time.Time
	done, total int
}

func (p *progress) line(format string, args ...any) {
	if p.w == nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	el := time.Since(p.start).Round(time.Second)
	if p.total > 0 {
		fmt.Fprintf(p.w, "[%3d/%d %v] %s\n", p.done, p.total, el, msg)
	} else {
		fmt.Fprintf(p.w, "[%v] %s\n", el, msg)
	}
}

// Run runs the benchmark and returns its report (also when ctx ends early:
// what was measured until then, with a note).
func Run(ctx context.Context, o Options) (*report.Report, error) {
	if o.Repeat <= 0 {
		o.Repeat = 1
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.RefBin == "" {
		o.RefBin = daemon.VirtiofsdPath
	}
	for _, b := range []string{o.VfsdBin, o.RefBin} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("harness: daemon binary: %w", err)
		}
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	rep := &report.Report{Started: time.Now(), Machine: machine(o)}
	rep.Settings = o.settings()

	profile := false
	if o.Profile {
		if prof.Supported(ctx, o.VfsdBin) {
			profile = true
		} else {
			rep.Notes = append(rep.Notes, fmt.Sprintf("no CPU profiles: %s has no %s option (yet)", o.VfsdBin, prof.Flag))
		}
	}
	d, f, p := o.plannedRuns(profile)
	pr := &progress{w: o.Progress, start: time.Now(), total: d + f + p}
	hostEst, guestEst := o.Estimate(profile)
	pr.line("plan: %d daemon runs, %d floor runs, %d profile runs (about %v), guest: %v", d, f, p,
		hostEst.Round(time.Second), guestEst.Round(time.Second))

	shareDir := o.ShareDir
	if shareDir == "" {
		var err error
		if shareDir, err = os.MkdirTemp("", "vfsd-bench-share-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(shareDir)
	}
	share, err := hostload.PrepareShare(shareDir, o.FileSize, o.DirEntries)
	if err != nil {
		return nil, fmt.Errorf("harness: prepare share: %w", err)
	}
	// Write back what the share (and the build before the run) left
	// dirty now, not in the kernel's flusher threads during the first rows.
	unix.Sync()
	rep.Machine.BusyStart = cpuBusy(time.Second)
	sockDir, err := os.MkdirTemp("", "vfsd-bench-sock-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)

	finish := func() (*report.Report, error) {
		rep.Elapsed = time.Since(rep.Started)
		rep.Machine.LoadEnd = loadAvg()
		if ctx.Err() != nil {
			rep.Notes = append(rep.Notes, "interrupted: the report holds what was measured until then")
		}
		return rep, writeOutputs(o, rep)
	}

	// measureRow runs the kinds of daemon for row, interleaved, o.Repeat
	// times, and finishes it; false when ctx ended.
	measureRow := func(row *report.Row, w hostload.Workload, c config, kinds []string, clientPoll time.Duration, tag string) bool {
		ok := interleave(ctx, o.Repeat, kinds, func(name string, rep1 int) {
			pr.done++
			label := name
			if name == "plain" {
				label = "vfsd --no-supervisor"
			}
			pr.line("%s depth=%d queues=%d %s%s (%d/%d)", w.Name, c.depth, c.queues, label, tag, rep1, o.Repeat)
			k, agg, bin := daemon.Vfsd, row.Vfsd, o.VfsdBin
			var extra []string
			switch name {
			case "virtiofsd":
				k, agg, bin = daemon.Virtiofsd, row.Ref, o.RefBin
			case "plain":
				agg, extra = row.Plain, []string{"--no-supervisor"}
			}
			res, err := hostload.RunDaemon(ctx, hostload.DaemonConfig{Kind: k, Bin: bin, Cache: o.Cache,
				Workload: w, Depth: c.depth, Queues: c.queues, Warmup: o.Warmup, Duration: o.Duration,
				Share: share, SockDir: sockDir, ReaddirSize: o.ReaddirSize, ClientPoll: clientPoll, Extra: extra})
			if err != nil {
				if ctx.Err() == nil {
					agg.Fail(err)
					pr.line("  FAILED: %s", report.FirstLine(err))
				}
				return
			}
			if res.Errors > 0 {
				pr.line("  %d of %d operations failed, first: %s", res.Errors, res.Ops, res.FirstError)
			}
			agg.Add(res)
		})
		if !ok {
			return false
		}
		row.Vfsd.Finish()
		if row.Ref != nil {
			row.Ref.Finish()
		}
		if row.Plain != nil {
			row.Plain.Finish()
		}
		row.Ratios()
		return true
	}

	for _, w := range o.Workloads {
		for _, c := range o.configs() {
			row := &report.Row{Workload: w.Name, Depth: c.depth, Queues: c.queues, Vfsd: &report.Agg{}}
			if c.queues == 1 {
				row.Ref = &report.Agg{}
				if o.RecoveryCost {
					row.Plain = &report.Agg{}
				}
			}
			rep.Host = append(rep.Host, row)
			// "plain" is vfsd --no-supervisor (recovery off).
			kinds := []string{"vfsd", "virtiofsd", "plain"}
			switch {
			case c.queues > 1:
				kinds = kinds[:1]
			case !o.RecoveryCost:
				kinds = kinds[:2]
			}
			if !measureRow(row, w, c, kinds, o.ClientPoll, "") {
				return finish()
			}
			if o.Floor {
				if ctx.Err() != nil {
					return finish()
				}
				pr.done++
				pr.line("%s floor, %d threads", w.Name, c.depth*c.queues)
				row.Floor = &report.Agg{}
				res, err := hostload.RunFloor(ctx, hostload.FloorConfig{Workload: w, Workers: c.depth * c.queues,
					Warmup: o.Warmup, Duration: o.Duration, Share: share, ReaddirSize: o.ReaddirSize})
				if err != nil {
					if ctx.Err() != nil {
						return finish()
					}
					row.Floor.Fail(err)
					pr.line("  FAILED: %s", report.FirstLine(err))
				} else {
					row.Floor.Add(res)
				}
				row.Floor.Finish()
			}
			noteErrors(rep, row)
		}
		if profile {
			if ctx.Err() != nil {
				return finish()
			}
			pr.done++
			pr.line("%s: CPU profile of vfsd, depth=%d, %ds", w.Name, maxDepth(o.Depths), o.ProfileSeconds)
			rep.Profiles = append(rep.Profiles, profileRun(ctx, o, w, share, sockDir))
		}
		if o.Plots {
			plotWorkload(o, rep, w.Name)
		}
	}

	for _, w := range o.polled() {
		row := &report.Row{Workload: w.Name, Depth: 1, Queues: 1, Vfsd: &report.Agg{}, Ref: &report.Agg{}}
		rep.Polled = append(rep.Polled, row)
		tag := fmt.Sprintf(", client polls %v", o.PolledClientPoll)
		if !measureRow(row, w, config{1, 1}, []string{"vfsd", "virtiofsd"}, o.PolledClientPoll, tag) {
			return finish()
		}
		noteErrors(rep, row)
	}

	if o.Memory {
		if !measureMemory(ctx, o, rep, pr, share, sockDir) {
			return finish()
		}
	}

	if o.Guest && ctx.Err() == nil {
		g := o.GuestOpts
		g.VfsdBin, g.RefBin = o.VfsdBin, o.RefBin
		g.Progress = func(format string, args ...any) { pr.line(format, args...) }
		rows, notes, err := guestfio.Run(ctx, g)
		rep.Guest = rows
		rep.Notes = append(rep.Notes, notes...)
		if err != nil && ctx.Err() == nil {
			rep.Notes = append(rep.Notes, "guest benchmark: "+err.Error())
		}
	}
	return finish()
}

// measureMemory fills rep.Memory: both daemons, o.Repeat times each, the
// order alternating; false when ctx ended.
func measureMemory(ctx context.Context, o Options, rep *report.Report, pr *progress, share *hostload.Share, sockDir string) bool {
	m := &report.Memory{Vfsd: &report.MemAgg{}, Ref: &report.MemAgg{}, Kernel: o.MemoryKernel}
	rep.Memory = m
	kinds := []daemon.Kind{daemon.Vfsd, daemon.Virtiofsd}
	ok := interleave(ctx, o.Repeat, kinds, func(k daemon.Kind, rep1 int) {
		pr.done++
		pr.line("memory: %s, %d nodes known (%d/%d)", k, share.DirEntries, rep1, o.Repeat)
		agg, bin := m.Vfsd, o.VfsdBin
		if k == daemon.Virtiofsd {
			agg, bin = m.Ref, o.RefBin
		}
		res, err := hostload.MeasureMemory(ctx, hostload.MemConfig{Kind: k, Bin: bin, Cache: o.Cache, Share: share,
			SockDir: sockDir, ReaddirSize: o.ReaddirSize, Kernel: o.MemoryKernel})
		if err != nil {
			if ctx.Err() == nil {
				agg.Fail(err)
				pr.line("  FAILED: %s", report.FirstLine(err))
				rep.Notes = append(rep.Notes, fmt.Sprintf("memory %s: run failed: %s", k, report.FirstLine(err)))
			}
			return
		}
		agg.Add(res)
	})
	if !ok {
		return false
	}
	m.Finish(rep.Host)
	return true
}

// interleave calls run for every kind, repeat times. Each repetition starts
// with the next kind (ABC, BCA, CAB): no daemon always runs first, right
// after the previous row or in the run's first seconds. False when ctx
// ended.
func interleave[K any](ctx context.Context, repeat int, kinds []K, run func(k K, rep int)) bool {
	for rep := 1; rep <= repeat; rep++ {
		for i := range kinds {
			if ctx.Err() != nil {
				return false
			}
			run(kinds[(i+rep-1)%len(kinds)], rep)
		}
	}
	return ctx.Err() == nil
}

func maxDepth(ds []int) int {
	m := 1
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func noteErrors(rep *report.Report, row *report.Row) {
	for name, a := range map[string]*report.Agg{"vfsd": row.Vfsd, "ref": row.Ref, "floor": row.Floor} {
		if a == nil {
			continue
		}
		where := fmt.Sprintf("%s depth=%d queues=%d %s", row.Workload, row.Depth, row.Queues, name)
		for _, e := range a.Errors {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s: run failed: %s", where, e))
		}
		if n, first := a.ErrCount(); n > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s: %d operations failed (counted in ops/s), first: %s", where, n, first))
		}
	}
}

// profileRun measures one extra vfsd run with the pprof endpoint on, taking
// a CPU profile over its measured window.
func profileRun(ctx context.Context, o Options, w hostload.Workload, share *hostload.Share, sockDir string) *report.Profile {
	depth := maxDepth(o.Depths)
	pp := &report.Profile{Workload: w.Name, Depth: depth}
	addr, err := prof.FreeAddr()
	if err != nil {
		pp.Error = err.Error()
		return pp
	}
	var raw []byte
	var ferr error
	var top prof.Top
	_, err = hostload.RunDaemon(ctx, hostload.DaemonConfig{Kind: daemon.Vfsd, Bin: o.VfsdBin, Cache: o.Cache,
		Extra: []string{prof.Flag + "=" + addr}, Workload: w, Depth: depth, Queues: 1, Warmup: o.Warmup,
		Duration: time.Duration(o.ProfileSeconds) * time.Second, Share: share, SockDir: sockDir, ReaddirSize: o.ReaddirSize,
		ClientPoll: o.ClientPoll, During: func(ctx context.Context, _ *daemon.Daemon) {
			var p *profile.Profile
			p, raw, ferr = prof.Fetch(ctx, addr, o.ProfileSeconds)
			if ferr == nil {
				top, ferr = prof.TopFuncs(p, o.ProfileTop)
			}
		}})
	switch {
	case err != nil:
		pp.Error = "profiled run: " + report.FirstLine(err)
	case ferr != nil:
		pp.Error = ferr.Error()
	default:
		pp.Top = top
		pp.Text = top.Format("    ")
		file := filepath.Join(o.OutDir, "cpu-"+w.Name+".pprof")
		if werr := os.WriteFile(file, raw, 0o644); werr == nil {
			pp.File = file
		}
	}
	return pp
}

func plotWorkload(o Options, rep *report.Report, workload string) {
	var series []report.Series
	var floors []report.Series
	for _, r := range rep.Host {
		if r.Workload != workload {
			continue
		}
		cfg := fmt.Sprintf("depth %d", r.Depth)
		if r.Queues > 1 {
			cfg += fmt.Sprintf(", %d queues", r.Queues)
		}
		dashed := r.Depth > 1
		width := 1.0
		if r.Queues > 1 {
			width = 0.6
		}
		if r.Vfsd != nil && len(r.Vfsd.Lat) > 0 {
			series = append(series, report.Series{Label: "vfsd " + cfg, Kind: "vfsd", Dashed: dashed, Width: width, Lat: r.Vfsd.Lat})
		}
		if r.Ref != nil && len(r.Ref.Lat) > 0 {
			series = append(series, report.Series{Label: "virtiofsd " + cfg, Kind: "ref", Dashed: dashed, Lat: r.Ref.Lat})
		}
		if r.Floor != nil && len(r.Floor.Lat) > 0 && r.Queues == 1 {
			floors = append(floors, report.Series{Label: fmt.Sprintf("syscall floor, %d threads", r.Depth), Kind: "floor",
				Dashed: dashed, Width: 0.7, Lat: r.Floor.Lat})
		}
	}
	series = append(series, floors...)
	if len(series) == 0 {
		return
	}
	path := filepath.Join(o.OutDir, "latency-"+workload+".png")
	if err := report.PlotCDF(path, fmt.Sprintf("%s: latency CDF, vfsd vs virtiofsd (host frontend)", workload), series); err != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("plot %s: %v", workload, err))
	}
}

// writeOutputs prints the tables and writes results.json and table.txt.
func writeOutputs(o Options, rep *report.Report) error {
	var b strings.Builder
	writeText(&b, rep, o.GuestOpts.Boots)
	fmt.Fprint(o.Out, b.String())
	errs := []error{
		os.WriteFile(filepath.Join(o.OutDir, "table.txt"), []byte(b.String()), 0o644),
		rep.WriteJSON(filepath.Join(o.OutDir, "results.json")),
	}
	fmt.Fprintf(o.Out, "\nresults: %s\n", o.OutDir)
	return errors.Join(errs...)
}

func writeText(w io.Writer, rep *report.Report, guestBoots int) {
	m := rep.Machine
	busy := "unknown"
	if m.BusyStart >= 0 {
		busy = fmt.Sprintf("%.0f%%", 100*m.BusyStart)
	}
	fmt.Fprintf(w, "\nvfsd benchmark, %s, %v; kernel %s, %d CPUs, load average %.2f at start, %.2f at end; CPUs busy before the first run: %s\n",
		rep.Started.Format(time.RFC3339), rep.Elapsed.Round(time.Second), m.Kernel, m.CPUs, m.LoadStart, m.LoadEnd, busy)
	fmt.Fprintf(w, "vfsd: %s %s; reference: %s\n", m.VfsdBin, m.VfsdVersion, m.RefBin)
	if m.BusyStart > busyCaveat {
		fmt.Fprintf(w, "CAVEAT: other work kept %.0f%% of the CPUs busy in the second before the first run: numbers are indicative only\n",
			100*m.BusyStart)
	}
	if len(rep.Host) > 0 {
		fmt.Fprintf(w, "\nHost workloads through the project's vhost-user frontend (ops/s: median of the repeats; latency percentiles: all samples pooled;\n")
		fmt.Fprintf(w, "ratio: vfsd/reference; repeats: lowest and highest ratio of one repetition's two runs; cpu µs/op: daemon process tree (user+sys);\n")
		fmt.Fprintf(w, "floor: the same syscalls in-process, depth x queues threads;\n")
		client := "sleeps on the call eventfd at once (-client-poll=0)"
		if st, ok := rep.Settings.(Settings); ok && st.ClientPoll > 0 {
			client = fmt.Sprintf("polls the used ring up to %v before sleeping, as a KVM vCPU halt-polls (-client-poll)", st.ClientPoll)
		}
		fmt.Fprintf(w, "a request waiting for its reply %s)\n\n", client)
		report.WriteHostTable(w, rep.Host)
		var plain bool
		for _, r := range rep.Host {
			plain = plain || r.Plain != nil
		}
		if plain {
			fmt.Fprintf(w, "\nRecovery cost: vfsd as shipped (supervisor, journal, fd store, inflight region) against vfsd --no-supervisor\n")
			fmt.Fprintf(w, "(no recovery), interleaved in the same runs; on/off is the ops/s ratio (target >= 0.90), repeats its lowest and\n")
			fmt.Fprintf(w, "highest value in one repetition\n\n")
			report.WriteRecoveryTable(w, rep.Host)
		}
	}
	if len(rep.Polled) > 0 {
		poll := time.Duration(0)
		if st, ok := rep.Settings.(Settings); ok {
			poll = st.PolledPoll
		}
		fmt.Fprintf(w, "\nDepth 1 with a frontend that polls the used ring up to %v before sleeping, as a KVM vCPU halt-polls\n", poll)
		fmt.Fprintf(w, "(above, the frontend sleeps at once and every reply pays its wake-up inside the daemon's eventfd write; under KVM,\n")
		fmt.Fprintf(w, "a halt-polling vCPU is often awake when the daemon's interrupt comes); vfsd and the reference interleaved as above\n\n")
		report.WriteHostTable(w, rep.Polled)
	}
	for _, p := range rep.Profiles {
		if p.Error != "" {
			fmt.Fprintf(w, "\nvfsd CPU profile, %s depth=%d: %s\n", p.Workload, p.Depth, p.Error)
			continue
		}
		fmt.Fprintf(w, "\nvfsd CPU profile, %s depth=%d (%s):\n%s", p.Workload, p.Depth, p.File, p.Text)
	}
	if m := rep.Memory; m != nil {
		kernel := "not measured (needs root: it drops the dentry and inode caches)"
		if m.Kernel {
			kernel = "slab objects still in use after dropping the reclaimable dentry and inode caches (an open fd pins its file, dentry and inode)"
		}
		fmt.Fprintf(w, "\nMemory (median of the runs): PSS of the daemon's processes, guest RAM left out (files: the part in binary and library\n")
		fmt.Fprintf(w, "pages, which the kernel can drop and read again); idle after INIT, and after READDIRPLUS handed out every entry of the\n")
		fmt.Fprintf(w, "big directory, nothing forgotten. Per node: user = PSS growth, kernel = %s.\n", kernel)
		fmt.Fprintf(w, "Target: per node known, user + kernel <= 1.0x the reference (a guest walking a large tree)\n\n")
		report.WriteMemoryTable(w, m)
	}
	if len(rep.Guest) > 0 {
		boots := "one boot per daemon and cache mode"
		if n := max(guestBoots, 1); n > 1 {
			boots = fmt.Sprintf("best of %d boots per daemon and cache mode, booted ABBA", n)
		}
		fmt.Fprintf(w, "\nIn-guest fio / stress-ng (QEMU TCG guest, %s; IOPS, or bogo ops/s for dentry;\n", boots)
		fmt.Fprintf(w, "clat: fio completion latency; ratio: vfsd/reference; daemon CPU is not measured here)\n\n")
		report.WriteGuestTable(w, rep.Guest)
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintf(w, "\nNotes:\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
}

func (o *Options) settings() Settings {
	s := Settings{Depths: o.Depths, VfsdQueues: o.VfsdQueues, RecoveryCost: o.RecoveryCost, Repeat: o.Repeat, Warmup: o.Warmup,
		Duration: o.Duration, Cache: o.Cache, FileSize: o.FileSize, DirEntries: o.DirEntries,
		ReaddirSize: o.ReaddirSize, ClientPoll: o.ClientPoll, ShareDir: o.ShareDir, Guest: o.Guest,
		Memory: o.Memory, MemoryKernel: o.Memory && o.MemoryKernel}
	for _, w := range o.Workloads {
		s.Workloads = append(s.Workloads, w.Name)
	}
	for _, w := range o.polled() {
		s.Polled = append(s.Polled, w.Name)
	}
	if len(s.Polled) > 0 {
		s.PolledPoll = o.PolledClientPoll
	}
	if o.Guest {
		s.GuestJobs, s.GuestCaches, s.GuestRuntime = o.GuestOpts.Jobs, o.GuestOpts.Caches, o.GuestOpts.Runtime
		s.GuestBoots = max(o.GuestOpts.Boots, 1)
	}
	if o.Profile {
		s.ProfileSeconds = o.ProfileSeconds
	}
	return s
}

func machine(o Options) report.Machine {
	m := report.Machine{CPUs: runtime.NumCPU(), LoadStart: loadAvg(), VfsdBin: o.VfsdBin, RefBin: o.RefBin}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.VfsdVersion = "(tree at " + strings.TrimSpace(string(out)) + ")"
	}
	return m
}

// busyCaveat is the share of the CPUs busy before the first run above
// which the table warns that something else was running.
const busyCaveat = 0.25

// cpuBusy samples /proc/stat over d and returns the share of all CPUs that
// was not idle (idle and iowait count as idle), or -1.
func cpuBusy(d time.Duration) float64 {
	read := func() (busy, total uint64, ok bool) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0, false
		}
		return parseCPUStat(string(b))
	}
	b0, t0, ok0 := read()
	time.Sleep(d)
	b1, t1, ok1 := read()
	if !ok0 || !ok1 || t1 <= t0 {
		return -1
	}
	return float64(b1-b0) / float64(t1-t0)
}

// parseCPUStat reads the aggregate "cpu" line of /proc/stat: the ticks
// spent busy and in total (guest time is already inside user and nice).
func parseCPUStat(stat string) (busy, total uint64, ok bool) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, false
	}
	var v [8]uint64 // user nice system idle iowait irq softirq steal
	for i := 1; i < len(f) && i <= len(v); i++ {
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, 0, false
		}
		v[i-1] = n
	}
	for _, n := range v {
		total += n
	}
	return total - v[3] - v[4], total, true
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
