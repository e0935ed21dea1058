package guest

import (
	"bytes"
	"context"
	"crypto/md5"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// guestRun is one guest boot prepared by setupGuest.
type guestRun struct {
	cfg   Config
	share string
}

// setupGuest checks the prerequisites (skip, or fail when VFSD_GUEST_REQUIRED=1),
// picks the daemon and its binary, and prepares a share with host-in/.
func setupGuest(t *testing.T, name string, steps []string) (context.Context, *guestRun) {
	t.Helper()
	required := os.Getenv(EnvRequired) == "1"
	unavailable := func(format string, a ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, a...)
		if required {
			t.Fatalf("%s (required: %s=1)", msg, EnvRequired)
		}
		t.Skipf("SKIP guest test: %s (set %s=1 to make this a failure; make test does)", msg, EnvRequired)
	}
	if os.Getenv(EnvBoot) == "0" {
		if required {
			t.Fatalf("%s=0 and %s=1 contradict each other", EnvBoot, EnvRequired)
		}
		t.Skipf("SKIP guest boot: %s=0 (make test runs it in make test-guest)", EnvBoot)
	}
	if testing.Short() && !required {
		t.Skip("SKIP guest boot in -short mode")
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kernel, initramfs := Artifacts(root)
	for _, f := range []string{kernel, initramfs} {
		if _, err := os.Stat(f); err != nil {
			unavailable("%v: run `make initramfs` (it fetches the kernel too)", err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		unavailable("qemu-system-x86_64 not installed: run `make deps`")
	}
	if os.Geteuid() != 0 {
		unavailable("the daemons need root (mknod, chown, namespaces)")
	}

	daemon := DefaultDaemon(root)
	tmp := t.TempDir()
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-15*time.Second))
		t.Cleanup(cancel)
	}
	bin, err := DaemonBinary(ctx, root, daemon, tmp)
	if err != nil {
		t.Fatalf("daemon %s: %v", daemon, err)
	}
	timeout := 6 * time.Minute
	if s := os.Getenv(EnvTimeout); s != "" {
		if timeout, err = time.ParseDuration(s); err != nil {
			t.Fatalf("%s: %v", EnvTimeout, err)
		}
	}

	work := tmp
	if keep := os.Getenv(EnvKeep); keep != "" {
		work = filepath.Join(keep, name)
		os.RemoveAll(work)
	}
	share := filepath.Join(work, "share")
	logs := filepath.Join(work, "logs")
	for _, d := range []string{share, logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := PopulateHostFiles(share); err != nil {
		t.Fatal(err)
	}
	g := &guestRun{share: share, cfg: Config{
		Daemon:     daemon,
		DaemonBin:  bin,
		DaemonArgs: strings.Fields(os.Getenv(EnvDaemonArgs)),
		SharedDir:  share,
		Kernel:     kernel,
		Initramfs:  initramfs,
		Steps:      steps,
		Cmdline:    strings.Fields(os.Getenv(EnvCmdline)),
		WorkDir:    logs,
		Timeout:    timeout,
	}}
	if testing.Verbose() {
		g.cfg.Console = &prefixWriter{t: t}
	}
	return ctx, g
}

// run boots the guest and fails the test, with the serial console, the
// daemon's log and QEMU's output, unless the guest passed.
func (g *guestRun) run(t *testing.T, ctx context.Context) *Result {
	t.Helper()
	t.Logf("daemon %s (%s), steps %s, share %s", g.cfg.Daemon, g.cfg.DaemonBin, strings.Join(g.cfg.Steps, ","), g.share)
	res, err := Run(ctx, g.cfg)
	if err != nil {
		t.Fatalf("rig: %v", err)
	}
	t.Logf("guest run took %v (first /init line after %v); daemon %s; result: %s",
		res.Duration.Round(100*time.Millisecond), res.BootToInit.Round(100*time.Millisecond), res.DaemonExit, res.Marker)
	for _, k := range res.Kills {
		t.Logf("crash injection: killed %s", k)
	}
	if !res.Passed {
		t.Fatalf("guest run on %s failed: %s\n%s", g.cfg.Daemon, res.Reason, res.Diagnostics())
	}
	if g.cfg.Daemon == DaemonVfsd {
		// The supervisor hides a worker death from the guest; only the
		// deaths this test caused are acceptable.
		killed, other, errs := WorkerDeaths(res.DaemonLog)
		if len(other) > 0 {
			t.Errorf("vfsd's worker died %d times by itself (hidden from the guest by the supervisor):\n%s\nERROR lines:\n%s",
				len(other), strings.Join(other, "\n"), strings.Join(errs, "\n"))
		}
		if len(killed) != len(res.Kills) {
			t.Errorf("the daemon log records %d killed workers, the rig killed %d", len(killed), len(res.Kills))
		}
	}
	return res
}

// TestGuest boots the guest on the selected daemon and runs the full step list
// (DefaultSteps, or $VFSD_GUEST_STEPS), then checks on the host what the guest
// wrote. It skips when prerequisites are missing unless VFSD_GUEST_REQUIRED=1.
func TestGuest(t *testing.T) {
	steps := Steps()
	ctx, g := setupGuest(t, "TestGuest", steps)
	res := g.run(t, ctx)
	if slices.Contains(steps, "handoff") {
		if err := CheckGuestFiles(g.share); err != nil {
			t.Errorf("host check of %s/ after the guest ran on %s:\n%v", GuestOutDir, g.cfg.Daemon, err)
		}
	}
	if slices.Equal(steps, DefaultSteps) {
		if err := CheckShareTopLevel(g.share, HostInDir, GuestOutDir); err != nil {
			t.Errorf("%v", err)
		}
	}
	if t.Failed() {
		t.Logf("guest serial console:\n%s", res.Serial())
	}
}

// TestGuestWorkerCrash kills vfsd's worker (every child of the daemon process)
// shortly after the guest starts each of several I/O-heavy steps; the
// supervisor must replace it without QEMU or the guest noticing, so every step
// still passes and the host finds the guest's files intact (DESIGN.md §7.3).
func TestGuestWorkerCrash(t *testing.T) {
	steps := []string{"hostfiles", "ops", "fio", "handoff", "remount"}
	ctx, g := setupGuest(t, "TestGuestWorkerCrash", steps)
	if g.cfg.Daemon != DaemonVfsd {
		t.Skipf("SKIP: crash recovery is a vfsd feature; %s cannot survive a killed process", g.cfg.Daemon)
	}
	g.cfg.KillOn = []string{"=== STEP ops-bigfile", "=== STEP ops-many", "=== STEP fio", "=== STEP handoff"}
	// Each step takes over a second of guest time here (handoff, the
	// shortest, about 1.3 s on a 2-core host); a short delay lands the kill
	// inside the step on a much faster machine too.
	g.cfg.KillDelay = 200 * time.Millisecond
	res := g.run(t, ctx)
	if len(res.KillsLate) > 0 {
		t.Errorf("the guest finished before the kill planned after %q (step shorter than KillDelay %v)", res.KillsLate, g.cfg.KillDelay)
	}
	if len(res.KillMisses) > 0 {
		t.Errorf("the daemon had no worker process to kill after: %q (is the supervisor running a worker child?)", res.KillMisses)
	}
	if len(res.Kills) < len(g.cfg.KillOn) {
		t.Errorf("%d kills, want at least %d", len(res.Kills), len(g.cfg.KillOn))
	}
	if err := CheckGuestFiles(g.share); err != nil {
		t.Errorf("host check of %s/ after worker crashes:\n%v", GuestOutDir, err)
	}
	if err := CheckShareTopLevel(g.share, HostInDir, GuestOutDir); err != nil {
		t.Errorf("%v", err)
	}
	if t.Failed() {
		t.Logf("guest serial console:\n%s\ndaemon log:\n%s", res.Serial(), tailLines(readFileString(res.DaemonLog), 200))
	}
}

// prefixWriter streams console lines into the test log as they arrive.
type prefixWriter struct{ t *testing.T }

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.t.Log("serial| " + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The guest writes with `yes LABEL | head -c N`; Pattern must be the same bytes.
func TestPatternMatchesYesHead(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox not installed")
	}
	for _, tc := range []struct {
		label string
		size  int
	}{{"vfsd guest file 3", 4593}, {"vfsd trunc", 1234}, {"x", 0}, {"page", 4097}} {
		cmd := exec.Command("busybox", "sh", "-c", fmt.Sprintf("busybox yes '%s' | busybox head -c %d", tc.label, tc.size))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v", err)
		}
		if got := Pattern(tc.label, tc.size); !bytes.Equal(got, out) {
			t.Errorf("Pattern(%q, %d) differs from yes|head (%d vs %d bytes)", tc.label, tc.size, len(got), len(out))
		}
	}
}

