package guest

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// EnvCrashKills overrides the number of kill triggers of the crash scenario
// (default 8; 0 runs the scenario without kills, e.g. on the reference daemon).
const EnvCrashKills = "VFSD_GUEST_CRASH_KILLS"

// crashInitName is where the scenario script goes in the initramfs.
const crashInitName = "crash-init"

// CrashInitramfs writes to out the base initramfs followed by a second
// (gzip-compressed newc cpio) archive holding script as /crash-init; the
// kernel unpacks both, so /init and everything else stay as built.
func CrashInitramfs(base, script, out string) error {
	s, err := os.ReadFile(script)
	if err != nil {
		return err
	}
	return AppendInit(base, out, crashInitName, s)
}

// lockWatcher checks from the host, while the guest says it holds flock on a
// file of the share, that a host open of the file cannot get LOCK_EX.
type lockWatcher struct {
	share string
	mu    sync.Mutex
	path  string // set while the guest holds the lock
	stop  chan struct{}
	done  chan struct{}

	checks, during int // checks done; checks done within 3s after a kill trigger
	violations     []string
	lastKill       time.Time
	kills          int
}

var (
	lockHeldRE = regexp.MustCompile(`vfsd-crash: lock held (\S+)`)
	killRE     = regexp.MustCompile(`^vfsd-crash: kill \d+`)
)

func (l *lockWatcher) line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case lockHeldRE.MatchString(s):
		l.path = filepath.Join(l.share, lockHeldRE.FindStringSubmatch(s)[1])
	case strings.Contains(s, "vfsd-crash: releasing lock"):
		l.path = ""
	case killRE.MatchString(s):
		l.lastKill = time.Now()
		l.kills++
	}
}

func (l *lockWatcher) run() {
	defer close(l.done)
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(150 * time.Millisecond):
		}
		l.mu.Lock()
		p, recent := l.path, !l.lastKill.IsZero() && time.Since(l.lastKill) < 3*time.Second
		l.mu.Unlock()
		if p == "" {
			continue
		}
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			l.note(fmt.Sprintf("host open %s: %v", p, err))
			continue
		}
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			unix.Flock(fd, unix.LOCK_UN)
		}
		unix.Close(fd)
		l.mu.Lock()
		still := l.path != "" // the guest may have announced the release meanwhile
		l.checks++
		if recent {
			l.during++
		}
		l.mu.Unlock()
		switch {
		case err == nil && still:
			l.note(fmt.Sprintf("%s: the host got flock(LOCK_EX|LOCK_NB) while the guest holds it", time.Now().Format("15:04:05.000")))
		case err != nil && !errors.Is(err, unix.EWOULDBLOCK):
			l.note(fmt.Sprintf("host flock: %v", err))
		}
	}
}

func (l *lockWatcher) note(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.violations) < 20 {
		l.violations = append(l.violations, s)
	}
}

// consoleTee passes console lines to the lock watcher and on.
type consoleTee struct {
	l    *lockWatcher
	next interface{ Write([]byte) (int, error) }
}

func (c *consoleTee) Write(p []byte) (int, error) {
	c.l.line(strings.TrimRight(string(p), "\n"))
	if c.next != nil {
		return c.next.Write(p)
	}
	return len(p), nil
}

// guestErrorRE matches what a guest program or the guest kernel prints when
// the file system failed it.
var guestErrorRE = regexp.MustCompile(`(?i)input/output error|I/O error|transport endpoint|stale file handle|` +
	`software caused connection abort|no such device|guest: ERROR|virtio_fs.*(error|fail)|fuse.*(error|fail)`)

