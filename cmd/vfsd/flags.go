package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"vfsd/engine/sandbox"
	"vfsd/engine/supervisor"
	"vfsd/engine/worker"
)

// config is the parsed command line.
type config struct {
	worker.Options
	LogLevel  slog.Level
	PrintCaps bool
	Help      bool
	Version   bool
	Man       bool // hidden --man: write the roff manual page and exit

	Syslog       bool  // log to syslog(3) instead of stderr
	RlimitNofile int64 // -1 (default): raise to min(1000000, nr_open); 0: leave as is
	Sandbox      string
	// sandboxExplicit: --sandbox was given; modcaps: --modcaps (cmd/vfsd/sandbox.go).
	sandboxExplicit bool
	modcaps         string
	allowMmap       bool // --allow-mmap (checked against --cache)
	// userns: --uid-map/--gid-map (engine/sandbox/userns.go).
	userns sandbox.UserNS

	// Supervisor mode (the default): the process that holds the frontend
	// connection and restarts the worker.
	NoSupervisor  bool
	MaxRestarts   int
	RestartWindow time.Duration
	BackoffMax    time.Duration // longest wait before a restart (0: the supervisor's default)
	ControlSocket string        // "" with --socket-path: <socket-path>.ctl

	// Warnings are virtiofsd options that were accepted although vfsd
	// serves them differently; each is logged once at start-up.
	Warnings []string

	refusal error // the first option vfsd cannot honour (exit 2)
}

// Log levels beyond slog's: --log-level=off.
const levelOff = slog.Level(100)

// rlimitDefault is virtiofsd's default --rlimit-nofile target (capped by
// /proc/sys/fs/nr_open).
const rlimitDefault = 1000000

// maxTagLen is virtio-fs's tag field size (virtio spec, 5.11.4).
const maxTagLen = 36

// parseArgs parses the command line (without the program name). Every
// option is documented in options.go (optionDocs, compatOptions); a test
// checks that the two agree.
func parseArgs(args []string) (config, error) {
	c := config{Options: worker.DefaultOptions(), LogLevel: slog.LevelInfo, RlimitNofile: -1, Sandbox: string(sandbox.Namespace),
		MaxRestarts: supervisor.DefaultMaxRestarts, RestartWindow: supervisor.DefaultRestartWindow}
	fs := newFlagSet(&c)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.Help = true
			return c, nil
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.refusal != nil {
		return c, c.refusal
	}
	return c, c.crossCheck()
}