func TestParseMarker(t *testing.T) {
	for _, tc := range []struct {
		line, want string
		ok         bool
	}{
		{"VFSD-GUEST-RESULT: PASS steps=ops uptime=3.2s", "PASS steps=ops uptime=3.2s", true},
		{"[   12.3] random: crng initVFSD-GUEST-RESULT: FAIL step=ops-link nlink", "FAIL step=ops-link nlink", true},
		{"guest: FAIL in step ops: x", "", false},
		{"VFSD-GUEST-RESULT: maybe", "", false},
		{"Command line: console=ttyS0 vfsd.test=ops", "", false},
	} {
		got, ok := ParseMarker(tc.line)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseMarker(%q) = %q, %v; want %q, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

// The kernel command line must never contain the marker (the kernel echoes it).
func TestCmdlineHasNoMarker(t *testing.T) {
	c := Config{Steps: DefaultSteps, Tag: "vfsd"}
	if strings.Contains(c.KernelCmdline(), strings.TrimSpace(Marker)) {
		t.Fatalf("kernel command line contains the marker: %s", c.KernelCmdline())
	}
}

func TestPopulateHostFilesSums(t *testing.T) {
	dir := t.TempDir()
	if err := PopulateHostFiles(dir); err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(filepath.Join(dir, HostInDir, "MD5SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(sums)), "\n")
	if len(lines) != 7 {
		t.Fatalf("MD5SUMS has %d lines, want 7", len(lines))
	}
	for _, l := range lines {
		sum, name, ok := strings.Cut(l, "  ")
		if !ok {
			t.Fatalf("bad MD5SUMS line %q", l)
		}
		b, err := os.ReadFile(filepath.Join(dir, HostInDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%x", md5.Sum(b)); got != sum {
			t.Errorf("%s: md5 %s, MD5SUMS says %s", name, got, sum)
		}
	}
}

// makeGuestOut builds, on the host, what the guest's handoff step writes.
func makeGuestOut(t *testing.T, share string) string {
	t.Helper()
	g := filepath.Join(share, GuestOutDir)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(g, "sub/deep/er"), 0o755))
	for i := 0; i < guestFiles; i++ {
		must(os.WriteFile(filepath.Join(g, fmt.Sprintf("f%d", i)), Pattern(fmt.Sprintf("vfsd guest file %d", i), i*guestFileStep), 0o644))
	}
	must(os.WriteFile(filepath.Join(g, "big"), Pattern("vfsd guest big file", guestBigSize), 0o644))
	must(os.WriteFile(filepath.Join(g, "sub/deep/er/leaf"), []byte("leaf\n"), 0o644))
	must(os.Symlink("f1", filepath.Join(g, "link")))
	must(os.Link(filepath.Join(g, "f2"), filepath.Join(g, "hard")))
	must(unix.Setxattr(filepath.Join(g, "f3"), "user.vfsd.check", []byte("guest-wrote"), 0))
	must(os.Chmod(filepath.Join(g, "f4"), 0o640))
	must(os.Chown(filepath.Join(g, "f5"), 4321, 8765))
	mt := time.Unix(guestMtime, 0)
	must(os.Chtimes(filepath.Join(g, "f6"), mt, mt))
	must(syscall.Mkfifo(filepath.Join(g, "fifo"), 0o644))
	must(os.WriteFile(filepath.Join(g, "renamed"), []byte("renamed\n"), 0o644))
	must(os.WriteFile(filepath.Join(g, "trunc"), Pattern("vfsd trunc", 1234), 0o644))
	return g
}

// CheckGuestFiles accepts a correct tree and reports each kind of damage.
func TestCheckGuestFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for chown")
	}
	share := t.TempDir()
	g := makeGuestOut(t, share)
	if err := unix.Setxattr(g, "user.probe", []byte("x"), 0); err != nil {
		t.Skipf("no user xattrs on %s: %v", g, err)
	}
	unix.Removexattr(g, "user.probe")
	if err := CheckGuestFiles(share); err != nil {
		t.Fatalf("correct tree rejected: %v", err)
	}
	damage := []struct {
		name string
		do   func() error
		want string
	}{
		{"content", func() error {
			f, err := os.OpenFile(filepath.Join(g, "big"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte("X"), 3<<20)
			return err
		}, "big: content differs at byte 3145728"},
		{"size", func() error { return os.Truncate(filepath.Join(g, "f7"), 5) }, "f7: size 5"},
		{"extra", func() error { return os.WriteFile(filepath.Join(g, "deleted"), nil, 0o644) }, "unexpected entry deleted"},
		{"missing", func() error { return os.Remove(filepath.Join(g, "sub/deep/er/leaf")) }, "missing entry sub/deep/er/leaf"},
		{"xattr", func() error { return unix.Removexattr(filepath.Join(g, "f3"), "user.vfsd.check") }, "f3: xattr"},
		{"mode", func() error { return os.Chmod(filepath.Join(g, "f4"), 0o600) }, "f4: mode 600"},
		{"owner", func() error { return os.Chown(filepath.Join(g, "f5"), 0, 0) }, "f5: owner 0:0"},
		{"hardlink", func() error {
			os.Remove(filepath.Join(g, "hard"))
			return os.WriteFile(filepath.Join(g, "hard"), Pattern("vfsd guest file 2", 2*guestFileStep), 0o644)
		}, "hard: inode"},
		{"symlink", func() error {
			os.Remove(filepath.Join(g, "link"))
			return os.Symlink("f2", filepath.Join(g, "link"))
		}, `link: readlink = "f2"`},
	}
	for _, d := range damage {
		t.Run(d.name, func(t *testing.T) {
			share := t.TempDir()
			g = makeGuestOut(t, share)
			if err := d.do(); err != nil {
				t.Fatal(err)
			}
			err := CheckGuestFiles(share)
			if err == nil || !strings.Contains(err.Error(), d.want) {
				t.Fatalf("got %v, want an error containing %q", err, d.want)
			}
		})
	}
}

func TestCheckShareTopLevel(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, HostInDir), 0o755)
	os.Mkdir(filepath.Join(dir, GuestOutDir), 0o755)
	if err := CheckShareTopLevel(dir, GuestOutDir, HostInDir); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "ops"), 0o755)
	if err := CheckShareTopLevel(dir, GuestOutDir, HostInDir); err == nil {
		t.Fatal("leftover ops/ not reported")
	}
}

