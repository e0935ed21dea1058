package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"vfsd/seccomp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: sysaudit [flags] -- COMMAND [ARG...]
       sysaudit [flags] -pid PID
       sysaudit [-strict] -merge FILE...     (reports saved with -save, as one)

Traces the syscalls of vfsd worker processes (argv[1] == "worker") and plain
daemons (-comm) started under COMMAND, or of PID, and diffs them against the
seccomp allowlist. Run the worker with --seccomp=log or none.

`

// config is the parsed command line.
type config struct {
	comm   string
	pid    int
	poll   time.Duration
	strict bool
	from   string
	quiet  bool
	// save writes the counts to a file (for -merge) instead of judging;
	// optional runs the command unaudited when BPF is unavailable.
	save     string
	optional bool
	merge    bool
	cmd      []string
}

func parseArgs(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("sysaudit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.comm, "comm", "vfsd", "process name of a plain (unsupervised) daemon to trace")
	fs.IntVar(&c.pid, "pid", 0, "trace this process (and its workers) instead of running a command")
	fs.DurationVar(&c.poll, "poll", 2*time.Millisecond, "how often /proc is scanned for new processes")
	fs.BoolVar(&c.strict, "strict", false, "allowlist entries never seen are a failure too")
	fs.StringVar(&c.from, "from", "auto", "which syscalls to diff: sealed (after seccomp install), all, or auto (sealed when any process installed a filter)")
	fs.BoolVar(&c.quiet, "q", false, "do not log processes as they are traced")
	fs.StringVar(&c.save, "save", "", "write the counts to this file for -merge; the exit status is then the command's")
	fs.BoolVar(&c.optional, "optional", false, "when BPF is unavailable, say so (in the -save file too) and run the command unaudited")
	fs.BoolVar(&c.merge, "merge", false, "judge the union of files written with -save (the arguments)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.cmd = fs.Args()
	if c.merge {
		if len(c.cmd) == 0 || c.pid != 0 || c.save != "" {
			return c, errors.New("-merge takes files written with -save, and neither -pid nor -save")
		}
		return c, nil
	}
	switch {
	case c.pid == 0 && len(c.cmd) == 0:
		return c, errors.New("give a command after -- or -pid")
	case c.pid != 0 && len(c.cmd) > 0:
		return c, errors.New("-pid and a command are exclusive")
	case c.pid < 0:
		return c, errors.New("-pid must be positive")
	case c.poll <= 0:
		return c, errors.New("-poll must be positive")
	case c.from != "auto" && c.from != "sealed" && c.from != "all":
		return c, fmt.Errorf("-from %q: want auto, sealed or all", c.from)
	}
	return c, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	// The command gets files as they are; other writers are shared with
	// exec's copying goroutines, so both sides write under a lock.
	cmdOut, cmdErr := stdout, stderr
	if _, ok := stdout.(*os.File); !ok {
		stdout = &lockedWriter{w: stdout}
		cmdOut = stdout
	}
	if _, ok := stderr.(*os.File); !ok {
		stderr = &lockedWriter{w: stderr}
		cmdErr = stderr
	}
	c, err := parseArgs(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "sysaudit:", err)
		}
		return 2
	}
	if c.merge {
		return mergeSaved(c, stdout, stderr)
	}
	tr, err := NewTracer()
	if err != nil {
		why := fmt.Sprintf("BPF: %v (needs root and raw tracepoints)", err)
		if !c.optional || len(c.cmd) == 0 {
			fmt.Fprintf(stderr, "sysaudit: %s\n", why)
			return 2
		}
		return runUnaudited(c, why, cmdOut, cmdErr, stderr)
	}
	defer tr.Close()
	logf := func(format string, a ...any) {
		if !c.quiet {
			fmt.Fprintf(stderr, "sysaudit: "+format+"\n", a...)
		}
	}

	// Keep running on ^C (the command gets it too) to print the report.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	done := make(chan struct{})
	var waitErr error
	root := c.pid
	if len(c.cmd) > 0 {
		cmd := exec.Command(c.cmd[0], c.cmd[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, cmdOut, cmdErr
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(stderr, "sysaudit:", err)
			return 2
		}
		root = cmd.Process.Pid
		go func() {
			waitErr = cmd.Wait()
			close(done)
		}()
	} else {
		if err := syscall.Kill(root, 0); err != nil {
			fmt.Fprintf(stderr, "sysaudit: pid %d: %v\n", root, err)
			return 2
		}
	}
	t := newTracker("/proc", root, c.comm, tr, logf)
	t.rootIsDaemon = c.pid != 0
	tick := time.NewTicker(c.poll)
	defer tick.Stop()
loop:
	for {
		if err := t.scan(); err != nil {
			fmt.Fprintln(stderr, "sysaudit: scan /proc:", err)
			return 2
		}
		select {
		case <-done:
			break loop
		case s := <-sigs:
			if len(c.cmd) == 0 {
				logf("%v: stopping", s)
				break loop
			}
		case <-tick.C:
			if len(c.cmd) == 0 && syscall.Kill(root, 0) == syscall.ESRCH {
				break loop
			}
		}
	}
	t.finish()
	counts, err := tr.Counts()
	if err != nil {
		fmt.Fprintln(stderr, "sysaudit: read counters:", err)
		return 2
	}
	n := t.count()
	if c.save != "" {
		rec := saved{Workers: n[RoleWorker] + n[RoleDaemon], Sealed: len(t.sealed) > 0, Counts: counts}
		if err := writeSaved(c.save, rec); err != nil {
			fmt.Fprintln(stderr, "sysaudit:", err)
			return 2
		}
		fmt.Fprintf(stderr, "sysaudit: %d worker(s)/daemon(s) traced, counts saved to %s\n", rec.Workers, c.save)
		if waitErr != nil {
			return exitStatus(waitErr)
		}
		return 0
	}
	fmt.Fprintf(stdout, "\nsysaudit: traced %d worker(s) and %d plain daemon(s) (%d supervisor(s) skipped); %d installed a seccomp filter\n",
		n[RoleWorker], n[RoleDaemon], n[RoleSupervisor], len(t.sealed))
	if n[RoleWorker]+n[RoleDaemon] == 0 {
		fmt.Fprintf(stderr, "sysaudit: no worker (argv[1] == \"worker\") or %q process was seen\n", c.comm)
		return 2
	}
	sealed := c.from == "sealed" || (c.from == "auto" && len(t.sealed) > 0)
	rep := makeReport(counts, seccomp.Names(), sealed)
	rep.Print(stdout)
	status := 0
	if waitErr != nil {
		fmt.Fprintf(stderr, "sysaudit: command failed: %v (the audit covers what ran)\n", waitErr)
		status = 3
	}
	if len(rep.Missing) > 0 || (c.strict && len(rep.Unused) > 0) {
		status = 1
	}
	return status
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// Seen is one syscall the traced processes made.
type Seen struct {
	Nr      uint32
	Name    string
	Count   uint64
	Allowed bool
}

// Report is the audit's result.
type Report struct {
	Sealed  bool     // counts are those after a seccomp filter was installed
	Seen    []Seen   // by count, most frequent first
	Missing []string // seen, not in the allowlist (sorted)
	Unused  []string // in the allowlist, never seen (sorted)
	// Rare: in the allowlist, never seen, and marked Rare there (a path a
	// test run seldom reaches); listed for review, never a failure.
	Rare []string
}

func makeReport(c Counts, allow []string, sealed bool) Report {
	bank := &c.All
	if sealed {
		bank = &c.Sealed
	}
	r := Report{Sealed: sealed}
	seen := map[string]bool{}
	for nr, n := range bank {
		if n == 0 {
			continue
		}
		name := seccomp.Name(uint32(nr))
		ok := slices.Contains(allow, name)
		r.Seen = append(r.Seen, Seen{Nr: uint32(nr), Name: name, Count: n, Allowed: ok})
		seen[name] = true
		if !ok {
			r.Missing = append(r.Missing, name)
		}
	}
	rare := seccomp.RareNames()
	for _, name := range allow {
		switch {
		case seen[name]:
		case rare[name] != "":
			r.Rare = append(r.Rare, name)
		default:
			r.Unused = append(r.Unused, name)
		}
	}
	sort.Slice(r.Seen, func(i, j int) bool {
		if r.Seen[i].Count != r.Seen[j].Count {
			return r.Seen[i].Count > r.Seen[j].Count
		}
		return r.Seen[i].Nr < r.Seen[j].Nr
	})
	sort.Strings(r.Missing)
	sort.Strings(r.Unused)
	return r
}

func (r Report) Print(w io.Writer) {
	if r.Sealed {
		fmt.Fprintln(w, "syscalls made after the seccomp filter was installed:")
	} else {
		fmt.Fprintln(w, "syscalls made (no traced process installed a filter: start-up included):")
	}
	fmt.Fprintf(w, "  %-4s %-22s %12s  %s\n", "nr", "syscall", "count", "allowlist")
	for _, s := range r.Seen {
		mark := "yes"
		if !s.Allowed {
			mark = "MISSING"
		}
		fmt.Fprintf(w, "  %-4d %-22s %12d  %s\n", s.Nr, s.Name, s.Count, mark)
	}
	if len(r.Missing) > 0 {
		fmt.Fprintf(w, "MISSING from the allowlist (%d): %v\n", len(r.Missing), r.Missing)
	} else {
		fmt.Fprintln(w, "every syscall seen is in the allowlist")
	}
	if len(r.Unused) > 0 {
		fmt.Fprintf(w, "allowlisted, never seen (review) (%d): %v\n", len(r.Unused), r.Unused)
	}
	if len(r.Rare) > 0 {
		rare := seccomp.RareNames()
		fmt.Fprintf(w, "allowlisted for rare paths, not seen in this run (%d):\n", len(r.Rare))
		for _, n := range r.Rare {
			fmt.Fprintf(w, "  %-18s %s\n", n, rare[n])
		}
	}
}
