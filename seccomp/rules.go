package seccomp

import (
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// Rule allows one syscall: with any arguments when When is nil, otherwise
// when at least one Match of When holds. Several rules may name the same
// syscall (each caller lists what it needs); Program merges them.
type Rule struct {
	Syscall string  // the kernel's name on x86_64, e.g. "openat", "newfstatat"
	When    []Match // nil: any arguments
	By      string  // the caller that needs it, and why the restriction is what it is
	// Errno, when not 0, answers the syscall with this error instead of
	// running it (When must be nil): for calls whose arguments a filter
	// cannot see and whose callers have a fallback (clone3 -> clone).
	Errno unix.Errno
	// Rare, when set, says why a test run may never make this call (a Go
	// runtime path taken under memory pressure, a cgo build, a signal):
	// tools/sysaudit lists such entries, unseen, for review instead of
	// failing on them. Every other entry must be seen by make test's audit.
	Rare string
}

// Match is a conjunction: it holds when every Cond holds.
type Match []Cond

// Cond holds when (args[Arg] & Mask) == Value, on the full 64-bit argument.
type Cond struct {
	Arg   int // 0..5
	Mask  uint64
	Value uint64
}

// Eq is args[arg] == v.
func Eq(arg int, v uint64) Cond { return Cond{Arg: arg, Mask: ^uint64(0), Value: v} }

// MaskedEq is args[arg] & mask == v.
func MaskedEq(arg int, mask, v uint64) Cond { return Cond{Arg: arg, Mask: mask, Value: v} }

// NoneOf is "no bit of bits is set in args[arg]".
func NoneOf(arg int, bits uint64) Cond { return Cond{Arg: arg, Mask: bits, Value: 0} }

// OneOf allows args[arg] equal to any of vals (one Match each).
func OneOf(arg int, vals ...uint64) []Match {
	ms := make([]Match, len(vals))
	for i, v := range vals {
		ms[i] = Match{Eq(arg, v)}
	}
	return ms
}

// Where allows the syscall when all of cs hold.
func Where(cs ...Cond) []Match { return []Match{cs} }

// Options select the filter's behaviour.
type Options struct {
	// Action taken on a syscall the table does not allow. The zero value is
	// ActionKill.
	Action Action
	// PID is the process the filter is for: kill and tgkill are allowed only
	// towards it (the Go runtime signals its own threads; crash points kill
	// the process itself). 0 in Rules leaves the target unrestricted;
	// Install fills in os.Getpid().
	PID int
	// HTTP adds what a net/http server needs after start-up (the worker's
	// --pprof-addr and --metrics-addr; the listeners exist before Install):
	// accepting connections and CPU profiles. Off, none of it is allowed.
	HTTP bool
}

// Flags the Go runtime passes to clone for a new thread (runtime/os_linux.go
// cloneFlags); runtime·clone adds CLONE_SETTLS when it has an m and a g.
const (
	goThreadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
		unix.CLONE_SYSVSEM | unix.CLONE_THREAD
	// glibc's pthread_create (nptl create_thread), which starts the Go
	// runtime's threads in a cgo binary (vfsd links os/user and net).
	glibcThreadFlags = goThreadFlags | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID
	futexWaitPrivate = 0 | 128 // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
	futexWakePrivate = 1 | 128 // FUTEX_WAKE | FUTEX_PRIVATE_FLAG
	memfdFlags       = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
)

// Rules returns the worker's allowlist. It is a pure function of o: the
// same options give the same table.
func Rules(o Options) []Rule {
	self := []Match(nil)
	if o.PID > 0 {
		self = Where(Eq(0, uint64(o.PID)))
	}
	rules := baseRules(self)
	if o.HTTP {
		rules = append(rules, httpRules...)
	}
	return rules
}

// httpRules serve the worker's pprof and metrics endpoints (engine/worker
// observe.go) on listeners opened before Install.
var httpRules = []Rule{
	{Syscall: "accept4", By: "net/http Server.Serve: accept a pprof/metrics connection (net.Listener.Accept)"},
	{Syscall: "getsockname", By: "net: an accepted connection's local address (netFD.setAddr)"},
	{Syscall: "setsockopt", When: []Match{
		{Eq(1, unix.IPPROTO_TCP), Eq(2, unix.TCP_NODELAY)},
		{Eq(1, unix.SOL_SOCKET), Eq(2, unix.SO_KEEPALIVE)},
		{Eq(1, unix.IPPROTO_TCP), Eq(2, unix.TCP_KEEPIDLE)},
		{Eq(1, unix.IPPROTO_TCP), Eq(2, unix.TCP_KEEPINTVL)},
		{Eq(1, unix.IPPROTO_TCP), Eq(2, unix.TCP_KEEPCNT)},
	}, By: "net: accepted TCP connections get TCP_NODELAY and keep-alive (net.ListenConfig defaults); nothing else"},
	{Syscall: "setitimer", By: "runtime/pprof CPU profile (/debug/pprof/profile): process-wide ITIMER_PROF (runtime.setProcessCPUProfiler)"},
	{Syscall: "timer_create", By: "runtime/pprof CPU profile: per-thread CLOCK_THREAD_CPUTIME_ID timers (runtime.setThreadCPUProfiler)"},
	{Syscall: "timer_settime", By: "runtime/pprof CPU profile: arm and disarm the per-thread timers"},
	{Syscall: "timer_delete", By: "runtime/pprof CPU profile: per-thread timers removed when profiling stops"},
}

func baseRules(self []Match) []Rule {
	return []Rule{
		// --- Go runtime -------------------------------------------------
		{Syscall: "futex", When: OneOf(1, futexWaitPrivate, futexWakePrivate),
			By: "Go runtime: futexsleep/futexwakeup (runtime/os_linux.go) use only the private wait and wake"},
		{Syscall: "clone", When: OneOf(0, goThreadFlags, goThreadFlags|unix.CLONE_SETTLS, glibcThreadFlags),
			By: "Go runtime: newosproc starts threads (cloneFlags, plus CLONE_SETTLS); cgo builds: glibc pthread_create " +
				"after clone3 answered ENOSYS; threads only: no fork, no new namespaces"},
		{Syscall: "clone3", Errno: unix.ENOSYS,
			By: "glibc pthread_create (cgo builds) tries clone3 first; its flags are in memory a filter cannot read, " +
				"so ENOSYS sends glibc to clone, whose flags are checked", Rare: "cgo builds only: make build links vfsd statically (pure Go), whose threads never call it"},
		{Syscall: "set_robust_list", By: "glibc: every new thread of a cgo build registers its robust futex list",
			Rare: "cgo builds only: make build links vfsd statically (pure Go), whose threads never call it"},
		{Syscall: "rseq", By: "glibc 2.35+: every new thread of a cgo build registers restartable sequences",
			Rare: "cgo builds only: make build links vfsd statically (pure Go), whose threads never call it"},
		{Syscall: "mmap", When: Where(NoneOf(2, unix.PROT_EXEC)),
			By: "Go runtime heap and stacks, glibc thread stacks (never executable); vring/mem guest RAM, vring/inflight, maptable, journal memfds (PROT_READ|PROT_WRITE)"},
		{Syscall: "munmap", By: "Go runtime; vring/mem.Unmap on SET_MEM_TABLE/REM_MEM_REG/reset; inflight region replaced",
			Rare: "the Go heap is rarely unmapped; guest memory is unmapped on a memory-table change, which the tests make before the filter or not at all"},
		{Syscall: "mprotect", When: Where(NoneOf(2, unix.PROT_EXEC)),
			By:   "Go runtime: sysFaultOS (PROT_NONE); glibc pthread stacks: guard page and stack protection (cgo builds); never PROT_EXEC",
			Rare: "Go runtime only under debug settings or in cgo builds' new threads"},
		{Syscall: "madvise", When: OneOf(2, unix.MADV_DONTNEED, unix.MADV_FREE, unix.MADV_HUGEPAGE,
			unix.MADV_NOHUGEPAGE, unix.MADV_COLLAPSE),
			By:   "Go runtime: scavenger returns memory (DONTNEED/FREE) and huge page hints (runtime/mem_linux.go)",
			Rare: "the background scavenger runs when the heap shrinks, which a short test seldom makes it do"},
		{Syscall: "prctl", When: Where(Eq(0, unix.PR_SET_VMA), Eq(1, unix.PR_SET_VMA_ANON_NAME)),
			By:   "Go runtime (1.25+): setVMAName names new heap mappings (GODEBUG decoratemappings)",
			Rare: "only when the heap maps a new arena after start-up"},
		{Syscall: "rt_sigaction", By: "Go runtime: signal handlers (os/signal for SIGTERM/SIGINT)",
			Rare: "handlers are installed before the filter; again only if a signal's disposition changes later"},
		{Syscall: "rt_sigprocmask", By: "Go runtime: thread start/exit and signal masking"},
		{Syscall: "rt_sigreturn", By: "Go runtime: return from every signal handler (preemption SIGURG)"},
		{Syscall: "sigaltstack", By: "Go runtime: per-thread signal stacks (minit/unminit)"},
		{Syscall: "restart_syscall", By: "kernel: resumes an interrupted nanosleep/futex wait after a signal",
			Rare: "only when a signal (SIGSTOP/SIGCONT, a debugger) interrupts a sleep"},
		{Syscall: "gettid", By: "Go runtime: runtime·clone records m.procid; raise"},
		{Syscall: "getpid", By: "Go runtime: signalM/raise (tgkill target); crash points"},
		{Syscall: "tgkill", When: self, By: "Go runtime: signalM preempts its own threads (SIGURG), raise; own process only"},
		{Syscall: "kill", When: self, By: "Go runtime: raiseproc on a fatal signal; crash points kill the worker itself; own process only"},
		{Syscall: "nanosleep", By: "Go runtime: usleep (sysmon, spinning)"},
		{Syscall: "sched_yield", By: "Go runtime: osyield"},
		{Syscall: "sched_getaffinity", By: "Go runtime (1.25+): sysmon re-reads the CPU set to update GOMAXPROCS"},
		{Syscall: "clock_gettime", By: "Go runtime: nanotime/walltime when the vDSO is not used"},
		{Syscall: "getrandom", By: "Go runtime and crypto/rand when the vDSO getrandom is unavailable",
			Rare: "kernels since 6.11 answer it from the vDSO"},
		{Syscall: "exit", By: "Go runtime: a thread ends (a goroutine exits while locked to its OS thread: the chroot sandbox's proc thread at close)",
			Rare: "threads end only at a clean close; workers end with exit_group or a kill"},
		{Syscall: "exit_group", By: "process exit (os.Exit, fatal error)"},
		{Syscall: "epoll_create1", By: "Go netpoller (lazy init); engine/dataplane: one epoll per queue thread (StartQueue)"},
		{Syscall: "epoll_ctl", By: "Go netpoller; engine/dataplane: kick/ctl/done eventfds"},
		{Syscall: "epoll_pwait", By: "Go netpoller; engine/dataplane queue threads (x/sys EpollWait is epoll_pwait)"},
		{Syscall: "eventfd2", By: "Go netpoller break; engine/dataplane ctl/done eventfds per queue"},
		{Syscall: "read", By: "engine/dataplane: drain kick/ctl eventfds; Go netpoller eventfd"},
		{Syscall: "write", By: "logging to stderr; call eventfd signalling; Go netpoller break"},
		{Syscall: "close", By: "everyone: fds of files, handles, eventfds, memory regions, received vhost-user fds"},
		{Syscall: "pread64", By: "Go runtime (1.25+): sysmon re-reads the cgroup CPU limit (GOMAXPROCS updates)",
			Rare: "only in a cgroup with a CPU limit; the maptable and journal headers are read before the filter"},

		// --- vhost-user (engine/vhostuser, vring, vring/mem, vring/inflight) ---
		{Syscall: "recvmsg", By: "engine/vhostuser Conn.Read: messages with SCM_RIGHTS fds (memory regions, kick/call/err eventfds, inflight)"},
		{Syscall: "sendmsg", By: "engine/vhostuser Conn.Write replies (GET_INFLIGHT_FD with an fd); engine/fdstore Notify with SCM_RIGHTS"},
		{Syscall: "shutdown", By: "engine/vhostuser Conn.Shutdown: cancel unblocks Read",
			Rare: "a clean stop by context (in-process use); a worker process ends with exit_group"},
		{Syscall: "ppoll", By: "engine/dataplane: queue stop waits on done eventfd (x/sys Poll is ppoll)",
			Rare: "a broken ring with blocking requests still running"},
		{Syscall: "fstat", By: "vring/mem.Map checks a region fd's size; maptable/journal Open"},
		{Syscall: "memfd_create", When: OneOf(1, memfdFlags),
			By:   "vring/inflight.Create on GET_INFLIGHT_FD; maptable.Create (MFD_CLOEXEC|MFD_ALLOW_SEALING only)",
			Rare: "GET_INFLIGHT_FD reaches the worker only in --no-supervisor mode (the supervisor answers it), and QEMU's vhost-user-fs never sends it"},
		{Syscall: "ftruncate", By: "vring/inflight and maptable size their memfds; passthrough SETATTR size"},
		{Syscall: "fcntl", When: OneOf(1, unix.F_GETFL, unix.F_SETFL, unix.F_GETFD, unix.F_SETFD),
			By: "engine/vhostuser NewConn SetNonblock(false); engine/fdstore CloseOnExec"},
		{Syscall: "fcntl", When: OneOf(1, unix.F_ADD_SEALS, unix.F_GET_SEALS, unix.F_DUPFD_CLOEXEC),
			By: "vring/inflight, maptable, journal: seal memfds against resize, dup on Open"},

		// --- passthrough filesystem (engine/passthrough, engine/fuse) ----
		{Syscall: "openat", By: "passthrough: LOOKUP (O_PATH), OPEN/CREATE/OPENDIR, re-open through /proc/self/fd; os.Remove of the socket at exit"},
		{Syscall: "statx", By: "passthrough: LOOKUP/GETATTR/STATX attributes, mount id"},
		{Syscall: "name_to_handle_at", By: "passthrough inode identity (mount id / file handle)"},
		{Syscall: "open_by_handle_at", When: Where(Eq(2, unix.O_PATH|unix.O_CLOEXEC)),
			By: "passthrough state.go loadInode: a resumed worker reopens an inode from its persisted file handle " +
				"on the shared directory's mount fd (O_PATH|O_CLOEXEC only); found by tools/e2e under --seccomp=kill " +
				"(the worker died of SIGSYS on its first LOOKUP after a restart)"},
		{Syscall: "readlinkat", By: "passthrough READLINK"},
		{Syscall: "mkdirat", By: "passthrough MKDIR"},
		{Syscall: "mknodat", By: "passthrough MKNOD (fifos, sockets, device nodes)"},
		{Syscall: "symlinkat", By: "passthrough SYMLINK"},
		{Syscall: "unlinkat", By: "passthrough UNLINK/RMDIR; os.Remove of the socket path at exit"},
		{Syscall: "renameat2", By: "passthrough RENAME/RENAME2 (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT)"},
		{Syscall: "linkat", By: "passthrough LINK, TMPFILE linking"},
		{Syscall: "utimensat", By: "passthrough SETATTR times"},
		{Syscall: "fchownat", By: "passthrough SETATTR uid/gid (AT_EMPTY_PATH on O_PATH fds)"},
		{Syscall: "fchmodat", By: "passthrough SETATTR mode through /proc/self/fd"},
		{Syscall: "fchmod", By: "passthrough SETATTR mode on an open fd"},
		{Syscall: "faccessat2", By: "passthrough ACCESS"},
		{Syscall: "getdents64", By: "passthrough READDIR/READDIRPLUS"},
		{Syscall: "lseek", By: "passthrough LSEEK (SEEK_DATA/SEEK_HOLE), directory rewind"},
		{Syscall: "fstatfs", By: "passthrough STATFS"},
		{Syscall: "fallocate", By: "passthrough FALLOCATE"},
		{Syscall: "copy_file_range", By: "passthrough COPY_FILE_RANGE"},
		{Syscall: "fsync", By: "passthrough FSYNC/FSYNCDIR"},
		{Syscall: "fdatasync", By: "passthrough FSYNC with FUSE_FSYNC_FDATASYNC"},
		{Syscall: "syncfs", By: "passthrough SYNCFS"},
		{Syscall: "flock", By: "passthrough SETLK/SETLKW with FUSE_LK_FLOCK, RELEASE unlock"},
		{Syscall: "fcntl", When: OneOf(1, unix.F_OFD_GETLK, unix.F_OFD_SETLK, unix.F_OFD_SETLKW),
			By: "passthrough GETLK/SETLK/SETLKW: open file description locks only (no F_SETOWN, F_SETSIG, leases)"},
		{Syscall: "fcntl", When: OneOf(1, unix.F_DUPFD_CLOEXEC),
			By: "passthrough: dup of a handle fd (FLUSH closes the dup)"},
		{Syscall: "preadv", By: "engine/fuse ReadFile: READ straight into guest RAM"},
		{Syscall: "io_uring_setup", By: "engine/uring: one ring per request queue, set up on its thread"},
		{Syscall: "io_uring_register", When: OneOf(1, 11, 12),
			By:   "engine/uring: IORING_REGISTER_RESTRICTIONS (READV only) and ENABLE_RINGS, nothing else",
			Rare: "only where io_uring_setup succeeds (not with kernel.io_uring_disabled or a runtime that denies io_uring)"},
		{Syscall: "io_uring_enter", By: "engine/dataplane: a batch's READs, submitted and awaited together",
			Rare: "only where io_uring_setup succeeds (not with kernel.io_uring_disabled or a runtime that denies io_uring)"},
		{Syscall: "pwritev", By: "engine/fuse WriteFile: WRITE straight from guest RAM"},
		{Syscall: "writev", By: "engine/fuse WriteFile: WRITE on an O_APPEND handle"},
		{Syscall: "getxattr", By: "passthrough GETXATTR through /proc/self/fd (special files)"},
		{Syscall: "setxattr", By: "passthrough SETXATTR through /proc/self/fd"},
		{Syscall: "listxattr", By: "passthrough LISTXATTR through /proc/self/fd"},
		{Syscall: "removexattr", By: "passthrough REMOVEXATTR through /proc/self/fd"},
		{Syscall: "fgetxattr", By: "passthrough GETXATTR on regular files and directories"},
		{Syscall: "fsetxattr", By: "passthrough SETXATTR"},
		{Syscall: "flistxattr", By: "passthrough LISTXATTR"},
		{Syscall: "fremovexattr", By: "passthrough REMOVEXATTR"},
		{Syscall: "setfsuid", By: "passthrough creds.go: create as the guest's uid on the calling thread"},
		{Syscall: "setfsgid", By: "passthrough creds.go: create as the guest's gid on the calling thread"},
		{Syscall: "setgroups", By: "passthrough creds.go asCreator: FUSE_CREATE_SUPP_GROUP's group as the calling thread's only " +
			"supplementary group while it creates, then the process's groups again (raw syscall: this thread only)"},
	}
}

// Names returns the syscalls Rules handles (allowed, or answered with a
// fixed errno), sorted and without duplicates (for tools/sysaudit), with
// the HTTP rules included: an audit of a worker serving pprof or metrics
// must not report them as missing.
func Names() []string { return namesOf(Rules(Options{HTTP: true})) }

func namesOf(rules []Rule) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rules {
		if !seen[r.Syscall] {
			seen[r.Syscall] = true
			out = append(out, r.Syscall)
		}
	}
	sort.Strings(out)
	return out
}

// RareNames maps each syscall with a Rare rule to the reason.
func RareNames() map[string]string {
	out := map[string]string{}
	for _, r := range Rules(Options{HTTP: true}) {
		if r.Rare != "" {
			out[r.Syscall] = r.Rare
		}
	}
	return out
}

// Number returns the x86_64 number of the named syscall.
func Number(name string) (uint32, bool) {
	nr, ok := numbers[name]
	return nr, ok
}

// Name returns the x86_64 name of syscall nr, or "syscall_<nr>" when the
// table has none.
func Name(nr uint32) string {
	if int(nr) < len(amd64Names) && amd64Names[nr] != "" {
		return amd64Names[nr]
	}
	return fmt.Sprintf("syscall_%d", nr)
}

var numbers = func() map[string]uint32 {
	m := make(map[string]uint32, len(amd64Names))
	for nr, name := range amd64Names {
		if name != "" {
			m[name] = uint32(nr)
		}
	}
	return m
}()
