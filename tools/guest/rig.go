package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Daemon kinds.
const (
	DaemonVfsd      = "vfsd"
	DaemonVirtiofsd = "virtiofsd"
)

// ReferenceVirtiofsd is QEMU 7.2's C virtiofsd, the reference daemon.
const ReferenceVirtiofsd = "/usr/lib/qemu/virtiofsd"

// Marker starts the one result line the guest prints (see tools/guest/init).
const Marker = "VFSD-GUEST-RESULT: "

// Config describes one guest run.
type Config struct {
	Daemon     string   // DaemonVfsd or DaemonVirtiofsd
	DaemonBin  string   // the daemon's binary
	DaemonArgs []string // extra daemon arguments
	Cache      string   // cache mode passed to the daemon (default "auto")
	SharedDir  string   // the host directory the guest mounts
	Tag        string   // virtio-fs tag (default "vfsd")

	QEMU      string // qemu-system-x86_64 (default: from PATH)
	Kernel    string // bzImage
	Initramfs string // cpio.gz with tools/guest/init as /init
	MemMiB    int    // guest RAM (default 512)
	CPUs      int    // guest vCPUs (default 2)
	Steps     []string
	Cmdline   []string // extra kernel command line words

	WorkDir string        // socket and logs go here; must exist
	Timeout time.Duration // for the whole run, boot included (default 6m)
	// Console, when set, receives every serial console line as it arrives.
	Console io.Writer

	// Crash injection: KillDelay after a console line that starts with one of
	// KillOn, every child process of the daemon (vfsd's worker; the supervisor
	// must replace it without QEMU noticing) gets SIGKILL.
	KillOn    []string
	KillDelay time.Duration
}

// Result is what a run produced. Passed is true only when the guest printed the
// PASS marker, powered off, and the daemon did not die during the run.
type Result struct {
	Passed     bool
	Marker     string // the result line's text after Marker ("" when none)
	Reason     string // why the run did not pass
	SerialLog  string // file with the guest's serial console
	DaemonLog  string // file with the daemon's stdout and stderr
	QEMULog    string // file with QEMU's stdout and stderr
	Duration   time.Duration
	BootToInit time.Duration // until the guest's /init printed its first line
	DaemonExit string        // how the daemon ended
	Kills      []string      // crash injections done: "pid N (comm) after LINE"
	KillMisses []string      // trigger lines after which the daemon had no child to kill
	KillsLate  []string      // trigger lines whose kill was still pending when the guest finished
}

// Serial returns the guest's serial console log.
func (r *Result) Serial() string { return readFileString(r.SerialLog) }

// Diagnostics returns the serial log, the daemon's log and QEMU's output, for a
// failure message.
func (r *Result) Diagnostics() string {
	var b strings.Builder
	fmt.Fprintf(&b, "----- guest serial console (%s) -----\n%s\n", r.SerialLog, r.Serial())
	fmt.Fprintf(&b, "----- daemon log (%s), last 200 lines; daemon %s -----\n%s\n",
		r.DaemonLog, r.DaemonExit, tailLines(readFileString(r.DaemonLog), 200))
	fmt.Fprintf(&b, "----- qemu output (%s) -----\n%s\n", r.QEMULog, tailLines(readFileString(r.QEMULog), 100))
	return b.String()
}

