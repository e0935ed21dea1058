package main

import (
	"fmt"
	"log/slog"
	"strings"
)

// The option table: what --help and the manual page (vfsd --man) say about
// every flag newFlagSet defines and every -o option setOptions accepts.
// TestOptionTable fails when a flag lacks its entry here.

// optionDoc documents one flag (and its aliases).
type optionDoc struct {
	names   []string // flag names without dashes; the first is the main one
	arg     string   // "MODE"; "[=MODE]" when the value is optional; "" for a switch
	text    string
	section string
}

// Sections, in the order they are printed.
const (
	secConn    = "Connection"
	secFS      = "Filesystem"
	secSuper   = "Supervisor (crash recovery and upgrade)"
	secIsolate = "Isolation"
	secLog     = "Logging and process"
	secRefused = "Refused virtiofsd options (vfsd exits 2 with the reason)"
)

var sections = []string{secConn, secFS, secSuper, secIsolate, secLog, secRefused}

// hiddenFlags are internal (the worker's) and left out of the documentation.
var hiddenFlags = map[string]bool{"vhost-fd": true, "man": true}

var optionDocs = []optionDoc{
	{[]string{"socket-path", "socket"}, "PATH", "Listen on this vhost-user unix socket and serve one connection, " +
		"like virtiofsd. --socket is virtiofsd's deprecated spelling.", secConn},
	{[]string{"fd"}, "N", "Serve on the already listening socket fd N (libvirt, Kata). Under systemd socket " +
		"activation (LISTEN_FDS) the passed listening socket is used without this flag.", secConn},
	{[]string{"socket-group"}, "GROUP", "Give the socket file to GROUP, mode 0660 (with --socket-path only).", secConn},
	{[]string{"tag"}, "TAG", "Accepted and checked (1..36 bytes). The guest sees the tag QEMU's vhost-user-fs-pci " +
		"device was given (tag=); vfsd does not serve the config space.", secConn},
	{[]string{"num-request-queues"}, "N", "Request virtqueues offered (default 1; QEMU's num-request-queues=).", secConn},
	{[]string{"print-capabilities"}, "", "Print the vhost-user backend capabilities JSON and exit.", secConn},

	{[]string{"shared-dir"}, "DIR", "The host directory to share (also -o source=DIR).", secFS},
	{[]string{"cache"}, "MODE", "auto (default), always, never or metadata: entry and attribute timeouts " +
		"(1 s, 1 day, 0, 1 day) and direct I/O for never and metadata. none is taken as never.", secFS},
	{[]string{"thread-pool-size"}, "N", "Goroutines running blocking requests (fsync, SETLKW, fallocate, ...) " +
		"off the queue threads (default 64; 0 is taken as 1).", secFS},
	{[]string{"poll-max"}, "D", "Longest adaptive polling window of a queue that ran dry, before its thread " +
		"sleeps until the next kick (default 50us; 0: never poll). The window grows while requests come within " +
		"it and shrinks when they stop coming within 4× that or keep coming after it, so an idle queue does not spin " +
		"(engine/dataplane).", secFS},
	{[]string{"no-io-uring"}, "", "Read every READ with its own preadv. By default the READs a queue finds in one " +
		"batch are submitted together with one io_uring_enter, on a ring restricted to READV (engine/uring); where " +
		"io_uring is unavailable or refused, vfsd reads one by one anyway.", secFS},
	{[]string{"xattr"}, "", "Serve extended attributes. This is vfsd's default (virtiofsd's is off).", secFS},
	{[]string{"no-xattr"}, "", "Do not serve extended attributes (the xattr requests answer ENOSYS).", secFS},
	{[]string{"writeback"}, "", "Offer the writeback cache (FUSE_WRITEBACK_CACHE).", secFS},
	{[]string{"allow-direct-io"}, "", "Pass the guest's O_DIRECT to the host open (by default it is dropped).", secFS},
	{[]string{"allow-mmap"}, "", "Accepted with --cache=auto or always, where shared files can be mmap'd anyway; " +
		"refused with never or metadata (vfsd does not offer FUSE_DIRECT_IO_ALLOW_MMAP).", secFS},
	{[]string{"readdirplus"}, "", "Offer READDIRPLUS (always on in vfsd, also with --cache=never).", secFS},
	{[]string{"killpriv-v2"}, "", "Offer FUSE_HANDLE_KILLPRIV_V2 (always on in vfsd).", secFS},
	{[]string{"no-announce-submounts"}, "", "Do not mark host mount points (what vfsd always does).", secFS},
	{[]string{"announce-submounts"}, "", "Accepted with a warning: vfsd does not announce submounts " +
		"(FUSE_SUBMOUNTS), so host mount points under the shared directory appear as plain directories.", secFS},
	{[]string{"inode-file-handles"}, "[=MODE]", "prefer (the default, and the bare form; fallback is an alias): " +
		"a new inode is recorded with its file handle and gets its O_PATH fd at its first use, reopened with " +
		"open_by_handle_at (where the process may; else at once). never: an O_PATH fd per inode the guest " +
		"knows, opened at once, as virtiofsd does. mandatory: refused (vfsd holds an fd for each inode in use).", secFS},
	{[]string{"preserve-noatime"}, "", "Keep the guest's O_NOATIME (vfsd always does).", secFS},
	{[]string{"posix-lock", "flock"}, "", "Serve POSIX (fcntl) and flock locks on the host (always on in vfsd).", secFS},
	{[]string{"no-posix-lock", "no-flock"}, "", "Accepted with a warning: vfsd always serves POSIX and flock locks.", secFS},
	{[]string{"posix-acl", "security-label"}, "[=MODE]", "never is accepted (what vfsd does); auto and always " +
		"(the bare form) are refused: vfsd offers neither FUSE_POSIX_ACL nor FUSE_SECURITY_CTX.", secFS},

	{[]string{"no-supervisor"}, "", "Serve in this one process (no crash recovery, no upgrade).", secSuper},
	{[]string{"max-restarts"}, "N", "Crash budget: give up after more than N worker deaths within " +
		"--restart-window (default 10).", secSuper},
	{[]string{"restart-window"}, "D", "The crash budget's window (default 60s).", secSuper},
	{[]string{"restart-backoff-max"}, "D", "The wait before restarting a worker doubles with each death " +
		"in the window of a worker that lived less than D, from 5ms up to D (default 1s); after a worker " +
		"that lived longer it is 5ms again.", secSuper},
	{[]string{"control-socket"}, "PATH", "Control socket answering \"vfsd status\" and \"vfsd upgrade\" " +
		"(default PATH.ctl with --socket-path; none with --fd).", secSuper},

	{[]string{"seccomp"}, "ACTION", "What the worker's syscall filter does with a call outside its allowlist: " +
		"kill (default), trap, errno, log or none (no filter).", secIsolate},
	{[]string{"pprof-addr"}, "ADDR", "Serve net/http/pprof (/debug/pprof/) from the worker on a loopback TCP " +
		"address (127.0.0.1:6060, [::1]:6060, localhost:6060) or unix:/path (mode 0600); other addresses " +
		"are refused. Off by default.", secLog},
	{[]string{"metrics-addr"}, "ADDR", "Serve Prometheus metrics (/metrics: requests, errors and latency per " +
		"opcode and queue, batch sizes, inflight, restarts, stored fds) from the worker; same addresses as " +
		"--pprof-addr. Off by default.", secLog},
	{[]string{"sandbox"}, "MODE", "namespace: the supervised worker runs in new mount, pid, net, IPC and UTS " +
		"namespaces with a root holding only the shared directory (/shared, nodev), a read-only /proc and the " +
		"dynamic loader (the default; --metrics-addr and --pprof-addr are opened by the supervisor and handed " +
		"to the worker); chroot: the worker chroot()s into the shared directory, for hosts where it cannot get " +
		"namespaces (needs a statically linked vfsd, as make build builds; CAP_SYS_CHROOT cannot be kept); " +
		"none: no isolation (the default with --no-supervisor). The supervised worker drops capabilities in " +
		"every mode (engine/sandbox). namespace and chroot need the supervisor.", secIsolate},
	{[]string{"modcaps"}, "LIST", "Adjust the worker's capabilities: +cap or -cap, colon- or comma-separated " +
		"(e.g. +sys_admin:-mknod); the default set is chown, dac_override, dac_read_search, fowner, fsetid, " +
		"setgid, setuid, mknod, setfcap.", secIsolate},
	{[]string{"uid-map", "gid-map"}, ":NS:HOST:COUNT:", "Start each worker in a new user namespace (owning its " +
		"other namespaces) where COUNT ids from NS are HOST onward on the host (virtiofsd's format; repeat the " +
		"flag for more mappings, at most 340 each). Give both; namespace id 0 must be mapped (the worker runs " +
		"as 0 there); needs --sandbox=namespace and the supervisor. Root may map any host ids; an unprivileged " +
		"user its own (:0:UID:1:), or ranges from /etc/subuid and /etc/subgid with 0 mapped to its own id, " +
		"written by newuidmap/newgidmap (package uidmap). A guest id without a mapping gets EOVERFLOW where " +
		"it would own a new file; host files of unmapped owners show as 65534.", secIsolate},

	{[]string{"log-level"}, "LEVEL", "error, warn, info (default), debug, trace (same as debug) or off.", secLog},
	{[]string{"d"}, "", "Same as --log-level=debug (virtiofsd's -d).", secLog},
	{[]string{"syslog"}, "", "Log to syslog (facility daemon, tag vfsd) instead of stderr; falls back to " +
		"stderr with a warning when /dev/log cannot be reached.", secLog},
	{[]string{"rlimit-nofile"}, "N", "Set RLIMIT_NOFILE to N before serving (0 leaves it as it is; default: " +
		"raise it to min(1000000, /proc/sys/fs/nr_open) when allowed).", secLog},
	{[]string{"f"}, "", "Foreground (virtiofsd's -f): vfsd always runs in the foreground.", secLog},
	{[]string{"o"}, "OPT[,OPT...]", "virtiofsd's legacy options, listed below; a comma inside a value is " +
		"written ,, (as libvirt escapes it).", secLog},
	{[]string{"V", "version"}, "", "Print the version and exit.", secLog},
	{[]string{"h", "help"}, "", "Print this help and exit.", secLog},

	{[]string{"no-readdirplus"}, "", errNoReaddirplus + ".", secRefused},
	{[]string{"no-killpriv-v2"}, "", errKillprivV2 + ".", secRefused},
	{[]string{"xattrmap"}, "MAP", errXattrmap + ".", secRefused},
	{[]string{"readonly"}, "", "vfsd has no read-only mode; share a read-only bind mount instead.", secRefused},
	{[]string{"posix-acl-create-fallback"}, "", "vfsd does not offer POSIX ACLs.", secRefused},
	{[]string{"translate-uid", "translate-gid"}, "MAP", "vfsd does not translate ids.", secRefused},
	{[]string{"migration-mode", "migration-on-error"}, "MODE", errMigration + ".", secRefused},
	{[]string{"migration-verify-handles", "migration-confirm-paths"}, "", errMigration + ".", secRefused},
	{[]string{"daemonize"}, "", "vfsd stays in the foreground; run it under systemd or let the caller " +
		"background it.", secRefused},
}

