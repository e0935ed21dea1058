package guest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// conformanceInitName is where conformance.sh goes in the initramfs.
const conformanceInitName = "conformance-init"

// allowedDiffs lists the checks of conformance.sh whose result may differ
// between the guest (virtiofs on the daemon) and the host (the host's file
// system), with the reason. The header of conformance.sh repeats it.
var allowedDiffs = map[string]string{
	// Kernel versions, not the daemon: the guest kernel (6.1) strips set-id
	// bits on a write itself and keeps S_ISGID without S_IXGRP (the old
	// mandatory-locking mode); Linux 6.2+ (setattr_should_drop_sgid) also
	// strips it when the writer is neither in the file's group nor has
	// CAP_FSETID, so a host newer than 6.1 shows -rwxrw-rwx, the guest -rwxrwSrwx.
	"suid-nobody-write-sgid-nogx-mode": "guest kernel 6.1 keeps S_ISGID without S_IXGRP on a non-member's write; Linux 6.2+ strips it",
}

// conformanceInitramfs writes to out the base initramfs followed by an archive
// holding script as /conformance-init (as CrashInitramfs does for /crash-init).
func conformanceInitramfs(base, script, out string) error {
	s, err := os.ReadFile(script)
	if err != nil {
		return err
	}
	return AppendInit(base, out, conformanceInitName, s)
}

// checkLines returns the "CHECK name result" lines of out (a console log may
// prefix or follow them with other text) and the count the script reported
// on its CONFORMANCE-DONE line (-1 when missing).
func checkLines(out string) (lines []string, done int) {
	done = -1
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimRight(l, "\r")
		if i := strings.Index(l, "CHECK "); i >= 0 {
			lines = append(lines, l[i:])
		}
		if i := strings.Index(l, "CONFORMANCE-DONE "); i >= 0 {
			fmt.Sscan(l[i+len("CONFORMANCE-DONE "):], &done)
		}
	}
	return lines, done
}

func checkName(l string) string {
	f := strings.Fields(l)
	if len(f) < 2 {
		return l
	}
	return f[1]
}

// compareChecks returns one message per difference not in allowed.
func compareChecks(guest, host []string, allowed map[string]string) (diffs, allowedSeen []string) {
	n := max(len(guest), len(host))
	for i := 0; i < n; i++ {
		var g, h string
		if i < len(guest) {
			g = guest[i]
		}
		if i < len(host) {
			h = host[i]
		}
		if g == h {
			continue
		}
		name := checkName(g)
		if g == "" {
			name = checkName(h)
		}
		if why, ok := allowed[name]; ok && checkName(g) == checkName(h) {
			allowedSeen = append(allowedSeen, fmt.Sprintf("%s: guest %q, host %q (allowed: %s)", name, g, h, why))
			continue
		}
		diffs = append(diffs, fmt.Sprintf("line %d: guest %q, host %q", i+1, g, h))
	}
	return diffs, allowedSeen
}

// runHostConformance runs conformance.sh with busybox sh on a directory of the
// host's file system, with PATH holding only busybox applets.
func runHostConformance(t *testing.T, script string) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox not installed (busybox-static, make deps): %v", err)
	}
	base, err := os.MkdirTemp("", "vfsd-conformance-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	// nobody must reach the battery's directory.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bb, "--install", "-s", bin).CombinedOutput(); err != nil {
		t.Fatalf("busybox --install -s: %v\n%s", err, out)
	}
	cmd := exec.Command(bb, "sh", script, filepath.Join(base, "dir"))
	cmd.Dir = base
	cmd.Env = []string{"PATH=" + bin, "CONF_SH=" + filepath.Join(bin, "sh"), "TZ=UTC0", "HOME=/"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("host run of %s: %v\nstdout:\n%s\nstderr:\n%s", script, err, out, stderr.String())
	}
	return string(out)
}

// TestGuestConformance runs conformance.sh, a POSIX conformance battery
// (permissions as root and as nobody, sticky and setgid directories, link
// counts, timestamps, rename edge cases, shell open flags, umask, set-id bits
// and writes), in the guest on the virtiofs mount and on the host on a host
// directory, and requires the same result for every check except those in
// allowedDiffs.
func TestGuestConformance(t *testing.T) {
	ctx, g := setupGuest(t, "TestGuestConformance", []string{"conformance"})
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "tools", "guest", "conformance.sh")
	hostOut := runHostConformance(t, script)

	img := filepath.Join(t.TempDir(), "initramfs-conformance.cpio.gz")
	if err := conformanceInitramfs(g.cfg.Initramfs, script, img); err != nil {
		t.Fatalf("conformance initramfs: %v", err)
	}
	g.cfg.Initramfs = img
	g.cfg.Cmdline = append(g.cfg.Cmdline, "rdinit=/"+conformanceInitName)
	if os.Getenv(EnvTimeout) == "" {
		g.cfg.Timeout = 4 * time.Minute
	}
	res := g.run(t, ctx)
	guestOut := res.Serial()

	host, hostDone := checkLines(hostOut)
	guest, guestDone := checkLines(guestOut)
	if hostDone < 0 || hostDone != len(host) {
		t.Errorf("host run: %d CHECK lines, CONFORMANCE-DONE says %d", len(host), hostDone)
	}
	if guestDone < 0 || guestDone != len(guest) {
		t.Errorf("guest run: %d CHECK lines, CONFORMANCE-DONE says %d", len(guest), guestDone)
	}
	diffs, allowed := compareChecks(guest, host, allowedDiffs)
	for _, a := range allowed {
		t.Logf("allowed difference: %s", a)
	}
	for _, d := range diffs {
		t.Errorf("%s differs: %s", g.cfg.Daemon, d)
	}
	t.Logf("%d checks on %s, %d on the host, %d differences (%d allowed)", len(guest), g.cfg.Daemon, len(host), len(diffs), len(allowed))
	if t.Failed() {
		t.Logf("guest output:\n%s\nhost output:\n%s", strings.Join(guest, "\n"), strings.Join(host, "\n"))
		t.Logf("guest serial console:\n%s", guestOut)
	}
}

// The host half alone: the script runs with busybox and every check reports.
func TestConformanceScriptHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: the battery needs root (chown, su nobody)")
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("SKIP: busybox not installed")
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := runHostConformance(t, filepath.Join(root, "tools", "guest", "conformance.sh"))
	lines, done := checkLines(out)
	if done != len(lines) || len(lines) < 100 {
		t.Fatalf("%d CHECK lines, CONFORMANCE-DONE %d:\n%s", len(lines), done, out)
	}
	seen := map[string]bool{}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) < 3 {
			t.Errorf("check without a result: %q", l)
		}
		if n := checkName(l); seen[n] {
			t.Errorf("check name %s used twice", n)
		} else {
			seen[n] = true
		}
	}
	for name := range allowedDiffs {
		if !seen[name] {
			t.Errorf("allowedDiffs names %s, which the script does not check", name)
		}
	}
	if !strings.Contains(out, "CHECK perm-nobody-read-0600 Permission denied") {
		t.Errorf("nobody could read a 0600 root file (is su working?):\n%s", out)
	}
}