// killChildren finds and kills every child of a process, and nothing else.
func TestKillChildren(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 100 & sleep 100 & wait; echo done")
	out := &bytes.Buffer{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var kills []string
	for i := 0; i < 100 && len(kills) < 2; i++ {
		time.Sleep(20 * time.Millisecond)
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		kids := strings.Fields(string(b))
		// Wait until both children have exec'd sleep: between fork and
		// exec they are still called sh.
		execd := len(kids) == 2
		for _, k := range kids {
			comm, _ := os.ReadFile("/proc/" + k + "/comm")
			execd = execd && strings.TrimSpace(string(comm)) == "sleep"
		}
		if execd {
			kills = killChildren(cmd.Process.Pid, "test")
		}
	}
	if len(kills) != 2 {
		t.Fatalf("killed %q, want the two sleeps", kills)
	}
	for _, k := range kills {
		if !strings.Contains(k, "(sleep)") {
			t.Errorf("killed %s, want a sleep", k)
		}
	}
	if err := cmd.Wait(); err != nil || out.String() != "done\n" {
		t.Fatalf("parent: %v, output %q; want it alive after its children died", err, out)
	}
}

func TestWorkerDeaths(t *testing.T) {
	log := filepath.Join(t.TempDir(), "daemon.log")
	os.WriteFile(log, []byte(`time=T level=INFO msg="worker started" supervisor=1 pid=2
time=T level=ERROR msg="worker failed" worker=2 err="vhostuser: malformed message"
time=T level=WARN msg="worker died" supervisor=1 pid=2 how="exit status 1" reason="x"
time=T level=WARN msg="worker died" supervisor=1 pid=3 how="signal: killed" reason="process exited"
`), 0o644)
	killed, other, errs := WorkerDeaths(log)
	if len(killed) != 1 || len(other) != 1 || len(errs) != 1 || !strings.Contains(other[0], "pid=2") {
		t.Fatalf("killed %q, other %q, errs %q", killed, other, errs)
	}
}
