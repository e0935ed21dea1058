package sandbox

// User namespaces: --uid-map/--gid-map (virtiofsd's :namespace_id:host_id:count:).
//
// With a mapping, the supervisor starts every worker (the first and each
// restarted one) with CLONE_NEWUSER on top of CloneFlags, so that the
// worker's mount, pid, net, ipc and uts namespaces are owned by its own user
// namespace. Inside it the worker is uid 0 / gid 0 with all capabilities
// over those namespaces only; on the host it acts as the host ids uid/gid 0
// of the namespace map to, and its capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN,
// ...) apply only to inodes whose owner is mapped.
//
// How the maps are written:
//
//   - a root supervisor, or an unprivileged one whose maps are only its own
//     euid and egid (count 1): Go's SysProcAttr.UidMappings/GidMappings,
//     written by the supervisor between clone and exec; the child then
//     setuid(0)/setgid(0)s inside the namespace, so its first exec already
//     runs as the namespace's root (unprivileged: setgroups is denied, as
//     the kernel requires for a gid_map written without CAP_SETGID);
//   - otherwise (an unprivileged supervisor with /etc/subuid, /etc/subgid
//     ranges): the setuid helpers newuidmap(1)/newgidmap(1) (package
//     uidmap). Namespace id 0 must then map to the supervisor's own euid
//     and egid: the worker runs under the supervisor's ids, cannot setuid
//     before its maps exist, and gains its capabilities only by an exec as
//     the namespace's root. The worker gets one end of a SOCK_SEQPACKET
//     socketpair (fd named in VFSD_IDMAP_FD); first thing in Enter's stage
//     one it writes a byte (the kernel attaches its pid, translated into the
//     supervisor's pid namespace: SCM_CREDENTIALS), the supervisor runs the
//     helpers on that pid and answers one byte; the worker then re-executes
//     itself, now as uid 0 of its namespace. If a helper fails the
//     supervisor logs why and SIGKILLs the worker.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EnvIDMapFD names the worker's end of the socket it waits on until the
// supervisor has run newuidmap/newgidmap (set by UserNS.Prepare).
const EnvIDMapFD = "VFSD_IDMAP_FD"

// EnvForceHelpers=1 in the supervisor's environment makes it use
// newuidmap/newgidmap even where SysProcAttr would do (tests, and a check
// of the helpers' setup by hand).
const EnvForceHelpers = "VFSD_USERNS_HELPERS"

// MaxIDMaps is the kernel's limit of lines in uid_map and gid_map.
const MaxIDMaps = 340

// helperTimeout bounds the supervisor's wait for a worker's request to have
// its maps written (a worker that failed to start never asks).
const helperTimeout = 60 * time.Second

// IDMap is one line of a uid_map or gid_map: Count ids from Inside (in the
// namespace) onward are Host onward on the host.
type IDMap struct{ Inside, Host, Count uint32 }

// ParseIDMap parses virtiofsd's ":namespace_id:host_id:count:".
func ParseIDMap(s string) (IDMap, error) {
	bad := errors.New("want :namespace_id:host_id:count: (e.g. :0:100000:65536:)")
	if !strings.HasPrefix(s, ":") || !strings.HasSuffix(s, ":") || len(s) < 2 {
		return IDMap{}, bad
	}
	f := strings.Split(s[1:len(s)-1], ":")
	if len(f) != 3 {
		return IDMap{}, bad
	}
	var v [3]uint32
	for i, x := range f {
		n, err := strconv.ParseUint(x, 10, 32)
		if err != nil || x == "" || x[0] == '+' {
			return IDMap{}, bad
		}
		v[i] = uint32(n)
	}
	m := IDMap{v[0], v[1], v[2]}
	if m.Count == 0 {
		return IDMap{}, errors.New("count must be at least 1")
	}
	// (uid_t)-1 is not an id: the kernel refuses ranges reaching it.
	if uint64(m.Inside)+uint64(m.Count) >= 1<<32 || uint64(m.Host)+uint64(m.Count) >= 1<<32 {
		return IDMap{}, errors.New("the range passes 4294967294, the highest id")
	}
	return m, nil
}