func (c *Config) setDefaults() error {
	c.setNameDefaults()
	if c.QEMU == "" {
		p, err := exec.LookPath("qemu-system-x86_64")
		if err != nil {
			return fmt.Errorf("qemu-system-x86_64 not found (make deps): %w", err)
		}
		c.QEMU = p
	}
	if c.MemMiB == 0 {
		c.MemMiB = 512
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.Timeout == 0 {
		c.Timeout = 6 * time.Minute
	}
	switch {
	case c.SharedDir == "":
		return errors.New("guest: SharedDir not set")
	case c.WorkDir == "":
		return errors.New("guest: WorkDir not set")
	case c.Kernel == "" || c.Initramfs == "":
		return errors.New("guest: Kernel and Initramfs must be set")
	case len(c.Steps) == 0:
		return errors.New("guest: no steps")
	}
	for _, s := range c.Steps {
		if s == "" || strings.ContainsAny(s, ", \t\n") {
			return fmt.Errorf("guest: bad step name %q", s)
		}
	}
	if strings.ContainsAny(c.Tag, " \t\n,") || len(c.Tag) > 36 {
		return fmt.Errorf("guest: bad tag %q (virtio-fs tags are at most 36 bytes)", c.Tag)
	}
	return nil
}

func (c *Config) setNameDefaults() {
	if c.Daemon == "" {
		c.Daemon = DaemonVfsd
	}
	if c.Cache == "" {
		c.Cache = "auto"
	}
	if c.Tag == "" {
		c.Tag = "vfsd"
	}
}

// DaemonCommand returns the daemon's argv for the config (filling in the
// defaults for Daemon, Cache and Tag).
func (c *Config) DaemonCommand(socket string) ([]string, error) {
	c.setNameDefaults()
	bin := c.DaemonBin
	var args []string
	switch c.Daemon {
	case DaemonVirtiofsd:
		if bin == "" {
			bin = ReferenceVirtiofsd
		}
		// Default thread pool; xattrs on (off by default in the reference).
		args = []string{bin, "--socket-path=" + socket, "-o", "source=" + c.SharedDir,
			"-o", "cache=" + c.Cache, "-o", "xattr"}
	case DaemonVfsd:
		if bin == "" {
			return nil, errors.New("guest: DaemonBin (the vfsd binary) not set")
		}
		args = []string{bin, "--socket-path=" + socket, "--shared-dir=" + c.SharedDir,
			"--cache=" + c.Cache, "--tag=" + c.Tag}
	default:
		return nil, fmt.Errorf("guest: unknown daemon %q (want %s or %s)", c.Daemon, DaemonVfsd, DaemonVirtiofsd)
	}
	return append(args, c.DaemonArgs...), nil
}

// KernelCmdline is the guest kernel's command line: serial console, no reboot
// on panic (QEMU runs with -no-reboot, so a panic ends the run), and the steps.
func (c *Config) KernelCmdline() string {
	w := []string{"console=ttyS0", "panic=-1", "quiet", "rdinit=/init",
		"vfsd.test=" + strings.Join(c.Steps, ","), "vfsd.tag=" + c.Tag}
	return strings.Join(append(w, c.Cmdline...), " ")
}

// QEMUCommand returns QEMU's argv.
func (c *Config) QEMUCommand(socket, serialLog string) []string {
	mem := fmt.Sprintf("%dM", c.MemMiB)
	return []string{c.QEMU,
		"-machine", "q35", "-accel", "tcg", "-cpu", "max",
		"-smp", fmt.Sprint(c.CPUs), "-m", mem,
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-numa", "node,memdev=mem",
		"-kernel", c.Kernel, "-initrd", c.Initramfs, "-append", c.KernelCmdline(),
		"-chardev", "socket,id=char0,path=" + socket,
		"-device", "vhost-user-fs-pci,chardev=char0,tag=" + c.Tag,
		"-chardev", "file,id=serial0,path=" + serialLog,
		"-serial", "chardev:serial0",
		"-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
	}
}

// Run starts the daemon, boots the guest, and waits for the result. The error
// is for a rig problem (nothing to run, a process that cannot start); the
// guest's verdict is in the Result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	for _, f := range []string{cfg.Kernel, cfg.Initramfs} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("guest: %w (make initramfs)", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()

	res := &Result{
		SerialLog: filepath.Join(cfg.WorkDir, "serial.log"),
		DaemonLog: filepath.Join(cfg.WorkDir, "daemon.log"),
		QEMULog:   filepath.Join(cfg.WorkDir, "qemu.log"),
	}
	socket := filepath.Join(cfg.WorkDir, "vhost-user-fs.sock")
	os.Remove(socket)
	for _, f := range []string{res.SerialLog, res.DaemonLog, res.QEMULog} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return nil, err
		}
	}

	// The daemon.
	dargv, err := cfg.DaemonCommand(socket)
	if err != nil {
		return nil, err
	}
	daemon, err := startProc(dargv, res.DaemonLog)
	if err != nil {
		return nil, fmt.Errorf("guest: start %s: %w", cfg.Daemon, err)
	}
	defer daemon.stop(5 * time.Second)
	if err := waitSocket(ctx, socket, daemon, 15*time.Second); err != nil {
		res.DaemonExit = daemon.describe()
		res.Reason = err.Error()
		return res, nil
	}

	// QEMU.
	qemu, err := startProc(cfg.QEMUCommand(socket, res.SerialLog), res.QEMULog)
	if err != nil {
		return nil, fmt.Errorf("guest: start qemu: %w", err)
	}
	defer qemu.stop(0)

	tail := newSerialTail(res.SerialLog, cfg.Console)
	tail.killOn = cfg.KillOn
	go tail.run()
	defer tail.stop()

	var marker string
	var daemonDied bool
	var killTimers []*time.Timer
	pending := map[string]bool{} // trigger lines whose KillDelay has not run out
	killc := make(chan string, 16)
	defer func() {
		for _, t := range killTimers {
			t.Stop()
		}
	}()
	pollMarker := func() {
		tail.drain()
		select {
		case marker = <-tail.marker:
		default:
		}
	}
