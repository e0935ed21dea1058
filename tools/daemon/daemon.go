package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Kind names a backend implementation.
type Kind string

const (
	Vfsd      Kind = "vfsd"
	Virtiofsd Kind = "virtiofsd"
)

// VirtiofsdPath is where Debian installs QEMU's C virtiofsd.
const VirtiofsdPath = "/usr/lib/qemu/virtiofsd"

// EnvVar selects the backend for end-to-end tests.
const EnvVar = "VFSD_E2E_DAEMON"

// ArgsEnvVar holds extra vfsd arguments for end-to-end tests, separated by
// spaces (e.g. "--seccomp=log --no-supervisor"); see ExtraFromEnv.
const ArgsEnvVar = "VFSD_E2E_ARGS"

// ExtraFromEnv returns the arguments in $VFSD_E2E_ARGS for backend k (none
// for the reference daemon, which has other flags).
func ExtraFromEnv(k Kind) []string {
	if k != Vfsd {
		return nil
	}
	return strings.Fields(os.Getenv(ArgsEnvVar))
}

// FromEnv returns the backend named by $VFSD_E2E_DAEMON (default vfsd).
func FromEnv() (Kind, error) {
	switch v := os.Getenv(EnvVar); v {
	case "", "vfsd":
		return Vfsd, nil
	case "virtiofsd":
		return Virtiofsd, nil
	default:
		return "", fmt.Errorf("%s=%q: want vfsd or virtiofsd", EnvVar, v)
	}
}

// Config describes one daemon run.
type Config struct {
	Kind      Kind
	Bin       string // binary; default: VirtiofsdPath, or must be given for vfsd (see BuildVfsd)
	Socket    string // vhost-user socket path to create
	SharedDir string
	Cache     string // auto (default), always, never/none
	// RequestQueues is passed to vfsd as --num-request-queues (0: its
	// default). virtiofsd serves exactly one request queue.
	RequestQueues int
	// Full turns on the optional features the reference daemon keeps off
	// by default (xattr, POSIX locks, flock), so both backends are tested
	// on the same behaviour. vfsd has them on always.
	Full bool
	// Extra arguments appended to the command line.
	Extra []string
	// Log receives the daemon's stdout and stderr (default: kept in memory,
	// see Output).
	Log io.Writer
}

// Daemon is a running backend.
type Daemon struct {
	Config
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// outputKeep is how much of a daemon's output Output keeps: the last MiB
// (between 1 and 1.5 MiB are held), since what went wrong is at the end of
// a long run.
const outputKeep = 1 << 20

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Write(p)
	if s.b.Len() > outputKeep+outputKeep/2 {
		s.b.Next(s.b.Len() - outputKeep)
		if i := bytes.IndexByte(s.b.Bytes(), '\n'); i >= 0 {
			s.b.Next(i + 1) // start at a whole line
		}
	}
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Args returns the command line for c (without the binary).
func (c *Config) Args() []string {
	cache := c.Cache
	if cache == "" {
		cache = "auto"
	}
	var a []string
	switch c.Kind {
	case Virtiofsd:
		if cache == "never" {
			cache = "none"
		}
		a = []string{"--socket-path=" + c.Socket, "-o", "source=" + c.SharedDir, "-o", "cache=" + cache}
		if c.Full {
			a = append(a, "-o", "xattr", "-o", "posix_lock", "-o", "flock")
		}
	default:
		a = []string{"--socket-path=" + c.Socket, "--shared-dir=" + c.SharedDir, "--cache=" + cache}
		if c.RequestQueues > 0 {
			a = append(a, "--num-request-queues="+strconv.Itoa(c.RequestQueues))
		}
	}
	return append(a, c.Extra...)
}

// Start launches the daemon. The socket appears asynchronously:
// frontend.Dial waits for it.
func Start(c Config) (*Daemon, error) {
	if c.Bin == "" {
		if c.Kind != Virtiofsd {
			return nil, errors.New("daemon: no vfsd binary given (use BuildVfsd)")
		}
		c.Bin = VirtiofsdPath
	}
	d := &Daemon{Config: c, out: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(c.Bin, c.Args()...)
	var w io.Writer = d.out
	if c.Log != nil {
		w = io.MultiWriter(d.out, c.Log)
	}
	d.cmd.Stdout, d.cmd.Stderr = w, w
	// Its own process group, so that Kill reaches the sandbox child too.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("daemon: start %s: %w", c.Bin, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// PID returns the daemon's process id.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Output returns what the daemon printed so far: its last MiB or so.
func (d *Daemon) Output() string { return d.out.String() }

// Done is closed when the daemon exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// ExitErr returns the daemon's exit status after Done.
func (d *Daemon) ExitErr() error {
	<-d.done
	return d.err
}

// Wait waits up to timeout for the daemon to exit on its own (it should once
// the frontend hung up) and kills its process group otherwise. It reports
// whether the daemon exited by itself.
func (d *Daemon) Wait(timeout time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(timeout):
		d.Kill(syscall.SIGKILL)
		<-d.done
		return false
	}
}

// Kill sends sig to the daemon's process group.
func (d *Daemon) Kill(sig syscall.Signal) error {
	return syscall.Kill(-d.cmd.Process.Pid, sig)
}

// ClockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on every
// Linux architecture Go supports).
const ClockTicks = 100

// CPUTime returns the user+system CPU time used so far by the daemon and all
// its live descendants (threads included).
func (d *Daemon) CPUTime() (time.Duration, error) { return TreeCPUTime(d.PID()) }

// TreeCPUTime sums utime+stime of pid and its descendants from /proc.
func TreeCPUTime(pid int) (time.Duration, error) {
	procs, err := readProcs()
	if err != nil {
		return 0, err
	}
	if _, ok := procs[pid]; !ok {
		return 0, fmt.Errorf("daemon: process %d not found", pid)
	}
	children := map[int][]int{}
	for p, s := range procs {
		children[s.ppid] = append(children[s.ppid], p)
	}
	var ticks uint64
	stack := []int{pid}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		ticks += procs[p].ticks
		stack = append(stack, children[p]...)
	}
	return time.Duration(ticks) * time.Second / ClockTicks, nil
}

type procStat struct {
	ppid  int
	ticks uint64
}

func readProcs() (map[int]procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int]procStat{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		s, err := parseStat(string(b))
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		out[pid] = s
	}
	return out, nil
}