func (m IDMap) String() string { return fmt.Sprintf(":%d:%d:%d:", m.Inside, m.Host, m.Count) }

// toHost maps a namespace id to the host, if mapped.
func toHost(maps []IDMap, id uint32) (uint32, bool) {
	for _, m := range maps {
		if id >= m.Inside && id-m.Inside < m.Count {
			return m.Host + (id - m.Inside), true
		}
	}
	return 0, false
}

func overlap(a, b, n, m uint32) bool {
	return uint64(a) < uint64(b)+uint64(m) && uint64(b) < uint64(a)+uint64(n)
}

// checkMaps checks one kind's list as the kernel would, and that namespace
// id 0 (the worker's) is mapped.
func checkMaps(kind string, maps []IDMap) error {
	if len(maps) > MaxIDMaps {
		return fmt.Errorf("--%s-map: at most %d mappings (the kernel's limit)", kind, MaxIDMaps)
	}
	for i, a := range maps {
		for _, b := range maps[:i] {
			if overlap(a.Inside, b.Inside, a.Count, b.Count) {
				return fmt.Errorf("--%s-map %s and %s: the namespace ranges overlap", kind, b, a)
			}
			if overlap(a.Host, b.Host, a.Count, b.Count) {
				return fmt.Errorf("--%s-map %s and %s: the host ranges overlap", kind, b, a)
			}
		}
	}
	if _, ok := toHost(maps, 0); !ok {
		return fmt.Errorf("--%s-map: namespace id 0 must be mapped (the worker runs as 0 in its user namespace)", kind)
	}
	return nil
}

// UserNS is the worker's user namespace (--uid-map, --gid-map). The zero
// value means none.
type UserNS struct {
	UIDs, GIDs []IDMap
	// Log receives the newuidmap path's failures (default slog.Default()).
	Log *slog.Logger

	// Resolved by Check.
	checked          bool
	root             bool   // the supervisor is root: any map, through SysProcAttr
	newuidmap        string // non-empty: the helper path
	newgidmap        string
	euid, egid       int
	lookPath         func(string) (string, error) // tests
	geteuid, getegid func() int                   // tests
}

// Enabled reports whether a map was given.
func (u *UserNS) Enabled() bool { return u != nil && (len(u.UIDs) > 0 || len(u.GIDs) > 0) }

// Helpers reports whether the maps are written with newuidmap/newgidmap
// (valid after Check).
func (u *UserNS) Helpers() bool { return u.newuidmap != "" }

// Check validates the maps against the calling process (the supervisor):
// both lists given, kernel rules, and for an unprivileged caller either its
// own ids only or the helpers (which must be installed).
func (u *UserNS) Check() error {
	if !u.Enabled() {
		return nil
	}
	look, euidf, egidf := exec.LookPath, os.Geteuid, os.Getegid
	if u.lookPath != nil {
		look = u.lookPath
	}
	if u.geteuid != nil {
		euidf, egidf = u.geteuid, u.getegid
	}
	if len(u.UIDs) == 0 || len(u.GIDs) == 0 {
		return errors.New("--uid-map and --gid-map go together: give both")
	}
	if err := checkMaps("uid", u.UIDs); err != nil {
		return err
	}
	if err := checkMaps("gid", u.GIDs); err != nil {
		return err
	}
	u.euid, u.egid = euidf(), egidf()
	u.root = u.euid == 0
	u.newuidmap, u.newgidmap = "", ""
	own := func(maps []IDMap, id int) bool {
		return len(maps) == 1 && maps[0] == IDMap{0, uint32(id), 1}
	}
	forced := os.Getenv(EnvForceHelpers) == "1"
	if forced || (!u.root && !(own(u.UIDs, u.euid) && own(u.GIDs, u.egid))) {
		if h, _ := toHost(u.UIDs, 0); int(h) != u.euid {
			return fmt.Errorf("--uid-map: with newuidmap (euid %d), namespace uid 0 must map to %d, your own uid "+
				"(the worker gains its capabilities as the namespace's root under your uid)", u.euid, u.euid)
		}
		if h, _ := toHost(u.GIDs, 0); int(h) != u.egid {
			return fmt.Errorf("--gid-map: with newgidmap (egid %d), namespace gid 0 must map to %d, your own gid",
				u.egid, u.egid)
		}
		var err error
		if u.newuidmap, err = look("newuidmap"); err == nil {
			u.newgidmap, err = look("newgidmap")
		}
		if err != nil {
			u.newuidmap, u.newgidmap = "", ""
			return fmt.Errorf("--uid-map/--gid-map: run unprivileged, mappings beyond your own uid/gid need the "+
				"setuid helpers newuidmap(1) and newgidmap(1) (install the package uidmap): %w", err)
		}
	}
	u.checked = true
	return nil
}