wait:
	for {
		select {
		case marker = <-tail.marker:
			break wait
		case line := <-tail.trigger:
			pending[line] = true
			killTimers = append(killTimers, time.AfterFunc(cfg.KillDelay, func() { killc <- line }))
		case line := <-killc:
			delete(pending, line)
			if k := killChildren(daemon.cmd.Process.Pid, line); len(k) > 0 {
				res.Kills = append(res.Kills, k...)
			} else {
				res.KillMisses = append(res.KillMisses, line)
			}
		case <-qemu.done:
			pollMarker() // a marker written just before QEMU exited
			break wait
		case <-daemon.done:
			// virtiofsd exits when QEMU disconnects, which can be noticed
			// before QEMU is reaped or its last output read.
			select {
			case <-qemu.done:
			case <-time.After(2 * time.Second):
			}
			pollMarker()
			daemonDied = marker == "" && !qemu.exited()
			break wait
		case <-ctx.Done():
			pollMarker()
			break wait
		}
	}
	for line := range pending {
		res.KillsLate = append(res.KillsLate, line)
	}
	res.BootToInit = tail.firstInitLine()
	if marker != "" {
		// The guest powers off right after the marker.
		select {
		case <-qemu.done:
		case <-time.After(60 * time.Second):
		case <-ctx.Done():
		}
	}
	qemuRunning := !qemu.exited()
	qemu.stop(0)
	tail.stop()
	// virtiofsd exits when QEMU disconnects; give any daemon a moment, then stop it.
	select {
	case <-daemon.done:
	case <-time.After(3 * time.Second):
	}
	daemon.stop(5 * time.Second)
	res.DaemonExit = daemon.describe()
	res.Duration = time.Since(start)
	res.Marker = marker

	switch {
	case daemonDied:
		res.Reason = fmt.Sprintf("the daemon (%s) exited while the guest was running: %s", cfg.Daemon, res.DaemonExit)
	case marker == "" && ctx.Err() != nil:
		res.Reason = fmt.Sprintf("no result from the guest within %v", cfg.Timeout)
	case marker == "":
		res.Reason = "QEMU exited without a result line from the guest (kernel panic or /init died?): " + qemu.describe()
	case strings.HasPrefix(marker, "PASS"):
		if qemuRunning {
			res.Reason = "guest printed PASS but did not power off within 60s"
		} else {
			res.Passed = true
		}
	default:
		res.Reason = "guest: " + marker
	}
	return res, nil
}

// proc is a started child process in its own process group.
type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // valid after done is closed
	once sync.Once
}

func startProc(argv []string, logPath string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "+ %s\n", strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: lf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after grace (at once when
// grace is 0). It waits for the process to be reaped.
func (p *proc) stop(grace time.Duration) {
	p.once.Do(func() {
		if p.exited() {
			return
		}
		pgid := p.cmd.Process.Pid
		if grace > 0 {
			syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-p.done:
				return
			case <-time.After(grace):
			}
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	})
	<-p.done
}

func (p *proc) describe() string {
	if !p.exited() {
		return "still running"
	}
	if p.err == nil {
		return "exited with status 0"
	}
	return p.err.Error()
}

// killChildren sends SIGKILL to every child process of pid (all its threads'
// children) and describes what it killed.
func killChildren(pid int, why string) []string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []string
	seen := map[string]bool{}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(b)) {
			if seen[c] {
				continue
			}
			seen[c] = true
			var cpid int
			if _, err := fmt.Sscan(c, &cpid); err != nil {
				continue
			}
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cpid))
			if err := syscall.Kill(cpid, syscall.SIGKILL); err == nil {
				out = append(out, fmt.Sprintf("pid %d (%s) after %q", cpid, strings.TrimSpace(string(comm)), why))
			}
		}
	}
	return out
}

