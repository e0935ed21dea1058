package guestfio

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"vfsd/bench/report"
	"vfsd/tools/guest"
)

//go:embed bench-init.sh
var benchInit []byte

// InitName is where the scenario goes in the initramfs.
const InitName = "bench-init"

// Jobs are the guest jobs, in table order; "dentry" is stress-ng's metadata
// stressor, the others fio.
var Jobs = []string{
	"randread-4k-psync", "randwrite-4k-psync",
	"randread-4k-libaio16", "randwrite-4k-libaio16",
	"seqread-1m", "seqwrite-1m",
	"dentry",
}

// Options configure the guest benchmark.
type Options struct {
	Kernel, Initramfs string // the Makefile's build/kernel/vmlinuz, build/initramfs.cpio.gz
	VfsdBin, RefBin   string
	// Caches are the cache modes to run (vfsd's names: auto, never, ...).
	Caches []string
	Jobs   []string
	// Runtime is each job's length, SizeMiB the fio data file's size.
	Runtime time.Duration
	SizeMiB int
	// WorkDir holds the initramfs, the shares and every boot's logs.
	WorkDir string
	// BootTimeout bounds one boot (default: generous for the job list).
	BootTimeout time.Duration
	// Boots is the number of boots per daemon and cache mode (default 1);
	// the boot order alternates from one round to the next (ABBA), and
	// each daemon's row is its best boot (see Run).
	Boots int
	// Console gets every serial line (nil: none); Progress one line per boot.
	Console  io.Writer
	Progress func(format string, args ...any)
}

// Daemons in boot order within a cache mode.
var daemons = []string{guest.DaemonVfsd, guest.DaemonVirtiofsd}

// bootOrder is the order the daemons boot in for the i-th cache mode.
func bootOrder(i int) []string {
	if i%2 == 1 {
		return []string{daemons[1], daemons[0]}
	}
	return daemons
}