// Prepare wraps the supervisor's PrepareWorker hook base (PrepareCmd): it
// removes any inherited EnvIDMapFD and, with maps, adds CLONE_NEWUSER and
// the maps (or the helper socket). Call Check first (Prepare checks again
// if it was not called on this UserNS, e.g. on a copy).
func (u *UserNS) Prepare(base func(*exec.Cmd)) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		base(cmd)
		env := cmd.Env[:0:0]
		for _, kv := range cmd.Env {
			if !strings.HasPrefix(kv, EnvIDMapFD+"=") {
				env = append(env, kv)
			}
		}
		cmd.Env = env
		if !u.Enabled() {
			return
		}
		if !u.checked {
			if err := u.Check(); err != nil {
				u.log().Error("user namespace: the worker will fail", "err", err)
				cmd.Path = "/nonexistent/vfsd-bad-id-maps"
				return
			}
		}
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		a := cmd.SysProcAttr
		a.Cloneflags |= unix.CLONE_NEWUSER
		if u.Helpers() {
			if err := u.prepareHelpers(cmd); err != nil {
				// The worker will find no EnvIDMapFD and no
				// capabilities; make its start fail visibly instead.
				u.log().Error("user namespace: cannot prepare the id map socket; the worker will fail", "err", err)
				cmd.Path = "/nonexistent/vfsd-idmap-socket-failed"
			}
			return
		}
		a.UidMappings = sysMaps(u.UIDs)
		a.GidMappings = sysMaps(u.GIDs)
		a.GidMappingsEnableSetgroups = u.root
		// Become the namespace's root before the exec, so that the
		// worker starts with its capabilities there.
		a.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: !u.root}
	}
}

func (u *UserNS) log() *slog.Logger {
	if u.Log != nil {
		return u.Log
	}
	return slog.Default()
}

func sysMaps(maps []IDMap) []syscall.SysProcIDMap {
	out := make([]syscall.SysProcIDMap, len(maps))
	for i, m := range maps {
		out[i] = syscall.SysProcIDMap{ContainerID: int(m.Inside), HostID: int(m.Host), Size: int(m.Count)}
	}
	return out
}

// helperArgs is newuidmap/newgidmap's command line for pid.
func helperArgs(pid int, maps []IDMap) []string {
	a := []string{strconv.Itoa(pid)}
	for _, m := range maps {
		a = append(a, strconv.FormatUint(uint64(m.Inside), 10), strconv.FormatUint(uint64(m.Host), 10),
			strconv.FormatUint(uint64(m.Count), 10))
	}
	return a
}

// prepareHelpers gives the worker one end of a socketpair (after the fds
// the supervisor set up, so their numbers do not change) and serves the
// other end.
func (u *UserNS) prepareHelpers(cmd *exec.Cmd) error {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(sp[0], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(sp[0])
		unix.Close(sp[1])
		return err
	}
	child := os.NewFile(uintptr(sp[1]), "idmap")
	fd := 3 + len(cmd.ExtraFiles)
	cmd.ExtraFiles = append(cmd.ExtraFiles, child)
	cmd.Env = append(cmd.Env, EnvIDMapFD+"="+strconv.Itoa(fd))
	go u.serveHelpers(sp[0], child)
	return nil
}