func waitSocket(ctx context.Context, path string, daemon *proc, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-daemon.done:
			return fmt.Errorf("daemon exited before creating %s: %s", path, daemon.describe())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon did not create %s within %v", path, limit)
		}
	}
}

// serialTail follows the serial log file QEMU writes, line by line.
type serialTail struct {
	path    string
	console io.Writer
	marker  chan string
	quit    chan struct{}
	exited  chan struct{}
	drainc  chan chan struct{}
	start   time.Time
	killOn  []string
	trigger chan string

	mu        sync.Mutex
	firstInit time.Duration
	quitOnce  sync.Once
}

func newSerialTail(path string, console io.Writer) *serialTail {
	return &serialTail{path: path, console: console, marker: make(chan string, 1),
		quit: make(chan struct{}), exited: make(chan struct{}), drainc: make(chan chan struct{}),
		start: time.Now(), trigger: make(chan string, 64)}
}

func (s *serialTail) run() {
	defer close(s.exited)
	f, err := os.Open(s.path)
	if err != nil {
		return
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial []byte
	sent := false
	readAll := func() {
		for {
			b, err := r.ReadBytes('\n')
			partial = append(partial, b...)
			if err != nil { // EOF: keep the partial line for the next round
				return
			}
			line := strings.TrimRight(string(partial), "\r\n")
			partial = partial[:0]
			s.line(line, &sent)
		}
	}
	for {
		readAll()
		select {
		case <-s.quit:
			readAll()
			if len(partial) > 0 {
				s.line(strings.TrimRight(string(partial), "\r\n"), &sent)
			}
			return
		case ack := <-s.drainc:
			readAll()
			close(ack)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *serialTail) line(line string, sent *bool) {
	if s.console != nil {
		fmt.Fprintln(s.console, line)
	}
	if strings.HasPrefix(line, "guest: vfsd guest init") {
		s.mu.Lock()
		if s.firstInit == 0 {
			s.firstInit = time.Since(s.start)
		}
		s.mu.Unlock()
	}
	for _, k := range s.killOn {
		if strings.HasPrefix(line, k) {
			select {
			case s.trigger <- line:
			default:
			}
		}
	}
	if m, ok := ParseMarker(line); ok && !*sent {
		*sent = true
		s.marker <- m
	}
}

// drain reads everything written so far before returning.
func (s *serialTail) drain() {
	ack := make(chan struct{})
	select {
	case s.drainc <- ack:
		<-ack
	case <-s.exited:
	}
}

func (s *serialTail) stop() {
	s.quitOnce.Do(func() { close(s.quit) })
	<-s.exited
}

func (s *serialTail) firstInitLine() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstInit
}

// ParseMarker finds the guest's result marker in a console line. Kernel
// messages can share a line with it, so it is searched for, not matched at the
// start. It returns the text after the marker ("PASS ..." or "FAIL ...").
func ParseMarker(line string) (string, bool) {
	i := strings.Index(line, Marker)
	if i < 0 {
		return "", false
	}
	m := strings.TrimSpace(line[i+len(Marker):])
	if !strings.HasPrefix(m, "PASS") && !strings.HasPrefix(m, "FAIL") {
		return "", false
	}
	return m, true
}

func readFileString(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return string(b)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// WorkerDeaths reads a vfsd daemon log (the supervisor's slog text lines) and
// returns the worker deaths it records: killed ones (SIGKILL, i.e. crash
// injection) and the others (a worker that exited or crashed by itself, which
// the supervisor hides from the guest), the latter with the log's ERROR lines
// for context.
func WorkerDeaths(daemonLog string) (killed, other, errs []string) {
	for _, l := range strings.Split(readFileString(daemonLog), "\n") {
		switch {
		case strings.Contains(l, `msg="worker died"`) && strings.Contains(l, `how="signal: killed"`):
			killed = append(killed, l)
		case strings.Contains(l, `msg="worker died"`):
			other = append(other, l)
		case strings.Contains(l, "level=ERROR"):
			errs = append(errs, l)
		}
	}
	return killed, other, errs
}