// newFlagSet defines every flag on c.
func newFlagSet(c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("vfsd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	intFlag := func(name string, p *int, min int) {
		fs.Func(name, "", func(s string) error {
			n, err := strconv.Atoi(s)
			if err != nil || n < min {
				return fmt.Errorf("want an integer >= %d", min)
			}
			*p = n
			return nil
		})
	}
	// A switch: --name alone (an explicit --name=false is refused, so
	// that a switch cannot be half-set).
	switchFlag := func(name string, fn func()) {
		fs.BoolFunc(name, "", func(s string) error {
			if s != "true" {
				return errors.New("takes no value")
			}
			fn()
			return nil
		})
	}
	// A flag whose value is optional (--name or --name=VALUE, like
	// virtiofsd's require_equals options); bare means bare.
	optionalFlag := func(name, bare string, fn func(string) error) {
		fs.Var(&optionalValue{bare: bare, set: fn}, name, "")
	}

	fs.StringVar(&c.SocketPath, "socket-path", "", "")
	fs.StringVar(&c.SocketPath, "socket", "", "") // virtiofsd's deprecated spelling
	intFlag("fd", &c.ListenFD, 0)
	intFlag("vhost-fd", &c.ConnFD, 0)
	fs.StringVar(&c.SocketGroup, "socket-group", "", "")
	fs.StringVar(&c.SharedDir, "shared-dir", "", "")
	fs.Func("tag", "", func(s string) error {
		if s == "" || len(s) > maxTagLen {
			return fmt.Errorf("want 1..%d bytes", maxTagLen)
		}
		c.Tag = s
		return nil
	})
	fs.Func("cache", "", c.setCache)
	fs.Func("thread-pool-size", "", c.setPool)
	fs.Func("poll-max", "", func(s string) error {
		d, err := time.ParseDuration(s)
		if s == "0" {
			d, err = 0, nil
		}
		if err != nil || d < 0 || d > time.Millisecond {
			return errors.New("want a duration from 0 (off) to 1ms, e.g. 50us")
		}
		c.PollMax = d
		return nil
	})
	intFlag("num-request-queues", &c.RequestQueues, 1)
	fs.Func("log-level", "", c.setLevel)
	switchFlag("d", func() { c.LogLevel = slog.LevelDebug })
	switchFlag("syslog", func() { c.Syslog = true })
	fs.Func("rlimit-nofile", "", func(s string) error {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return errors.New("want an integer >= 0 (0 leaves the limit as it is)")
		}
		c.RlimitNofile = n
		return nil
	})
	fs.BoolVar(&c.PrintCaps, "print-capabilities", false, "")
	fs.BoolVar(&c.NoSupervisor, "no-supervisor", false, "")
	intFlag("max-restarts", &c.MaxRestarts, 1)
	fs.Func("restart-window", "", func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 60s")
		}
		c.RestartWindow = d
		return nil
	})
	fs.Func("restart-backoff-max", "", func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 1s")
		}
		c.BackoffMax = d
		return nil
	})
	fs.StringVar(&c.ControlSocket, "control-socket", "", "")
	fs.Var(&c.Seccomp, "seccomp", "")
	for _, a := range []struct {
		name string
		p    *string
	}{{"pprof-addr", &c.PprofAddr}, {"metrics-addr", &c.MetricsAddr}} {
		fs.Func(a.name, "", func(s string) error {
			*a.p = s
			return worker.CheckAddr(s)
		})
	}

	// Filesystem behaviour (virtiofsd's options).
	switchFlag("xattr", func() { c.NoXattr = false })
	switchFlag("no-xattr", func() { c.NoXattr = true })
	switchFlag("writeback", func() { c.Writeback = true })
	switchFlag("no-io-uring", func() { c.NoUring = true })
	switchFlag("allow-direct-io", func() { c.AllowDirectIO = true })
	switchFlag("allow-mmap", func() { c.allowMmap = true })
	switchFlag("readdirplus", func() {})
	switchFlag("no-readdirplus", func() { c.refuse("--no-readdirplus", errNoReaddirplus) })
	switchFlag("announce-submounts", func() { c.warnSubmounts("--announce-submounts") })
	switchFlag("no-announce-submounts", func() {})
	switchFlag("killpriv-v2", func() {})
	switchFlag("no-killpriv-v2", func() { c.refuse("--no-killpriv-v2", errKillprivV2) })
	switchFlag("preserve-noatime", func() {})
	switchFlag("posix-lock", func() {})
	switchFlag("no-posix-lock", func() { c.warnLocks("--no-posix-lock") })
	switchFlag("flock", func() {})
	switchFlag("no-flock", func() { c.warnLocks("--no-flock") })
	optionalFlag("posix-acl", "always", func(s string) error {
		return c.negotiation("--posix-acl", s, "vfsd does not offer POSIX ACLs (FUSE_POSIX_ACL)")
	})
	optionalFlag("security-label", "always", func(s string) error {
		return c.negotiation("--security-label", s, "vfsd does not offer security labels (FUSE_SECURITY_CTX)")
	})
	optionalFlag("inode-file-handles", "prefer", c.setInodeFileHandles)
	fs.Func("xattrmap", "", func(string) error { c.refuse("--xattrmap", errXattrmap); return nil })
	switchFlag("readonly", func() {
		c.refuse("--readonly", "vfsd has no read-only mode; share a read-only bind mount instead (the host answers EROFS)")
	})
	switchFlag("posix-acl-create-fallback", func() {
		c.refuse("--posix-acl-create-fallback", "vfsd does not offer POSIX ACLs")
	})
	for _, name := range []string{"translate-uid", "translate-gid"} {
		fs.Func(name, "", func(string) error {
			c.refuse("--"+name, "vfsd does not translate user or group ids; run it in a user namespace instead")
			return nil
		})
	}
	for _, name := range []string{"migration-mode", "migration-on-error"} {
		fs.Func(name, "", func(string) error { c.refuse("--"+name, errMigration); return nil })
	}
	for _, name := range []string{"migration-verify-handles", "migration-confirm-paths"} {
		switchFlag(name, func() { c.refuse("--"+name, errMigration) })
	}

	// Isolation (engine/sandbox): parsed and checked; vfsd has no sandbox
	// yet, so only the settings that ask for none are accepted.
	fs.Func("sandbox", "", c.setSandbox)
	fs.Func("modcaps", "", func(s string) error { return c.setModcaps("--modcaps", s) })
	for _, m := range []struct {
		name string
		p    *[]sandbox.IDMap
	}{{"uid-map", &c.userns.UIDs}, {"gid-map", &c.userns.GIDs}} {
		fs.Func(m.name, "", func(s string) error {
			im, err := sandbox.ParseIDMap(s)
			if err != nil {
				return err
			}
			if len(*m.p) >= sandbox.MaxIDMaps {
				return fmt.Errorf("at most %d mappings (the kernel's limit)", sandbox.MaxIDMaps)
			}
			*m.p = append(*m.p, im)
			return nil
		})
	}

	// Process.
	switchFlag("f", func() {}) // foreground: vfsd always is
	switchFlag("daemonize", func() {
		c.refuse("--daemonize", "vfsd stays in the foreground; run it under systemd (Type=notify) or let the caller background it")
	})
	fs.BoolVar(&c.Help, "h", false, "")
	fs.BoolVar(&c.Help, "help", false, "")
	fs.BoolVar(&c.Version, "V", false, "")
	fs.BoolVar(&c.Version, "version", false, "")
	fs.BoolVar(&c.Man, "man", false, "")
	fs.Func("o", "", c.setOptions)
	return fs
}