// TestGuestCrashScenario boots the guest with /crash-init (crash-init.sh):
// fio --verify=crc32c and a metadata loop run while the host SIGKILLs vfsd's
// worker every 2-4 s (at least 5 times; the supervisor must replace it with
// neither QEMU nor the guest noticing), and a flock held in the guest across
// all the crashes must stay held: checked in the guest with flock -n after
// every kill and from the host with flock LOCK_NB on the same file.
func TestGuestCrashScenario(t *testing.T) {
	kills := 8
	if s := os.Getenv(EnvCrashKills); s != "" {
		var err error
		if kills, err = strconv.Atoi(s); err != nil || kills < 0 {
			t.Fatalf("%s=%q: want a count", EnvCrashKills, s)
		}
	}
	ctx, g := setupGuest(t, "TestGuestCrashScenario", []string{"crash"})
	if g.cfg.Daemon != DaemonVfsd && kills > 0 {
		t.Skipf("SKIP: crash recovery is a vfsd feature; %s cannot survive a killed process (%s=0 runs the scenario without kills)", g.cfg.Daemon, EnvCrashKills)
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "initramfs-crash.cpio.gz")
	if err := CrashInitramfs(g.cfg.Initramfs, filepath.Join(root, "tools", "guest", "crash-init.sh"), img); err != nil {
		t.Fatalf("crash initramfs: %v", err)
	}
	g.cfg.Initramfs = img
	// A later rdinit= wins over the rig's rdinit=/init.
	g.cfg.Cmdline = append(g.cfg.Cmdline, "rdinit=/"+crashInitName, fmt.Sprintf("vfsd.crashkills=%d", kills))
	if kills > 0 {
		g.cfg.KillOn = []string{"vfsd-crash: kill"}
		g.cfg.KillDelay = 10 * time.Millisecond
		// The guest repeats fio rounds until it has seen `kills` kills, one
		// every 2-4 s: on a slow machine (or under make test's syscall
		// audit) that is more than the default crash budget of 10 deaths
		// per minute, which would end the daemon on purpose.
		g.cfg.DaemonArgs = append(g.cfg.DaemonArgs, "--max-restarts=1000")
	}
	if os.Getenv(EnvTimeout) == "" {
		// The guest's own step limit is 6 s per kill (crash-init.sh).
		g.cfg.Timeout = max(5*time.Minute, time.Duration(kills)*6*time.Second+2*time.Minute)
	}
	lw := &lockWatcher{share: g.share, stop: make(chan struct{}), done: make(chan struct{})}
	g.cfg.Console = &consoleTee{l: lw, next: g.cfg.Console}
	go lw.run()
	res := g.run(t, ctx)
	close(lw.stop)
	<-lw.done

	t.Logf("kills: %d (guest triggers seen: %d); host lock checks: %d (%d within 3s after a kill), violations: %d; result: %s",
		len(res.Kills), lw.kills, lw.checks, lw.during, len(lw.violations), res.Marker)
	if kills > 0 {
		if len(res.KillMisses) > 0 {
			t.Errorf("no worker process to kill after %d triggers: %q (is vfsd running its supervisor?)", len(res.KillMisses), res.KillMisses)
		}
		if min := 5; len(res.Kills) < min {
			t.Errorf("%d worker kills, want at least %d", len(res.Kills), min)
		}
		if lw.during == 0 {
			t.Errorf("the host never checked the lock right after a kill")
		}
	}
	if lw.checks == 0 {
		t.Errorf("the host never checked the guest's lock (no \"vfsd-crash: lock held\" line?)")
	}
	for _, v := range lw.violations {
		t.Errorf("lock check: %s", v)
	}
	var bad []string
	for _, l := range strings.Split(res.Serial(), "\n") {
		if guestErrorRE.MatchString(l) {
			bad = append(bad, l)
		}
	}
	if len(bad) > 0 {
		t.Errorf("errors in the guest's log:\n%s", strings.Join(bad, "\n"))
	}
	if _, err := os.Stat(filepath.Join(g.share, "crash")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("crash/ left in the share (the guest removes it at the end): %v", err)
	}
	if t.Failed() {
		t.Logf("guest serial console:\n%s\ndaemon log:\n%s", res.Serial(), tailLines(readFileString(res.DaemonLog), 100))
	}
}

// The overlay archive is what the kernel expects: a newc cpio that cpio(1)
// itself lists with the script's bytes.
func TestCrashInitramfsArchive(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.gz")
	var bb bytes.Buffer
	zw := gzip.NewWriter(&bb)
	CpioEntry(zw, "init", 0o100755, []byte("#!/bin/sh\n"))
	CpioEntry(zw, "TRAILER!!!", 0, nil)
	zw.Close()
	os.WriteFile(base, append(bb.Bytes(), 0), 0o644) // odd length: padding needed
	script := filepath.Join(dir, "s.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho crash\n"), 0o755)
	out := filepath.Join(dir, "out.gz")
	if err := CrashInitramfs(base, script, out); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if len(b) < len(bb.Bytes())+1 || !bytes.Equal(b[:len(bb.Bytes())], bb.Bytes()) {
		t.Fatal("the base archive is not kept at the start")
	}
	off := len(bb.Bytes()) + 1
	for off%4 != 0 {
		if b[off] != 0 {
			t.Fatalf("padding byte %d is %#x", off, b[off])
		}
		off++
	}
	zr, err := gzip.NewReader(bytes.NewReader(b[off:]))
	if err != nil {
		t.Fatal(err)
	}
	var arch bytes.Buffer
	arch.ReadFrom(zr)
	a := arch.String()
	if !strings.HasPrefix(a, "070701") || !strings.Contains(a, "crash-init\x00") ||
		!strings.Contains(a, "#!/bin/sh\necho crash\n") || !strings.Contains(a, "TRAILER!!!\x00") {
		t.Fatalf("overlay archive: %q", a)
	}
	if _, err := exec.LookPath("cpio"); err == nil {
		if err := os.WriteFile(filepath.Join(dir, "o.cpio"), arch.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", "cpio -i --quiet --no-absolute-filenames -d <o.cpio")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio -i: %v\n%s", err, out)
		}
		got, err := os.ReadFile(filepath.Join(dir, "crash-init"))
		if err != nil || string(got) != "#!/bin/sh\necho crash\n" {
			t.Fatalf("cpio extracted %q (%v)", got, err)
		}
		if fi, _ := os.Stat(filepath.Join(dir, "crash-init")); fi.Mode().Perm() != 0o755 {
			t.Fatalf("mode %v", fi.Mode())
		}
	}
}
