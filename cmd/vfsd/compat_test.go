package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"log/syslog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/sandbox"
)

// The command lines the launchers build, replayed: libvirt's
// qemuVirtioFSBuildCommandLine (the -o form, with ",," escaping commas in
// the path; the separate-options form when --print-capabilities lists it)
// and Kata's virtiofsd.go (args() plus the default virtio_fs_extra_args,
// and the older -o form).
func TestLauncherCommandLines(t *testing.T) {
	dir := t.TempDir()
	comma := filepath.Join(dir, "a,b")
	type want struct {
		dir, cache        string
		fd, pool          int
		noXattr, syslog   bool
		level             slog.Level
		warnings          int
		writeback, direct bool
	}
	cases := []struct {
		name string
		args []string
		want want
	}{
		{"libvirt -o", []string{"--fd=23", "-o", "source=" + dir + ",cache=none,xattr,flock,posix_lock"},
			want{dir: dir, cache: "never", fd: 23, pool: 64, level: slog.LevelInfo}},
		{"libvirt -o no_ and pool, debug", []string{"--fd=23", "-o", "source=" + dir + ",cache=always,no_xattr,no_flock,no_posix_lock",
			"--thread-pool-size=16", "-d"},
			want{dir: dir, cache: "always", fd: 23, pool: 16, noXattr: true, level: slog.LevelDebug, warnings: 2}},
		{"libvirt -o escaped comma", []string{"--fd=5", "-o", "source=" + strings.ReplaceAll(comma, ",", ",,") + ",cache=auto"},
			want{dir: comma, cache: "auto", fd: 5, pool: 64, level: slog.LevelInfo}},
		{"libvirt separate options", []string{"--fd=23", "--shared-dir", dir, "--cache", "never", "--xattr", "--posix-lock",
			"--thread-pool-size=0", "--sandbox", "none"},
			want{dir: dir, cache: "never", fd: 23, pool: 1, level: slog.LevelInfo}},
		{"libvirt separate options, off switches", []string{"--fd=23", "--shared-dir", dir, "--no-xattr", "--no-posix-lock",
			"--no-flock", "--log-level=debug", "--rlimit-nofile=4096", "--no-io-uring"},
			want{dir: dir, cache: "auto", fd: 23, pool: 64, noXattr: true, level: slog.LevelDebug, warnings: 2}},
		{"kata", []string{"--syslog", "--cache=auto", "--shared-dir=" + dir, "--fd=3", "--thread-pool-size=1", "--announce-submounts"},
			want{dir: dir, cache: "auto", fd: 3, pool: 1, syslog: true, level: slog.LevelInfo, warnings: 1}},
		{"kata inode file handles", []string{"--syslog", "--cache=never", "--shared-dir=" + dir, "--fd=3",
			"--inode-file-handles=never", "--thread-pool-size=1", "--announce-submounts"},
			want{dir: dir, cache: "never", fd: 3, pool: 1, syslog: true, level: slog.LevelInfo, warnings: 1}},
		{"kata old -o", []string{"--syslog", "-o", "cache=auto", "-o", "no_posix_lock", "-o", "source=" + dir, "--fd=3", "-f",
			"--thread-pool-size=1", "-o", "announce_submounts"},
			want{dir: dir, cache: "auto", fd: 3, pool: 1, syslog: true, level: slog.LevelInfo, warnings: 2}},
		{"virtiofsd docs example", []string{"--socket-path=/tmp/vfsd.sock", "--shared-dir", dir, "--cache=always",
			"--writeback", "--allow-direct-io", "--log-level=warn", "--killpriv-v2", "--preserve-noatime", "--readdirplus"},
			want{dir: dir, cache: "always", fd: -1, pool: 64, level: slog.LevelWarn, writeback: true, direct: true}},
		{"C virtiofsd -o everything honoured", []string{"--fd=4", "-o", "source=" + dir + ",cache=metadata,writeback," +
			"allow_direct_io,killpriv_v2,no_posix_acl,no_security_label,readdirplus,norace,log_level=err,thread_pool_size=8"},
			want{dir: dir, cache: "metadata", fd: 4, pool: 8, level: slog.LevelError, writeback: true, direct: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseArgs(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			got := want{dir: c.SharedDir, cache: c.Cache, fd: c.ListenFD, pool: c.PoolSize, noXattr: c.NoXattr,
				syslog: c.Syslog, level: c.LogLevel, warnings: len(c.Warnings), writeback: c.Writeback, direct: c.AllowDirectIO}
			if got != tc.want {
				t.Fatalf("parsed %+v\nwant   %+v\nwarnings: %q", got, tc.want, c.Warnings)
			}
			// What the supervisor hands its worker carries the switches.
			wa := c.workerArgs()
			for flag, on := range map[string]bool{"--no-xattr": c.NoXattr, "--syslog": c.Syslog,
				"--writeback": c.Writeback, "--allow-direct-io": c.AllowDirectIO, "--no-io-uring": c.NoUring} {
				if slices.Contains(wa, flag) != on {
					t.Errorf("worker args %q: %s should be %v", wa, flag, on)
				}
			}
			wc, err := parseArgs(append(wa[1:], "--vhost-fd=9"))
			if err != nil {
				t.Fatalf("worker args %q: %v", wa, err)
			}
			if wc.NoXattr != c.NoXattr || wc.Writeback != c.Writeback || wc.AllowDirectIO != c.AllowDirectIO ||
				wc.Cache != c.Cache || wc.Syslog != c.Syslog || wc.SharedDir != c.SharedDir || wc.NoUring != c.NoUring {
				t.Errorf("worker parsed %+v from %q", wc, wa)
			}
		})
	}
}

// Options vfsd cannot honour end the run with exit status 2 and one line
// naming the option and the reason; nothing starts. (--sandbox and
// --modcaps are engine/sandbox's, tested with it.)
func TestRefusedOptions(t *testing.T) {
	dir := t.TempDir()
	// --fd=0 would fail validation: an accepted option shows up as a
	// different message, not as a vfsd waiting for a connection.
	base := []string{"--fd=0", "--shared-dir=" + dir}
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"--no-readdirplus"}, "--no-readdirplus: not supported: vfsd always offers READDIRPLUS"},
		{[]string{"-o", "no_readdirplus"}, "-o no_readdirplus: not supported"},
		{[]string{"--posix-acl"}, "--posix-acl=always: not supported"},
		{[]string{"--posix-acl=auto"}, "--posix-acl=auto: not supported"},
		{[]string{"-o", "posix_acl"}, "-o posix_acl=always: not supported"},
		{[]string{"--security-label"}, "--security-label=always: not supported"},
		{[]string{"-o", "security_label"}, "not supported: vfsd does not offer security labels"},
		{[]string{"--xattrmap=:map::user.virtiofs.:"}, "--xattrmap: not supported"},
		{[]string{"-o", "xattrmap=:map::user.virtiofs.:"}, "-o xattrmap: not supported"},
		// --uid-map/--gid-map (engine/sandbox/userns.go): accepted with
		// the supervised namespace sandbox, refused otherwise.
		{[]string{"--uid-map=:0:100000:65536:"}, "--uid-map and --gid-map go together"},
		{[]string{"--gid-map=:0:100000:65536:"}, "--uid-map and --gid-map go together"},
		{[]string{"--uid-map=:0:100000:65536:", "--gid-map=:0:100000:65536:", "--no-supervisor"},
			"--uid-map/--gid-map need the supervisor"},
		{[]string{"--uid-map=:0:100000:65536:", "--gid-map=:0:100000:65536:", "--sandbox=none"},
			"--uid-map/--gid-map need --sandbox=namespace"},
		{[]string{"--uid-map=:1:100000:10:", "--gid-map=:0:100000:10:"}, "namespace id 0 must be mapped"},
		{[]string{"--uid-map=:0:100000:10:", "--uid-map=:5:200000:10:", "--gid-map=:0:100000:10:"},
			"the namespace ranges overlap"},
		{[]string{"--uid-map=:0:100000:10:", "--uid-map=:10:100005:10:", "--gid-map=:0:100000:10:"},
			"the host ranges overlap"},
		{[]string{"--translate-uid=map:0:1000:1"}, "--translate-uid: not supported"},
		{[]string{"--translate-gid=map:0:1000:1"}, "--translate-gid: not supported"},
		{[]string{"--inode-file-handles=mandatory"}, "--inode-file-handles=mandatory: not supported"},
		{[]string{"--no-killpriv-v2"}, "--no-killpriv-v2: not supported"},
		{[]string{"-o", "no_killpriv_v2"}, "-o no_killpriv_v2: not supported"},
		{[]string{"--readonly"}, "--readonly: not supported"},
		{[]string{"--migration-mode=file-handles"}, "--migration-mode: not supported"},
		{[]string{"--migration-confirm-paths"}, "--migration-confirm-paths: not supported"},
		{[]string{"--posix-acl-create-fallback"}, "--posix-acl-create-fallback: not supported"},
		{[]string{"--daemonize"}, "--daemonize: not supported"},
		{[]string{"-o", "timeout=5"}, "-o timeout: not supported"},
		{[]string{"--cache=never", "--allow-mmap"}, "--allow-mmap with --cache=never: not supported"},
		{[]string{"--allow-mmap", "-o", "cache=metadata"}, "--allow-mmap with --cache=metadata: not supported"},
		// Malformed values are errors too, before any refusal.
		{[]string{"--uid-map=0:1:2"}, "want :namespace_id:host_id:count:"},
		{[]string{"--gid-map=:0:1:2"}, "want :namespace_id:host_id:count:"},
		{[]string{"--uid-map=:0:1:2:3:"}, "want :namespace_id:host_id:count:"},
		{[]string{"--uid-map=:-1:1:2:"}, "want :namespace_id:host_id:count:"},
		{[]string{"--uid-map=:0:x:2:"}, "want :namespace_id:host_id:count:"},
		{[]string{"--uid-map=:0:4294967296:1:"}, "want :namespace_id:host_id:count:"},
		{[]string{"--uid-map=:0:100000:0:"}, "count must be at least 1"},
		{[]string{"--uid-map=:0:4294967290:10:"}, "the range passes 4294967294"},
		{[]string{"--inode-file-handles=sometimes"}, "want never, prefer or mandatory"},
		{[]string{"--posix-acl=maybe"}, "want never, auto or always"},
		{[]string{"--xattr=false"}, "takes no value"},
		{[]string{"--tag=" + strings.Repeat("t", 37)}, "want 1..36 bytes"},
		{[]string{"--log-level=loud"}, "want error, warn, info, debug, trace or off"},
		{[]string{"-o", "source"}, "wants a value"},
		{[]string{"-o", "writeback=1"}, "takes no value"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			if rc := run(append(append([]string{}, base...), tc.args...), &out, &errb); rc != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", rc, errb.String())
			}
			e := errb.String()
			if !strings.Contains(e, tc.msg) || strings.Count(e, "\n") != 1 || !strings.HasPrefix(e, "vfsd: ") {
				t.Fatalf("stderr %q, want one line containing %q", e, tc.msg)
			}
		})
	}
}

