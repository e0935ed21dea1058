// Command loadgen drives a virtio-fs backend (vfsd or the reference
// virtiofsd) from the host through the project's vhost-user frontend and
// FUSE client, and prints ops/s, latency percentiles and the backend's CPU
// time per operation.
//
//	go run ./tools/loadgen --daemon=virtiofsd --op=read4k --depth=16 --duration=5s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"vfsd/tools/daemon"
	"vfsd/tools/loadgen/load"
)

func main() {
	var cfg load.Config
	kind := flag.String("daemon", "vfsd", "backend: vfsd or virtiofsd")
	flag.StringVar(&cfg.Bin, "bin", "", "backend binary (default: build ./cmd/vfsd, or "+daemon.VirtiofsdPath+")")
	flag.StringVar(&cfg.Cache, "cache", "auto", "backend cache mode")
	flag.StringVar(&cfg.Op, "op", "getattr", "operation: "+strings.Join(load.Ops, "|"))
	flag.IntVar(&cfg.Depth, "depth", 1, "requests in flight per request queue")
	flag.IntVar(&cfg.Queues, "queues", 1, "request queues")
	flag.DurationVar(&cfg.Duration, "duration", 5*time.Second, "measured time")
	flag.DurationVar(&cfg.Warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up")
	flag.Int64Var(&cfg.FileSize, "file-size", 64<<20, "size of the file reads and writes go to")
	flag.DurationVar(&cfg.ClientPoll, "client-poll", 0,
		"how long a lone waiting request polls for its reply before sleeping, as a KVM vCPU halt-polls (0: sleep at once)")
	verbose := flag.Bool("v", false, "print the daemon's output")
	flag.Parse()
	cfg.Daemon = daemon.Kind(*kind)
	if cfg.Daemon != daemon.Vfsd && cfg.Daemon != daemon.Virtiofsd {
		fmt.Fprintf(os.Stderr, "loadgen: --daemon=%s: want vfsd or virtiofsd\n", *kind)
		os.Exit(2)
	}
	if *verbose {
		cfg.Log = func(s string) { fmt.Fprint(os.Stderr, s) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := load.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	fmt.Println(res)
	fmt.Printf("ops=%d elapsed=%v mean=%v daemon_cpu=%v max_write=%d minor=%d\n",
		res.Ops, res.Elapsed.Round(time.Millisecond), res.Mean, res.DaemonCPU, res.MaxWrite, res.NegotiatedMinor)
	if res.Errors > 0 {
		os.Exit(1)
	}
}