// serveHelpers waits for the worker's request, runs the helpers on its pid
// and answers; on failure it kills the worker. Our copy of the worker's end
// is closed once the worker has asked (it is running, so it has its own) or
// after helperTimeout (it never started).
func (u *UserNS) serveHelpers(fd int, child *os.File) {
	defer unix.Close(fd)
	closeChild := func() {
		if child != nil {
			child.Close()
			child = nil
		}
	}
	defer closeChild()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(helperTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return // the worker never asked: its start failed
		}
		n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			u.log().Error("user namespace: waiting for the worker", "err", err)
			return
		}
		if n > 0 {
			break
		}
	}
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
	for err == unix.EINTR {
		n, oobn, _, _, err = unix.Recvmsg(fd, buf, oob, 0)
	}
	closeChild()
	if err != nil || n == 0 {
		return // the worker died before asking
	}
	pid := 0
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if cr, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(cr.Pid)
			}
		}
	}
	if pid <= 0 {
		u.log().Error("user namespace: the worker's request carried no pid; its id maps are not written")
		return
	}
	for _, h := range []struct {
		path string
		maps []IDMap
	}{{u.newuidmap, u.UIDs}, {u.newgidmap, u.GIDs}} {
		out, err := exec.Command(h.path, helperArgs(pid, h.maps)...).CombinedOutput()
		if err != nil {
			u.log().Error("user namespace: id map helper failed; killing the worker", "worker", pid,
				"helper", h.path, "args", strings.Join(helperArgs(pid, h.maps), " "), "err", err,
				"output", strings.TrimSpace(string(out)))
			_ = unix.Kill(pid, unix.SIGKILL)
			return
		}
	}
	if _, err := unix.Write(fd, []byte{'k'}); err != nil {
		u.log().Error("user namespace: answer the worker", "worker", pid, "err", err)
	}
}

// awaitIDMap runs first in Enter's stage one. With EnvIDMapFD set (the
// helper path) it asks the supervisor to write this process's maps, waits
// for the answer and re-executes the binary: the exec as the namespace's
// root (now mapped) gives the worker its capabilities there. It returns
// nil at once without EnvIDMapFD, and only errors otherwise.
func awaitIDMap() error {
	v, ok := os.LookupEnv(EnvIDMapFD)
	if !ok {
		return nil
	}
	os.Unsetenv(EnvIDMapFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q: not an fd", EnvIDMapFD, v)
	}
	unix.CloseOnExec(fd)
	if _, err := unix.Write(fd, []byte{'?'}); err != nil {
		return fmt.Errorf("user namespace: ask the supervisor for id maps: %w", err)
	}
	buf := make([]byte, 1)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n != 1 || buf[0] != 'k' {
			return fmt.Errorf("user namespace: the supervisor did not write this worker's id maps (see its log; %v)", err)
		}
		break
	}
	unix.Close(fd)
	if os.Geteuid() != 0 || os.Getegid() != 0 {
		return fmt.Errorf("user namespace: after newuidmap/newgidmap this worker is uid %d gid %d, want 0 0",
			os.Geteuid(), os.Getegid())
	}
	err = unix.Exec("/proc/self/exe", os.Args, os.Environ())
	return fmt.Errorf("user namespace: re-exec /proc/self/exe: %w", err)
}

// remountFlags returns flags for an MS_REMOUNT|MS_BIND of path with the
// per-mount flags it has now (nosuid, nodev, noexec: a mount copied into a
// user namespace's mount namespace has them locked; clearing one is EPERM)
// added to want.
func remountFlags(path string, want uintptr) uintptr {
	var st unix.Statfs_t
	if unix.Statfs(path, &st) != nil {
		return want
	}
	for _, f := range []struct{ st, ms int64 }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_RDONLY, unix.MS_RDONLY},
	} {
		if int64(st.Flags)&f.st != 0 {
			want |= uintptr(f.ms)
		}
	}
	return want
}