// Options accepted with a different behaviour are logged as warnings when
// vfsd starts; the accepted-as-is never-forms are silent.
func TestAcceptedOptions(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--posix-acl=never", "--security-label=never", "--inode-file-handles=never", "--no-announce-submounts",
			"--sandbox=none", "--seccomp=none", "-f", "--allow-mmap", "--socket=/s"},
		{"-o", "no_posix_acl,no_security_label,sandbox=none,debug,loglevel=info,flock,posix_lock,no_writeback,no_allow_direct_io"},
		{"--log-level=off"}, {"--log-level=trace"}, {"--rlimit-nofile=0"},
	} {
		c, err := parseArgs(append([]string{"--shared-dir=" + dir}, args...))
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if len(c.Warnings) != 0 {
			t.Fatalf("%q: warnings %q", args, c.Warnings)
		}
	}
	c, err := parseArgs([]string{"--inode-file-handles", "--announce-submounts", "-o", "no_flock"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 2 || !strings.Contains(c.Warnings[0], "FUSE_SUBMOUNTS") ||
		!strings.Contains(c.Warnings[1], "-o no_flock") || c.EagerInodes {
		t.Fatalf("warnings %q, eager inodes %v", c.Warnings, c.EagerInodes)
	}
	if c, err := parseArgs([]string{"--inode-file-handles=never"}); err != nil || !c.EagerInodes ||
		!slices.Contains(c.workerArgs(), "--inode-file-handles=never") {
		t.Fatalf("--inode-file-handles=never: eager %v, worker args %q, %v", c.EagerInodes, c.workerArgs(), err)
	}
	if c, _ := parseArgs([]string{"--log-level=off"}); levelName(c.LogLevel) != "off" {
		t.Fatalf("--log-level=off gives %v", c.LogLevel)
	}
}

// Every flag is in the option table and the table names only flags; help
// and the manual page show every one of them and every -o option.
func TestOptionTable(t *testing.T) {
	var c config
	fs := newFlagSet(&c)
	documented := map[string]bool{}
	for _, d := range optionDocs {
		if !slices.Contains(sections, d.section) {
			t.Errorf("%v: unknown section %q", d.names, d.section)
		}
		for _, n := range d.names {
			if documented[n] {
				t.Errorf("--%s documented twice", n)
			}
			documented[n] = true
			if fs.Lookup(n) == nil {
				t.Errorf("optionDocs names --%s, which is not a flag", n)
			}
		}
	}
	usage, man := usageText(), manPage("test")
	fs.VisitAll(func(f *flag.Flag) {
		if hiddenFlags[f.Name] {
			if strings.Contains(usage, "--"+f.Name) {
				t.Errorf("hidden --%s in --help", f.Name)
			}
			return
		}
		if !documented[f.Name] {
			t.Errorf("flag --%s has no entry in optionDocs (cmd/vfsd/options.go)", f.Name)
		}
		if !strings.Contains(usage, dashes(f.Name)) {
			t.Errorf("--help lacks %s", dashes(f.Name))
		}
		if !strings.Contains(man, `\fB`+roff(dashes(f.Name))+`\fR`) {
			t.Errorf("man page lacks %s", dashes(f.Name))
		}
	})
	for _, o := range compatOptions {
		if !strings.Contains(man, `\fB`+roff(o.name)+`\fR`) || !strings.Contains(usage, "  "+o.name) {
			t.Errorf("-o %s missing from the man page or --help", o.name)
		}
	}
	if !strings.HasPrefix(man, ".TH VFSD 1 ") {
		t.Errorf("man page starts %q", man[:min(40, len(man))])
	}
	for _, l := range strings.Split(man, "\n") {
		if strings.HasPrefix(l, ".") && !slices.Contains([]string{".TH", ".SH", ".TP", ".PP", ".B", ".I", ".br"}, strings.Fields(l)[0]) {
			t.Errorf("man page: stray request line %q", l)
		}
	}
	for _, l := range strings.Split(usage, "\n") {
		if len(l) > 80 && !strings.HasPrefix(l, "  --") && !strings.HasPrefix(l, "  -") {
			t.Errorf("--help line over 80 columns: %q", l)
		}
	}
}

// --help, -V, --man and --print-capabilities answer without a socket or a
// shared directory; the capabilities are what libvirt's qemuVhostUserFill
// parses, and only what vfsd supports.
func TestInfoFlags(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"-V"}, {"--version"}, {"--man"}, {"--print-capabilities"}} {
		var out, errb bytes.Buffer
		if rc := run(args, &out, &errb); rc != 0 || out.Len() == 0 || errb.Len() != 0 {
			t.Fatalf("%q: exit %d, stdout %d bytes, stderr %q", args, rc, out.Len(), errb.String())
		}
		switch args[0] {
		case "-V", "--version":
			if !strings.HasPrefix(out.String(), "vfsd ") || strings.Count(out.String(), "\n") != 1 {
				t.Fatalf("version %q", out.String())
			}
		case "--print-capabilities":
			var caps struct {
				Type     string   `json:"type"`
				Features []string `json:"features"`
			}
			if err := json.Unmarshal(out.Bytes(), &caps); err != nil {
				t.Fatal(err)
			}
			if caps.Type != "fs" || !slices.Equal(caps.Features, []string{"separate-options"}) {
				t.Fatalf("capabilities %+v", caps)
			}
		}
	}
}