// compatOption is one of virtiofsd's -o options.
type compatOption struct {
	name string
	arg  string // value name; "" for a switch
	text string
	set  func(c *config, v string) error
}

func noop(*config, string) error { return nil }

var compatOptions = []compatOption{
	{"source", "DIR", "--shared-dir=DIR", func(c *config, v string) error {
		if v == "" {
			return fmt.Errorf("empty directory")
		}
		c.SharedDir = v
		return nil
	}},
	{"cache", "MODE", "--cache=MODE (none means never)", (*config).setCache},
	{"thread_pool_size", "N", "--thread-pool-size=N", (*config).setPool},
	{"log_level", "LEVEL", "--log-level=LEVEL (err is error)", (*config).setLevel},
	{"loglevel", "LEVEL", "--log-level=LEVEL", (*config).setLevel},
	{"debug", "", "--log-level=debug", func(c *config, _ string) error { c.LogLevel = slog.LevelDebug; return nil }},
	{"xattr", "", "--xattr", func(c *config, _ string) error { c.NoXattr = false; return nil }},
	{"no_xattr", "", "--no-xattr", func(c *config, _ string) error { c.NoXattr = true; return nil }},
	{"flock", "", "--flock (always on)", noop},
	{"no_flock", "", "--no-flock (accepted with a warning)", func(c *config, _ string) error {
		c.warnLocks("-o no_flock")
		return nil
	}},
	{"posix_lock", "", "--posix-lock (always on)", noop},
	{"no_posix_lock", "", "--no-posix-lock (accepted with a warning)", func(c *config, _ string) error {
		c.warnLocks("-o no_posix_lock")
		return nil
	}},
	{"readdirplus", "", "--readdirplus (always on)", noop},
	{"no_readdirplus", "", "refused: " + errNoReaddirplus, func(c *config, _ string) error {
		c.refuse("-o no_readdirplus", errNoReaddirplus)
		return nil
	}},
	{"writeback", "", "--writeback", func(c *config, _ string) error { c.Writeback = true; return nil }},
	{"no_writeback", "", "no writeback cache (the default)", func(c *config, _ string) error {
		c.Writeback = false
		return nil
	}},
	{"allow_direct_io", "", "--allow-direct-io", func(c *config, _ string) error { c.AllowDirectIO = true; return nil }},
	{"no_allow_direct_io", "", "drop the guest's O_DIRECT (the default)", func(c *config, _ string) error {
		c.AllowDirectIO = false
		return nil
	}},
	{"announce_submounts", "", "--announce-submounts (accepted with a warning)", func(c *config, _ string) error {
		c.warnSubmounts("-o announce_submounts")
		return nil
	}},
	{"killpriv_v2", "", "--killpriv-v2 (always on)", noop},
	{"no_killpriv_v2", "", "refused: " + errKillprivV2, func(c *config, _ string) error {
		c.refuse("-o no_killpriv_v2", errKillprivV2)
		return nil
	}},
	{"posix_acl", "", "--posix-acl (refused)", func(c *config, _ string) error {
		return c.negotiation("-o posix_acl", "always", "vfsd does not offer POSIX ACLs (FUSE_POSIX_ACL)")
	}},
	{"no_posix_acl", "", "--posix-acl=never", noop},
	{"security_label", "", "--security-label (refused)", func(c *config, _ string) error {
		return c.negotiation("-o security_label", "always", "vfsd does not offer security labels (FUSE_SECURITY_CTX)")
	}},
	{"no_security_label", "", "--security-label=never", noop},
	{"xattrmap", "MAP", "refused: " + errXattrmap, func(c *config, _ string) error {
		c.refuse("-o xattrmap", errXattrmap)
		return nil
	}},
	{"sandbox", "MODE", "--sandbox=MODE", (*config).setSandbox},
	{"modcaps", "LIST", "--modcaps=LIST", func(c *config, v string) error { return c.setModcaps("-o modcaps", v) }},
	{"timeout", "SECONDS", "refused: " + errTimeout, func(c *config, _ string) error {
		c.refuse("-o timeout", errTimeout)
		return nil
	}},
	{"norace", "", "accepted: vfsd has no racy fallback to disable", noop},
}