// optionalValue is a flag.Value that may be given without a value
// (IsBoolFlag), standing then for bare.
type optionalValue struct {
	bare string
	val  string
	set  func(string) error
}

func (v *optionalValue) String() string   { return v.val }
func (v *optionalValue) IsBoolFlag() bool { return true }
func (v *optionalValue) Set(s string) error {
	if s == "true" {
		s = v.bare
	}
	v.val = s
	return v.set(s)
}

// Reasons shared by a flag and its -o form.
const (
	errNoReaddirplus = "vfsd always offers READDIRPLUS (engine/passthrough has no switch for it)"
	errKillprivV2    = "vfsd always offers FUSE_HANDLE_KILLPRIV_V2"
	errXattrmap      = "vfsd has no extended attribute name mapping"
	errMigration     = "vfsd does not support migration (it does not advertise migrate-precopy)"
	errTimeout       = "vfsd's entry and attribute timeouts follow --cache (never 0, auto 1 s, metadata and always 1 day)"
)

// refuse records that opt cannot be honoured (the first one is reported).
func (c *config) refuse(opt, why string) {
	if c.refusal == nil {
		c.refusal = fmt.Errorf("%s: not supported: %s", opt, why)
	}
}

func (c *config) warnSubmounts(opt string) {
	c.Warnings = append(c.Warnings, opt+": vfsd does not announce submounts (FUSE_SUBMOUNTS); "+
		"host mount points under the shared directory appear as plain directories")
}

func (c *config) warnLocks(opt string) {
	c.Warnings = append(c.Warnings, opt+": vfsd always serves POSIX and flock locks on the host (FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS)")
}

// negotiation handles virtiofsd's never|auto|always options for features
// vfsd does not offer: never is what vfsd does.
func (c *config) negotiation(opt, s, why string) error {
	switch s {
	case "never":
		return nil
	case "auto", "always":
		c.refuse(opt+"="+s, why)
		return nil
	}
	return errors.New("want never, auto or always")
}

func (c *config) setInodeFileHandles(s string) error {
	switch s {
	case "never":
		c.EagerInodes = true
	case "prefer", "fallback":
		c.EagerInodes = false
	case "mandatory":
		c.refuse("--inode-file-handles=mandatory", "vfsd holds an O_PATH fd for each inode in use, "+
			"and falls back to fds where open_by_handle_at is not allowed")
	default:
		return errors.New("want never, prefer or mandatory")
	}
	return nil
}

func (c *config) setSandbox(s string) error {
	return c.setSandboxMode(s)
}

var modcapRE = regexp.MustCompile(`^[+-][a-zA-Z_]+$`)

func (c *config) setModcaps(opt, s string) error {
	for _, m := range strings.Split(s, ":") {
		if !modcapRE.MatchString(m) {
			return fmt.Errorf("%q: want +cap or -cap, colon-separated (e.g. +sys_admin:-chown)", m)
		}
	}
	return c.setModcapsList(s)
}

func (c *config) setCache(s string) error {
	if s == "none" { // virtiofsd's name
		s = "never"
	}
	for _, m := range worker.CacheModes {
		if s == m {
			c.Cache = s
			return nil
		}
	}
	return errors.New("want auto, always, never or metadata")
}

func (c *config) setPool(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > worker.MaxPoolSize {
		return fmt.Errorf("want 0..%d", worker.MaxPoolSize)
	}
	c.PoolSize = max(n, 1)
	return nil
}

func (c *config) setLevel(s string) error {
	switch s {
	case "error", "err":
		c.LogLevel = slog.LevelError
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "info":
		c.LogLevel = slog.LevelInfo
	case "debug", "trace":
		c.LogLevel = slog.LevelDebug
	case "off":
		c.LogLevel = levelOff
	default:
		return errors.New("want error, warn, info, debug, trace or off")
	}
	return nil
}