// --syslog: records go to syslog at the priority of their level, without
// slog's time, with the logger's attributes.
func TestSyslogHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := syslog.Dial("unixgram", path, syslog.LOG_DAEMON|syslog.LOG_INFO, "vfsd")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	log := slog.New(newSyslogHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("supervisor", 42)
	log.Error("worker crashed", "n", 3)
	log.Warn("careful")
	log.Info("hello")
	log.Debug("not sent")
	log.Info("last")
	want := []struct{ prio, text string }{
		{"<27>", `level=ERROR msg="worker crashed" supervisor=42 n=3`}, // daemon.err
		{"<28>", `level=WARN msg=careful supervisor=42`},
		{"<30>", `level=INFO msg=hello supervisor=42`},
		{"<30>", `msg=last`},
	}
	buf := make([]byte, 4096)
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	for _, w := range want {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		m := string(buf[:n])
		if !strings.HasPrefix(m, w.prio) || !strings.Contains(m, w.text) || strings.Contains(m, "time=") {
			t.Fatalf("syslog got %q, want %s ... %s", m, w.prio, w.text)
		}
	}
}

// --uid-map/--gid-map are accepted with the supervised namespace sandbox,
// more than once, and reach the worker's start (not its command line).
func TestUidMapAccepted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("as root any host ids may be mapped")
	}
	c, err := parseArgs([]string{"--shared-dir=/srv", "--uid-map=:0:100000:1000:", "--uid-map=:1000:200000:10:",
		"--gid-map=:0:100000:65536:"})
	if err != nil {
		t.Fatal(err)
	}
	want := []sandbox.IDMap{{Inside: 0, Host: 100000, Count: 1000}, {Inside: 1000, Host: 200000, Count: 10}}
	if !slices.Equal(c.userns.UIDs, want) || len(c.userns.GIDs) != 1 {
		t.Fatalf("maps %v %v", c.userns.UIDs, c.userns.GIDs)
	}
	for _, a := range c.workerArgs() {
		if strings.Contains(a, "-map") {
			t.Fatalf("worker argument %q", a)
		}
	}
	cmd := exec.Command("/bin/true")
	cmd.Env = []string{sandbox.EnvIDMapFD + "=7", "A=1"}
	c.prepareWorker()(cmd)
	a := cmd.SysProcAttr
	if a == nil || a.Cloneflags&unix.CLONE_NEWUSER == 0 || a.Cloneflags&sandbox.CloneFlags != sandbox.CloneFlags ||
		len(a.UidMappings) != 2 || len(a.GidMappings) != 1 || !a.GidMappingsEnableSetgroups ||
		a.Credential == nil || a.Credential.Uid != 0 || a.Credential.Gid != 0 {
		t.Fatalf("SysProcAttr %+v", a)
	}
	if !slices.Equal(cmd.Env, []string{"A=1"}) {
		t.Fatalf("env %q", cmd.Env)
	}
}