// capabilities is the vhost-user backend description (vhost-user.rst,
// "Backend program conventions"), as libvirt's qemuVhostUserFill reads it.
// separate-options: the --shared-dir/--cache/... form is understood.
// Not advertised: migrate-precopy (no migration), posix-acl- and
// security-label-negotiation-mode (neither feature is offered).
const capabilities = `{
  "type": "fs",
  "features": [
    "separate-options"
  ]
}
`

// usageText is the --help text, generated from the option table.
func usageText() string {
	var b strings.Builder
	b.WriteString(`usage: vfsd --socket-path=PATH|--fd=N --shared-dir=DIR [options]
       vfsd status|upgrade --socket-path=PATH|--control-socket=PATH

By default vfsd runs as a supervisor that keeps the vhost-user connection
and serves it through a worker process; a worker that dies is replaced and
resumes where it stopped, without the frontend noticing. SIGHUP (or
"vfsd upgrade") replaces the worker with the binary now on disk.
`)
	for _, sec := range sections {
		fmt.Fprintf(&b, "\n%s:\n", sec)
		for _, d := range optionDocs {
			if d.section != sec {
				continue
			}
			writeWrapped(&b, "  "+d.spelling(), d.text)
		}
	}
	b.WriteString("\nvirtiofsd -o options (-o A,B=V or repeated -o):\n")
	for _, o := range compatOptions {
		name := o.name
		if o.arg != "" {
			name += "=" + o.arg
		}
		writeWrapped(&b, "  "+name, o.text)
	}
	return b.String()
}

