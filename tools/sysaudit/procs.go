package main

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Role is what a traced process is.
type Role int

const (
	RoleNone       Role = iota // not traced
	RoleWorker                 // argv[1] == "worker"
	RoleDaemon                 // a plain daemon (-comm, no supervisor)
	RoleSupervisor             // a -comm process with a worker child: not traced
)

func (r Role) String() string {
	return [...]string{"none", "worker", "daemon", "supervisor"}[r]
}

// classify says what a process with this comm and argv is, before its
// children are known.
func classify(comm string, argv []string, wantComm string) Role {
	if len(argv) > 1 && argv[1] == "worker" {
		return RoleWorker
	}
	if comm == wantComm && wantComm != "" {
		return RoleDaemon
	}
	return RoleNone
}

// proc is what /proc says about one process.
type proc struct {
	pid, ppid int
	comm      string
	argv      []string
}

// readProc reads /proc/PID/{stat,cmdline}; ok is false when the process is
// gone (or is a kernel thread, or a zombie with no cmdline).
func readProc(root string, pid int) (p proc, ok bool) {
	dir := root + "/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return p, false
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	open, close := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || close < open {
		return p, false
	}
	fields := strings.Fields(string(stat[close+1:]))
	if len(fields) < 2 {
		return p, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return p, false
	}
	cmdline, err := os.ReadFile(dir + "/cmdline")
	if err != nil || len(cmdline) == 0 {
		return p, false
	}
	argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	return proc{pid: pid, ppid: ppid, comm: string(stat[open+1 : close]), argv: argv}, true
}

// listPids returns the numeric entries of /proc.
func listPids(root string) ([]int, error) {
	d, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		if pid, err := strconv.Atoi(n); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// tracer is what the tracker needs of Tracer.
type tracer interface {
	Add(tgid int) error
	Remove(tgid int) error
	Sealed(tgid int) bool
}

// entry is one process the tracker looked at.
type entry struct {
	proc
	desc bool // a descendant of the root
	role Role
}

// tracker finds the processes to trace among the descendants of root. A
// process is looked at again while it may still exec (not yet a worker):
// between fork and exec a child has its parent's comm and argv.
type tracker struct {
	procRoot     string
	rootPid      int
	comm         string
	rootIsDaemon bool // -pid: the root is traced whatever its comm
	tracer       tracer
	logf         func(format string, args ...any)

	seen   map[int]*entry
	ever   map[int]Role // every pid ever traced, by its last role
	sealed map[int]bool // traced pids that installed a seccomp filter
}

func newTracker(procRoot string, rootPid int, comm string, tr tracer, logf func(string, ...any)) *tracker {
	return &tracker{
		procRoot: procRoot, rootPid: rootPid, comm: comm, tracer: tr, logf: logf,
		seen: map[int]*entry{}, ever: map[int]Role{}, sealed: map[int]bool{},
	}
}

func (t *tracker) lookup(pid int) *entry {
	if e, ok := t.seen[pid]; ok {
		return e
	}
	p, ok := readProc(t.procRoot, pid)
	if !ok {
		return nil
	}
	e := &entry{proc: p}
	e.desc = pid == t.rootPid || (p.ppid > 1 && t.lookup(p.ppid) != nil && t.seen[p.ppid].desc)
	t.seen[pid] = e
	return e
}

func traced(r Role) bool { return r == RoleWorker || r == RoleDaemon }

// setRole moves e to role, starting or stopping its tracing.
func (t *tracker) setRole(e *entry, role Role) {
	if e.role == role {
		return
	}
	switch {
	case traced(role) && !traced(e.role):
		if err := t.tracer.Add(e.pid); err != nil {
			t.logf("trace pid %d: %v", e.pid, err)
			return
		}
	case !traced(role) && traced(e.role):
		t.noteSealed(e.pid)
		t.tracer.Remove(e.pid)
	}
	e.role = role
	if role != RoleNone {
		t.ever[e.pid] = role
	} else {
		delete(t.ever, e.pid)
	}
	switch role {
	case RoleSupervisor:
		t.logf("pid %d has a worker child: a supervisor, no longer traced", e.pid)
	case RoleWorker, RoleDaemon:
		t.logf("tracing %s pid %d: %s", role, e.pid, strings.Join(e.argv, " "))
	}
}

func (t *tracker) noteSealed(pid int) {
	if t.tracer.Sealed(pid) {
		t.sealed[pid] = true
	}
}

// scan looks for new, changed and gone processes once.
func (t *tracker) scan() error {
	pids, err := listPids(t.procRoot)
	if err != nil {
		return err
	}
	live := make(map[int]bool, len(pids))
	for _, pid := range pids {
		live[pid] = true
		e := t.seen[pid]
		if e != nil {
			if !e.desc || e.role == RoleWorker || e.role == RoleSupervisor {
				continue
			}
			p, ok := readProc(t.procRoot, pid)
			if !ok || (p.comm == e.comm && slices.Equal(p.argv, e.argv)) {
				continue
			}
			e.proc = p // it exec'd
		} else if e = t.lookup(pid); e == nil || !e.desc {
			continue
		}
		role := classify(e.comm, e.argv, t.comm)
		if role == RoleNone && pid == t.rootPid && t.rootIsDaemon {
			role = RoleDaemon
		}
		t.setRole(e, role)
		if role == RoleWorker {
			if parent := t.seen[e.ppid]; parent != nil && parent.role == RoleDaemon && !hasArg(parent, "--no-supervisor") {
				t.setRole(parent, RoleSupervisor)
			}
		}
	}
	for pid, e := range t.seen {
		if live[pid] {
			continue
		}
		if traced(e.role) {
			t.noteSealed(pid)
			t.tracer.Remove(pid)
		}
		delete(t.seen, pid)
	}
	return nil
}

// finish records which live traced processes installed a filter.
func (t *tracker) finish() {
	for pid, e := range t.seen {
		if traced(e.role) {
			t.noteSealed(pid)
		}
	}
}

// count returns how many processes were traced with each role.
func (t *tracker) count() map[Role]int {
	n := map[Role]int{}
	for _, r := range t.ever {
		n[r]++
	}
	return n
}

func hasArg(e *entry, arg string) bool {
	if e == nil || len(e.argv) == 0 {
		return false
	}
	return slices.Contains(e.argv[1:], arg)
}