// crossCheck refuses combinations vfsd cannot honour.
func (c *config) crossCheck() error {
	if err := c.checkSandbox(); err != nil {
		return err
	}
	if err := c.checkUserns(); err != nil {
		return err
	}
	if c.allowMmap && (c.Cache == "never" || c.Cache == "metadata") {
		return fmt.Errorf("--allow-mmap with --cache=%s: not supported: vfsd does not offer FUSE_DIRECT_IO_ALLOW_MMAP "+
			"(with --cache=auto or always shared files can be mmap'd anyway)", c.Cache)
	}
	return nil
}

// setOptions parses virtiofsd's -o list (commas inside a value are
// written ",,", as libvirt escapes them).
func (c *config) setOptions(list string) error {
	for _, o := range splitCompat(list) {
		k, v, hasValue := strings.Cut(o, "=")
		var opt *compatOption
		for i := range compatOptions {
			if compatOptions[i].name == k {
				opt = &compatOptions[i]
			}
		}
		var err error
		switch {
		case opt == nil:
			err = errors.New("unknown option")
		case opt.arg == "" && hasValue:
			err = errors.New("takes no value")
		case opt.arg != "" && !hasValue:
			err = fmt.Errorf("wants a value (%s=%s)", k, opt.arg)
		default:
			err = opt.set(c, v)
		}
		if err != nil {
			return fmt.Errorf("-o %s: %v", o, err)
		}
	}
	return nil
}

// splitCompat splits an -o list at single commas; ",," is a literal comma.
func splitCompat(list string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(list); i++ {
		if list[i] == ',' {
			if i+1 < len(list) && list[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(list[i])
	}
	return append(out, cur.String())
}

// levelName is the --log-level spelling of l.
func levelName(l slog.Level) string {
	switch {
	case l >= levelOff:
		return "off"
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warn"
	}
	return "error"
}

// workerArgs is the worker's command line (the supervisor appends
// --vhost-fd=N): the validated options that concern serving.
func (c *config) workerArgs() []string {
	args := []string{"worker",
		"--shared-dir=" + c.SharedDir,
		"--cache=" + c.Cache,
		"--thread-pool-size=" + strconv.Itoa(c.PoolSize),
		"--poll-max=" + c.PollMax.String(),
		"--num-request-queues=" + strconv.Itoa(c.RequestQueues),
		"--log-level=" + levelName(c.LogLevel),
		"--seccomp=" + c.Seccomp.String(),
	}
	if c.PprofAddr != "" {
		args = append(args, "--pprof-addr="+c.PprofAddr)
	}
	if c.MetricsAddr != "" {
		args = append(args, "--metrics-addr="+c.MetricsAddr)
	}
	args = append(args, c.sandboxArgs()...)
	if c.NoXattr {
		args = append(args, "--no-xattr")
	}
	if c.NoUring {
		args = append(args, "--no-io-uring")
	}
	if c.Writeback {
		args = append(args, "--writeback")
	}
	if c.AllowDirectIO {
		args = append(args, "--allow-direct-io")
	}
	if c.EagerInodes {
		args = append(args, "--inode-file-handles=never")
	}
	if c.Syslog {
		args = append(args, "--syslog")
	}
	return args
}

// controlPath is the control socket of a supervisor ("" for none).
func (c *config) controlPath() string {
	if c.ControlSocket != "" {
		return c.ControlSocket
	}
	if c.SocketPath != "" {
		return c.SocketPath + ".ctl"
	}
	return ""
}

// checkUserns checks --uid-map/--gid-map: they need the supervised
// namespace sandbox (the worker is started in a new user namespace owning
// its other namespaces), both lists, and an unprivileged caller either its
// own ids only or newuidmap/newgidmap (sandbox.UserNS.Check).
func (c *config) checkUserns() error {
	if !c.userns.Enabled() {
		return nil
	}
	if c.NoSupervisor {
		return errors.New("--uid-map/--gid-map need the supervisor (it starts each worker in a new user namespace); not with --no-supervisor")
	}
	if m := c.sandboxMode(); m != sandbox.Namespace {
		return fmt.Errorf("--uid-map/--gid-map need --sandbox=namespace (the user namespace owns the worker's other namespaces), not --sandbox=%s", m)
	}
	return c.userns.Check()
}

// withUserns wraps the PrepareWorker hook base with the user namespace of
// --uid-map/--gid-map (nothing without them).
func (c *config) withUserns(base func(*exec.Cmd)) func(*exec.Cmd) {
	c.userns.Log = c.Logger
	return c.userns.Prepare(base)
}