// parseStat reads ppid (field 4), utime (14) and stime (15); the command
// name (field 2) may contain spaces and parentheses, so fields are counted
// from the last ')'.
func parseStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("no command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return procStat{}, errors.New("too few fields")
	}
	// f[0] is field 3 (state).
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	st, err3 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, err
	}
	return procStat{ppid: ppid, ticks: ut + st}, nil
}

// FDsTo counts the open fds in the daemon's process tree that refer to the
// file at path (compared by device and inode, since a sandboxed daemon sees
// other paths than the host).
func (d *Daemon) FDsTo(path string) (int, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return d.FDsToInode(uint64(st.Dev), st.Ino)
}

// FDsToInode counts the open fds in the daemon's process tree that refer to
// inode ino on device dev (unlinked files included).
func (d *Daemon) FDsToInode(dev, ino uint64) (int, error) {
	procs, err := readProcs()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range tree(procs, d.PID()) {
		n += fdsToInode(p, dev, ino)
	}
	return n, nil
}

// FDCount is how many fds the daemon's process tree holds on one file,
// split between the process serving requests and the rest of the tree.
type FDCount struct {
	// Supervised: the tree has a vfsd worker (a process whose argv[1] is
	// "worker"), which serves requests; the rest is the supervisor, whose
	// fd store holds a copy of every open file's fd on purpose.
	Supervised bool
	Worker     int // fds in the worker; without one, in the whole tree
	Rest       int // fds in the other processes of the tree (0 without a worker)
}

// FDsSplit counts the fds on the file at path like FDsTo, split by
// process (see FDCount).
func (d *Daemon) FDsSplit(path string) (FDCount, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return FDCount{}, err
	}
	procs, err := readProcs()
	if err != nil {
		return FDCount{}, err
	}
	var c FDCount
	for _, p := range tree(procs, d.PID()) {
		n := fdsToInode(p, uint64(st.Dev), st.Ino)
		if IsWorker(p) {
			c.Supervised = true
			c.Worker += n
		} else {
			c.Rest += n
		}
	}
	if !c.Supervised {
		c.Worker, c.Rest = c.Rest, 0
	}
	return c, nil
}

// WorkerPID returns the pid of the vfsd worker in the daemon's process tree
// (a process whose argv[1] is "worker"), or false when there is none
// (--no-supervisor, the reference daemon, a worker being restarted).
func (d *Daemon) WorkerPID() (int, bool) {
	procs, err := readProcs()
	if err != nil {
		return 0, false
	}
	for _, p := range tree(procs, d.PID()) {
		if IsWorker(p) {
			return p, true
		}
	}
	return 0, false
}

// IsWorker reports whether process pid is a vfsd worker: its argv[1] is
// "worker" (the supervisor runs "/proc/self/exe worker ...").
func IsWorker(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 1 && args[1] == "worker"
}

// tree returns root and its descendants among procs.
func tree(procs map[int]procStat, root int) []int {
	in := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for p, s := range procs {
			if in[s.ppid] && !in[p] {
				in[p], changed = true, true
			}
		}
	}
	out := make([]int, 0, len(in))
	for p := range in {
		out = append(out, p)
	}
	return out
}

// fdsToInode counts the fds of process pid on inode ino of device dev.
func fdsToInode(pid int, dev, ino uint64) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(dir, e.Name()), &st) == nil && uint64(st.Dev) == dev && st.Ino == ino {
			n++
		}
	}
	return n
}

// ModuleRoot returns the directory of the vfsd module (go env GOMOD).
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("daemon: not inside the vfsd module")
	}
	return filepath.Dir(mod), nil
}

// VfsdEnvBin returns $VFSD_BIN when it names a file: a vfsd binary built
// beforehand, as make test does.
func VfsdEnvBin() (string, bool) {
	b := os.Getenv("VFSD_BIN")
	if b == "" {
		return "", false
	}
	_, err := os.Stat(b)
	return b, err == nil
}

// VfsdFromEnv returns VfsdEnvBin, else a fresh BuildVfsd into dir.
func VfsdFromEnv(dir string) (string, error) {
	if b, ok := VfsdEnvBin(); ok {
		return b, nil
	}
	return BuildVfsd(dir)
}

// BuildVfsd builds ./cmd/vfsd (static) into dir and returns the binary's path.
func BuildVfsd(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "vfsd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/vfsd")
	cmd.Dir = root
	// Statically linked, as `make build` builds it: --sandbox=chroot
	// cannot reach a dynamic loader from inside the shared directory.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/vfsd: %w\n%s", err, out)
	}
	return bin, nil
}