// spelling is the flag as --help shows it: "--cache=MODE, -x".
func (d optionDoc) spelling() string {
	var parts []string
	for _, n := range d.names {
		parts = append(parts, dashes(n)+d.argSuffix())
	}
	return strings.Join(parts, ", ")
}

func (d optionDoc) argSuffix() string {
	switch {
	case d.arg == "":
		return ""
	case strings.HasPrefix(d.arg, "["):
		return d.arg
	case d.names[0] == "o":
		return " " + d.arg
	}
	return "=" + d.arg
}

// dashes is the flag with its usual prefix: -x for one letter, --name otherwise.
func dashes(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// writeWrapped writes "head  text" with text wrapped at 78 columns and
// indented by 28.
func writeWrapped(b *strings.Builder, head, text string) {
	const indent = 28
	line := head
	if len(head) >= indent-1 {
		b.WriteString(head + "\n")
		line = ""
	}
	line += strings.Repeat(" ", indent-len(line))
	n := 0
	for _, w := range strings.Fields(text) {
		if n > 0 && len(line)+1+len(w) > 78 {
			b.WriteString(line + "\n")
			line, n = strings.Repeat(" ", indent), 0
		}
		if n > 0 {
			line += " "
		}
		line += w
		n++
	}
	b.WriteString(line + "\n")
}

// manPage is vfsd(1) in roff (man(7)), generated from the option table.
func manPage(version string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH VFSD 1 \"\" \"vfsd %s\" \"User Commands\"\n", roff(version))
	b.WriteString(`.SH NAME
vfsd \- virtio\-fs daemon (vhost\-user backend) that survives its own crashes
.SH SYNOPSIS
.B vfsd
\-\-socket\-path=\fIPATH\fR|\-\-fd=\fIN\fR \-\-shared\-dir=\fIDIR\fR [\fIOPTIONS\fR]
.br
.B vfsd
status|upgrade \-\-socket\-path=\fIPATH\fR|\-\-control\-socket=\fIPATH\fR
.SH DESCRIPTION
vfsd is the vhost\-user backend QEMU's vhost\-user\-fs\-pci device connects to. It serves FUSE as a
passthrough filesystem over a host directory, so that a guest can mount \-t virtiofs TAG /mnt.
It accepts virtiofsd's command line: every virtiofsd option is either honoured or refused with a
one\-line reason and exit status 2; the few accepted with a different behaviour log a warning at start\-up.
.PP
By default vfsd runs as a supervisor that holds the frontend's connection and serves it through a
worker process. A worker that dies is replaced and resumes where it stopped, without the guest or
QEMU noticing. SIGHUP, or vfsd upgrade, replaces the worker with the binary now on disk.
`)
	for _, sec := range sections {
		fmt.Fprintf(&b, ".SH %s\n", roff(strings.ToUpper(sec)))
		for _, d := range optionDocs {
			if d.section != sec {
				continue
			}
			b.WriteString(".TP\n")
			var parts []string
			for _, n := range d.names {
				s := `\fB` + roff(dashes(n)) + `\fR`
				if a := d.argSuffix(); a != "" {
					s += `\fI` + roff(a) + `\fR`
				}
				parts = append(parts, s)
			}
			b.WriteString(strings.Join(parts, ", ") + "\n")
			b.WriteString(roff(d.text) + "\n")
		}
	}
	b.WriteString(".SH VIRTIOFSD \\-o OPTIONS\n")
	for _, o := range compatOptions {
		b.WriteString(".TP\n")
		s := `\fB` + roff(o.name) + `\fR`
		if o.arg != "" {
			s += "=" + `\fI` + roff(o.arg) + `\fR`
		}
		b.WriteString(s + "\n" + roff(o.text) + "\n")
	}
	b.WriteString(`.SH SUBCOMMANDS
.TP
\fBvfsd status\fR \-\-socket\-path=\fIPATH\fR|\-\-control\-socket=\fIPATH\fR
Print the supervisor's state as JSON: pids, uptimes, restarts, crashes, upgrades, stored fds, last stall.
.TP
\fBvfsd upgrade\fR \-\-socket\-path=\fIPATH\fR|\-\-control\-socket=\fIPATH\fR
Replace the worker with the binary now on disk; prints ok once the new worker took the session.
.SH ENVIRONMENT
.TP
.B NOTIFY_SOCKET
sd_notify(3): vfsd sends READY=1 once it listens, STATUS= lines, and mirrors its fd store to
systemd (FileDescriptorStoreMax=).
.TP
.B WATCHDOG_USEC, WATCHDOG_PID
sd_watchdog_enabled(3): vfsd sends WATCHDOG=1 at half the interval while the supervisor is responsive.
.TP
.B LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
sd_listen_fds(3): a passed listening socket is served as if given with \-\-fd; fds vfsd stored in
systemd's fd store are taken back.
.SH EXIT STATUS
0 when the frontend disconnected or on SIGINT/SIGTERM; 1 on a failure (the crash budget spent, the
frontend broke the protocol); 2 for a command line error or an option vfsd cannot honour.
.SH FILES
.TP
.I /usr/share/qemu/vhost\-user/50\-vfsd.json
how libvirt finds vfsd (vhost\-user.rst, "Backend program conventions").
.SH SEE ALSO
virtiofsd(1), systemd.socket(5), sd_notify(3), qemu(1)
`)
	return b.String()
}

// roff escapes s for a roff text line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
