// Command vfsdbench is the benchmark harness (`make bench`): every host
// workload on vfsd and on the reference /usr/lib/qemu/virtiofsd, interleaved
// and repeated, next to the in-process syscall floor; a CPU profile of vfsd
// per workload when it offers --pprof-addr; in-guest fio on both daemons
// when the guest kernel and initramfs are built. It prints one table and
// writes results.json, table.txt, latency plots and profiles under
// bench/results/TIMESTAMP/.
//
//	go run ./bench/cmd/vfsdbench                      # everything, defaults
//	go run ./bench/cmd/vfsdbench -only=getattr,read4k -duration=300ms -repeat=1 -guest=false
//	make bench BENCH_ARGS='-only=create -depths=32'
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"vfsd/bench/guestfio"
	"vfsd/bench/harness"
	"vfsd/bench/hostload"
	"vfsd/tools/daemon"
	"vfsd/tools/guest"
)

func main() {
	root, err := guest.RepoRoot()
	if err != nil {
		fatal(err)
	}
	kernel, initramfs := guest.Artifacts(root)
	guestOK, guestWhy := guestfio.Available(kernel, initramfs)

	var o harness.Options
	flag.StringVar(&o.VfsdBin, "vfsd", filepath.Join(root, "build", "vfsd"), "vfsd binary (built from ./cmd/vfsd when missing)")
	flag.StringVar(&o.RefBin, "ref", daemon.VirtiofsdPath, "reference daemon")
	only := flag.String("only", "", "comma-separated host workloads (default all: "+workloadNames()+"); \"none\" for none")
	depths := flag.String("depths", "1,32", "comma-separated queue depths (requests in flight per request queue)")
	flag.IntVar(&o.VfsdQueues, "queues", 2, "also run vfsd with this many request queues (<= 1: not)")
	flag.BoolVar(&o.RecoveryCost, "recovery", true, "also run vfsd --no-supervisor (recovery off) for the recovery-cost table")
	flag.IntVar(&o.Repeat, "repeat", 3, "runs per configuration and daemon, interleaved vfsd/ref/vfsd/ref...")
	flag.DurationVar(&o.Duration, "duration", time.Second, "measured time per run")
	flag.DurationVar(&o.Warmup, "warmup", 250*time.Millisecond, "unmeasured warm-up per run")
	flag.StringVar(&o.Cache, "cache", "auto", "daemon cache mode for the host workloads")
	fileMiB := flag.Int("file-mib", 64, "size of the data file of the I/O workloads (MiB)")
	flag.IntVar(&o.DirEntries, "dir-entries", 10000, "entries of the readdirplus directory")
	flag.IntVar(&o.ReaddirSize, "readdir-size", 4096, "bytes of room per READDIRPLUS (a Linux guest asks for one page)")
	flag.DurationVar(&o.ClientPoll, "client-poll", 0,
		"how long the frontend's lone waiting request polls for its reply before sleeping, as a KVM vCPU halt-polls (0: sleep at once)")
	polled := flag.String("polled", "getattr,lookup,read4k",
		"host workloads also measured at depth 1 with a frontend that polls before sleeping (-polled-client-poll); \"none\" for none")
	flag.DurationVar(&o.PolledClientPoll, "polled-client-poll", 50*time.Microsecond,
		"how long the frontend polls for a reply in the -polled rows (0: no such rows)")
	flag.StringVar(&o.ShareDir, "share", "", "host directory to serve (kept; default: a temporary one)")
	out := flag.String("out", "", "results directory (default bench/results/TIMESTAMP)")
	flag.BoolVar(&o.Floor, "floor", true, "measure the in-process syscall floor")
	flag.BoolVar(&o.Profile, "profile", true, "CPU profile of vfsd per workload (needs vfsd --pprof-addr)")
	flag.IntVar(&o.ProfileSeconds, "profile-seconds", 2, "length of each CPU profile")
	flag.IntVar(&o.ProfileTop, "profile-top", 12, "functions shown per profile")
	flag.BoolVar(&o.Plots, "plots", true, "latency CDF plots (PNG) per workload")
	flag.BoolVar(&o.Memory, "memory", true, "measure both daemons' memory, idle and with every entry of the big directory known")
	memKernel := flag.Bool("memory-kernel", true, "with -memory, also the kernel memory the daemons pin (root: drops the machine's dentry and inode caches)")
	flag.BoolVar(&o.Guest, "guest", guestOK, "in-guest fio on both daemons (default: on when the kernel and initramfs are built)")
	guestJobs := flag.String("guest-jobs", strings.Join(guestfio.Jobs, ","), "guest jobs")
	guestCaches := flag.String("guest-caches", "auto,never", "guest cache modes")
	flag.DurationVar(&o.GuestOpts.Runtime, "guest-runtime", 3*time.Second, "length of each guest job")
	flag.IntVar(&o.GuestOpts.Boots, "guest-boots", 2, "boots per daemon and cache mode (the best counts; the order alternates ABBA)")
	flag.IntVar(&o.GuestOpts.SizeMiB, "guest-file-mib", 64, "size of the guest's fio data file (MiB)")
	flag.StringVar(&o.GuestOpts.Kernel, "kernel", kernel, "guest kernel")
	flag.StringVar(&o.GuestOpts.Initramfs, "initramfs", initramfs, "guest initramfs (make initramfs)")
	console := flag.Bool("console", false, "print the guest's serial console")
	quiet := flag.Bool("q", false, "no progress lines")
	flag.Parse()

	if o.Workloads, err = parseWorkloads(*only); err != nil {
		usage(err)
	}
	if o.Polled, err = parseWorkloads(*polled); err != nil {
		usage(fmt.Errorf("-polled: %w", err))
	}
	if o.Depths, err = parseInts(*depths); err != nil {
		usage(fmt.Errorf("-depths: %w", err))
	}
	o.MemoryKernel = o.Memory && *memKernel && hostload.CanDropCaches()
	if o.Repeat < 1 || o.Duration <= 0 || o.Warmup < 0 || *fileMiB < 1 || o.DirEntries < 1 || o.ProfileSeconds < 1 {
		usage(fmt.Errorf("-repeat, -duration, -file-mib, -dir-entries and -profile-seconds must be positive"))
	}
	o.FileSize = int64(*fileMiB) << 20
	o.GuestOpts.Jobs = splitList(*guestJobs)
	o.GuestOpts.Caches = splitList(*guestCaches)
	if *console {
		o.GuestOpts.Console = os.Stderr
	}
	if !*quiet {
		o.Progress = os.Stderr
	}
	o.Out = os.Stdout
	if o.Guest {
		if ok, why := guestfio.Available(o.GuestOpts.Kernel, o.GuestOpts.Initramfs); !ok {
			fatal(fmt.Errorf("-guest: %s", why))
		}
	} else if !guestOK && flagUnset("guest") {
		fmt.Fprintf(os.Stderr, "vfsdbench: no guest part: %s\n", guestWhy)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if _, err := os.Stat(o.VfsdBin); err != nil {
		dir, err := os.MkdirTemp("", "vfsdbench-bin-")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(dir)
		fmt.Fprintf(os.Stderr, "vfsdbench: %s missing, building ./cmd/vfsd\n", o.VfsdBin)
		if o.VfsdBin, err = daemon.BuildVfsd(dir); err != nil {
			fatal(err)
		}
	}
	stamp := time.Now().Format("20060102-150405")
	o.OutDir = *out
	if o.OutDir == "" {
		o.OutDir = filepath.Join(root, "bench", "results", stamp)
	}
	o.GuestOpts.WorkDir = filepath.Join(o.OutDir, "guest")

	rep, err := harness.Run(ctx, o)
	if err != nil {
		fatal(err)
	}
	if *out == "" {
		latest := filepath.Join(root, "bench", "results", "latest")
		os.Remove(latest)
		os.Symlink(stamp, latest)
	}
	if ctx.Err() != nil || rep == nil {
		os.Exit(130)
	}
}

func workloadNames() string {
	var n []string
	for _, w := range hostload.Workloads {
		n = append(n, w.Name)
	}
	return strings.Join(n, ",")
}

func parseWorkloads(s string) ([]hostload.Workload, error) {
	switch s {
	case "":
		return hostload.Workloads, nil
	case "none":
		return nil, nil
	}
	var ws []hostload.Workload
	for _, name := range splitList(s) {
		w, err := hostload.LookupWorkload(name)
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func parseInts(s string) ([]int, error) {
	var v []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		v = append(v, n)
	}
	if len(v) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	return v, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func flagUnset(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return !set
}

func usage(err error) {
	fmt.Fprintf(os.Stderr, "vfsdbench: %v\n", err)
	flag.Usage()
	os.Exit(2)
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "vfsdbench: %v\n", err)
	os.Exit(1)
}