// Available reports whether the kernel and initramfs exist and QEMU is on
// PATH, and if not, why.
func Available(kernel, initramfs string) (bool, string) {
	for _, f := range []string{kernel, initramfs} {
		if _, err := os.Stat(f); err != nil {
			return false, fmt.Sprintf("%s missing (make kernel initramfs)", f)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return false, "qemu-system-x86_64 not found (make deps)"
	}
	return true, ""
}

// Estimate is a rough wall time for o's boots (TCG boot and the jobs).
func Estimate(o Options) time.Duration {
	per := 25*time.Second + time.Duration(len(o.Jobs))*(o.Runtime+3*time.Second)
	return time.Duration(len(o.Caches)*len(daemons)*max(o.Boots, 1)) * per
}

// Run boots the guest for every cache mode and daemon (o.Boots times each)
// and returns one row per job and cache mode, and notes on boots that
// failed.
//
// With several boots a daemon's value for a job is its best boot (highest
// IOPS; the others are in GuestValue.BootsIOPS). A TCG guest's rate moves
// by ±30% and more from boot to boot with whatever else the two cores are
// doing; with vfsd on both sides, single boots gave ratios from 0.37 to
// 1.44 on the 4 KiB psync jobs. A slow boot is a disturbed one more often
// than a fast boot is a lucky one, so the best boot is the steadier figure.
func Run(ctx context.Context, o Options) ([]*report.GuestRow, []string, error) {
	if len(o.Jobs) == 0 {
		o.Jobs = Jobs
	}
	if o.Runtime <= 0 {
		o.Runtime = 5 * time.Second
	}
	if o.SizeMiB <= 0 {
		o.SizeMiB = 64
	}
	if len(o.Caches) == 0 {
		o.Caches = []string{"auto", "never"}
	}
	o.Boots = max(o.Boots, 1)
	for _, j := range o.Jobs {
		if !slices.Contains(Jobs, j) {
			return nil, nil, fmt.Errorf("guestfio: unknown job %q (have %s)", j, strings.Join(Jobs, ", "))
		}
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, nil, err
	}
	initrd := filepath.Join(o.WorkDir, "initramfs-bench.cpio.gz")
	if err := guest.AppendInit(o.Initramfs, initrd, InitName, benchInit); err != nil {
		return nil, nil, fmt.Errorf("guestfio: initramfs: %w", err)
	}
	timeout := o.BootTimeout
	if timeout <= 0 {
		timeout = 2*time.Minute + time.Duration(len(o.Jobs))*(o.Runtime+20*time.Second)
	}
	var rows []*report.GuestRow
	var notes []string
	for ci, cache := range o.Caches {
		byJob := map[string]*report.GuestRow{}
		for _, j := range o.Jobs {
			r := &report.GuestRow{Job: j, Cache: cache}
			byJob[j] = r
			rows = append(rows, r)
		}
		// The first boot of a pair tends to do better (in vfsd-against-
		// vfsd pairs seqread-1m favoured it in 4 of 4, by 2–44%):
		// alternate which daemon boots first from one cache mode to the
		// next, and from one round of boots to the next.
		for round := range o.Boots {
			for _, d := range bootOrder(ci + round) {
				if err := ctx.Err(); err != nil {
					return rows, notes, err
				}
				o.Progress("guest: %s cache=%s: booting (%d jobs, %v each; boot %d of %d)", d, cache, len(o.Jobs), o.Runtime, round+1, o.Boots)
				t0 := time.Now()
				vals, note, err := boot(ctx, o, d, cache, round, initrd, timeout)
				if err != nil {
					return rows, notes, err
				}
				if note != "" {
					notes = append(notes, note)
				}
				o.Progress("guest: %s cache=%s: done in %v", d, cache, time.Since(t0).Round(time.Second))
				for _, j := range o.Jobs {
					v := vals[j]
					if v == nil {
						v = &report.GuestValue{Error: "no result (see the notes)"}
					}
					if d == guest.DaemonVfsd {
						byJob[j].Vfsd = better(byJob[j].Vfsd, v)
					} else {
						byJob[j].Ref = better(byJob[j].Ref, v)
					}
				}
			}
		}
		for _, r := range byJob {
			if r.Vfsd != nil && r.Ref != nil && r.Vfsd.Error == "" && r.Ref.Error == "" {
				if r.Ref.IOPS > 0 {
					r.Ratio = r.Vfsd.IOPS / r.Ref.IOPS
				}
				if r.Ref.P99 > 0 && r.Vfsd.P99 > 0 {
					r.P99Ratio = float64(r.Vfsd.P99) / float64(r.Ref.P99)
				}
				if v, f := mean(r.Vfsd.BootsIOPS), mean(r.Ref.BootsIOPS); v > 0 && f > 0 {
					r.MeanRatio = v / f
				}
			}
		}
	}
	return rows, notes, nil
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t / float64(len(v))
}

// better folds boot value v into the best so far (nil: none yet): the one
// with the higher IOPS, an error only when every boot failed; BootsIOPS
// collects every boot's IOPS.
func better(best, v *report.GuestValue) *report.GuestValue {
	if best == nil {
		c := *v
		if v.Error == "" {
			c.BootsIOPS = []float64{v.IOPS}
		}
		return &c
	}
	if v.Error != "" {
		return best
	}
	all := append(best.BootsIOPS, v.IOPS)
	if best.Error != "" || v.IOPS > best.IOPS {
		c := *v
		best = &c
	}
	best.BootsIOPS = all
	return best
}

// boot runs the job list once on one daemon and cache mode (round: which
// boot of them). A guest that did not pass is a note (with where its logs
// are), not an error.
func boot(ctx context.Context, o Options, daemon, cache string, round int, initrd string, timeout time.Duration) (map[string]*report.GuestValue, string, error) {
	dir := filepath.Join(o.WorkDir, fmt.Sprintf("%s-%s", daemon, cache))
	if round > 0 {
		dir += fmt.Sprintf("-%d", round+1)
	}
	share := filepath.Join(dir, "share")
	if err := os.RemoveAll(dir); err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(share, 0o755); err != nil {
		return nil, "", err
	}
	bin, dcache := o.VfsdBin, cache
	if daemon == guest.DaemonVirtiofsd {
		bin = o.RefBin
		if cache == "never" {
			dcache = "none" // the reference's name for it
		}
	}
	cfg := guest.Config{
		Daemon: daemon, DaemonBin: bin, Cache: dcache, SharedDir: share,
		Kernel: o.Kernel, Initramfs: initrd, Steps: []string{"bench"},
		Cmdline: []string{"rdinit=/" + InitName,
			"vfsd.bench.jobs=" + strings.Join(o.Jobs, ","),
			fmt.Sprintf("vfsd.bench.runtime=%d", max(1, int(o.Runtime.Round(time.Second)/time.Second))),
			fmt.Sprintf("vfsd.bench.size=%d", o.SizeMiB),
			fmt.Sprintf("vfsd.steplimit=%d", int((o.Runtime+90*time.Second)/time.Second))},
		WorkDir: dir, Timeout: timeout, Console: o.Console,
	}
	res, err := guest.Run(ctx, cfg)
	if err != nil {
		return nil, "", fmt.Errorf("guestfio: %s cache=%s: %w", daemon, cache, err)
	}
	vals := map[string]*report.GuestValue{}
	var problems []string
	for _, j := range o.Jobs {
		v, err := readJob(filepath.Join(share, "bench-out"), j)
		if err != nil {
			if res.Passed || !errors.Is(err, os.ErrNotExist) {
				problems = append(problems, fmt.Sprintf("%s: %v", j, err))
			}
			v = &report.GuestValue{Error: err.Error()}
		}
		vals[j] = v
	}
	note := ""
	if !res.Passed || len(problems) > 0 {
		why := res.Reason
		if why == "" {
			why = strings.Join(problems, "; ")
		}
		note = fmt.Sprintf("guest on %s cache=%s: %s (serial log %s, daemon log %s)", daemon, cache, why, res.SerialLog, res.DaemonLog)
	}
	return vals, note, nil
}

func readJob(dir, job string) (*report.GuestValue, error) {
	if job == "dentry" {
		b, err := os.ReadFile(filepath.Join(dir, job+".yaml"))
		if err != nil {
			return nil, err
		}
		return ParseStressYAML(b, "dentry")
	}
	b, err := os.ReadFile(filepath.Join(dir, job+".json"))
	if err != nil {
		return nil, err
	}
	return ParseFio(b)
}

// fio's JSON output, the parts used here.
type fioOutput struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOBytes int64   `json:"io_bytes"`
	BWBytes float64 `json:"bw_bytes"`
	IOPS    float64 `json:"iops"`
	Clat    struct {
		N          int64              `json:"N"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// ParseFio reads fio --output-format=json output (anything before the first
// '{' is skipped: fio may print warnings there) and sums its jobs' read and
// write sides.
func ParseFio(b []byte) (*report.GuestValue, error) {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return nil, errors.New("fio output has no JSON")
	}
	var out fioOutput
	if err := json.Unmarshal(b[i:], &out); err != nil {
		return nil, fmt.Errorf("fio JSON: %w", err)
	}
	if len(out.Jobs) == 0 {
		return nil, errors.New("fio JSON has no jobs")
	}
	v := &report.GuestValue{}
	for _, j := range out.Jobs {
		if j.Error != 0 {
			return nil, fmt.Errorf("fio job %s: error %d", j.Name, j.Error)
		}
		for _, d := range []fioDir{j.Read, j.Write} {
			if d.IOBytes == 0 {
				continue
			}
			v.IOPS += d.IOPS
			v.MBPerSec += d.BWBytes / 1e6
			// One direction per job here; with several, the larger p99 wins.
			if p := time.Duration(d.Clat.Percentile["99.000000"]); p > v.P99 {
				v.P99 = p
				v.P50 = time.Duration(d.Clat.Percentile["50.000000"])
			}
		}
	}
	if v.IOPS == 0 {
		return nil, errors.New("fio moved no data")
	}
	return v, nil
}

// ParseStressYAML reads stress-ng --yaml output and returns the stressor's
// bogo ops per second of real time as IOPS.
func ParseStressYAML(b []byte, stressor string) (*report.GuestValue, error) {
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if k, v, ok := strings.Cut(strings.TrimPrefix(t, "- "), ":"); ok {
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch {
			case k == "stressor":
				in = v == stressor
			case in && k == "bogo-ops-per-second-real-time":
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return nil, fmt.Errorf("stress-ng YAML: %s: %w", k, err)
				}
				if f <= 0 {
					return nil, errors.New("stress-ng did no operation")
				}
				return &report.GuestValue{IOPS: f}, nil
			}
		}
	}
	return nil, fmt.Errorf("stress-ng YAML has no %s metrics", stressor)
}
