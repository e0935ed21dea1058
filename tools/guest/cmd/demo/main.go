// Command demo boots the bundled guest on a virtio-fs daemon with a small demo
// share, streams the guest's console, and then shows on the host what the guest
// wrote. `make demo` runs it; it ends on its own when the guest powers off.
package main

import (
	"context"
	"crypto/md5"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"vfsd/tools/guest"
)

func main() {
	root, err := guest.RepoRoot()
	if err != nil {
		fatal(err)
	}
	defKernel, defInitramfs := guest.Artifacts(root)
	daemon := flag.String("daemon", guest.DefaultDaemon(root), "virtio-fs daemon: vfsd or virtiofsd")
	vfsdBin := flag.String("vfsd", filepath.Join(root, "build", "vfsd"), "vfsd binary (built from cmd/vfsd if missing)")
	kernel := flag.String("kernel", defKernel, "guest kernel")
	initramfs := flag.String("initramfs", defInitramfs, "guest initramfs (make initramfs)")
	share := flag.String("share", filepath.Join(root, "build", "demo-share"), "host directory to share (recreated)")
	work := flag.String("workdir", filepath.Join(root, "build", "demo"), "directory for the socket and logs")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *daemon == guest.DaemonVfsd {
		os.Setenv(guest.EnvVfsdBin, *vfsdBin)
	}
	for _, d := range []string{*share, *work} {
		if err := os.RemoveAll(d); err != nil {
			fatal(err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			fatal(err)
		}
	}
	bin, err := guest.DaemonBinary(ctx, root, *daemon, *work)
	if err != nil {
		fatal(err)
	}
	if err := populate(*share); err != nil {
		fatal(err)
	}

	cfg := guest.Config{
		Daemon:    *daemon,
		DaemonBin: bin,
		SharedDir: *share,
		Kernel:    *kernel,
		Initramfs: *initramfs,
		Steps:     []string{"demo"},
		WorkDir:   *work,
		Timeout:   *timeout,
	}
	socket := filepath.Join(*work, "vhost-user-fs.sock")
	console := &prefixed{w: os.Stdout, prefix: "  guest | "}
	cfg.Console = console
	var k *killer
	if *daemon == guest.DaemonVfsd {
		// vfsd's control socket is the vhost-user socket's path + ".ctl".
		k = &killer{control: socket + ".ctl", out: console}
		console.onLine = k.line
	}
	argv, _ := cfg.DaemonCommand(socket)
	banner("vfsd demo")
	fmt.Printf("daemon:    %s\n", strings.Join(argv, " "))
	fmt.Printf("guest:     QEMU (TCG, q35, vhost-user-fs-pci tag %q), Debian kernel, busybox initramfs\n", "vfsd")
	fmt.Printf("share:     %s (the guest mounts it at /mnt)\n", *share)
	fmt.Printf("host files before boot:\n")
	listTree(*share)
	fmt.Printf("\nbooting (TCG is slow: about 10 s to the guest's shell, under a minute in all)...\n\n")

	start := time.Now()
	res, err := guest.Run(ctx, cfg)
	if err != nil {
		fatal(err)
	}
	fmt.Println()
	if !res.Passed {
		fmt.Fprintf(os.Stderr, "demo FAILED: %s\n%s", res.Reason, res.Diagnostics())
		os.Exit(1)
	}

	banner("on the host: what the guest wrote")
	out := filepath.Join(*share, "from-guest")
	listTree(out)
	for _, name := range []string{"hello-from-guest.txt", "uname.txt"} {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			fatal(err)
		}
		fmt.Printf("\n$ cat %s\n%s", filepath.Join(out, name), b)
	}
	if err := checkMD5(out, "random.bin"); err != nil {
		fatal(err)
	}
	if k != nil {
		if err := k.report(res); err != nil {
			fatal(err)
		}
	}

	banner("done")
	fmt.Printf("The guest booted, mounted the host directory over virtio-fs (%s), read the host's files,\n", *daemon)
	fmt.Printf("wrote new ones, ran fio with crc32c verification, unmounted and powered off in %v.\n",
		time.Since(start).Round(time.Second))
	if k != nil {
		fmt.Printf("Its vfsd worker was SIGKILLed %d time(s) while fio ran; the supervisor kept QEMU's connection\n", len(k.kills))
		fmt.Printf("and started a new worker that replayed the in-flight requests, and the guest did not notice.\n")
	}
	fmt.Println()
	fmt.Printf("Look at:\n")
	fmt.Printf("  %-40s the files the guest wrote (random.bin checked against its md5 on the host)\n", out)
	fmt.Printf("  %-40s the guest's serial console, step by step\n", res.SerialLog)
	fmt.Printf("  %-40s the daemon's log (%s)\n", res.DaemonLog, res.DaemonExit)
	fmt.Printf("  %-40s QEMU's command line and output\n", res.QEMULog)
	if *daemon == guest.DaemonVfsd {
		fmt.Printf("Run it on the reference daemon with: make demo DAEMON=virtiofsd\n")
	} else {
		fmt.Printf("This ran on the reference daemon; run it on vfsd with: make demo DAEMON=vfsd\n")
	}
}

// populate writes a few host files for the guest to list and read.
func populate(dir string) error {
	files := map[string]string{
		"hello.txt": "Hello from the host! This file lives in " + dir + ".\n",
		"notes.txt": "vfsd serves this directory to the guest over virtio-fs.\n" +
			"The guest reads these files and writes its own into from-guest/.\n",
		"data/numbers.csv": "n,square\n1,1\n2,4\n3,9\n4,16\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func listTree(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Printf("  %v\n", err)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Printf("  %s %9d  %s\n", info.Mode(), info.Size(), rel)
		return nil
	})
}

func checkMD5(dir, name string) error {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	want, err := os.ReadFile(filepath.Join(dir, name+".md5"))
	if err != nil {
		return err
	}
	got := fmt.Sprintf("%x", md5.Sum(b))
	f := strings.Fields(string(want))
	if len(f) == 0 || f[0] != got {
		return fmt.Errorf("%s: md5 on the host %s, the guest computed %q", name, got, strings.TrimSpace(string(want)))
	}
	fmt.Printf("\n%s: md5 %s on the host matches the guest's %s.md5\n", name, got, name)
	return nil
}

func banner(s string) {
	fmt.Printf("\n==== %s %s\n", s, strings.Repeat("=", max(0, 70-len(s))))
}

// prefixed writes the guest's console lines (tools/guest writes one line per
// Write) with a prefix, and hands each line to onLine. The host side's own
// lines go through hostf so that they do not interleave mid-line.
type prefixed struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	onLine func(string)
}

func (p *prefixed) Write(b []byte) (int, error) {
	p.mu.Lock()
	_, err := fmt.Fprintf(p.w, "%s%s", p.prefix, b)
	p.mu.Unlock()
	if p.onLine != nil {
		p.onLine(strings.TrimRight(string(b), "\r\n"))
	}
	return len(b), err
}

func (p *prefixed) hostf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "  host  | "+format+"\n", args...)
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "demo: %v\n", err)
	os.Exit(1)
}
