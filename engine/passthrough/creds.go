package passthrough

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// Per-thread filesystem credentials. setfsuid/setfsgid are per-thread in
// Linux (the raw syscalls, not Go's all-threads Setuid), so the goroutine is
// locked to its OS thread while they differ from the process's. A non-zero
// fsuid also drops the fs capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN,
// CAP_MKNOD, ...) for the thread, so the host checks the guest user's rights
// on the parent directory, as virtiofsd does.
//
// In a user namespace (--uid-map/--gid-map, engine/sandbox/userns.go) an id
// the namespace does not map cannot be switched to: setfsuid/setfsgid leave
// the thread's id as it was. asUser then answers EOVERFLOW, the kernel's
// own errno for a caller whose fsuid/fsgid has no mapping where a new inode
// would need one (may_o_create, vfs_mknod: "value too large for defined data
// type"); the request never runs under another id. EPERM remains the answer
// when the id is mapped but the switch is refused (no CAP_SETUID/SETGID).
// Host files owned by an unmapped id show as the overflow id
// (/proc/sys/kernel/overflowuid, 65534) in attributes: kernel behaviour.

// credState says what asUser/asCreator changed on the thread, for asSelf
// and asSelfCreator to undo (nothing when the guest user is the daemon's
// own ids: no syscall either way).
type credState uint8

const (
	credIDs    credState = 1 << iota // fsuid/fsgid switched
	credGroups                       // supplementary groups replaced
)

// asUser switches the calling thread's fsuid/fsgid to uid/gid. On success the
// caller must call fs.asSelf exactly once with the returned state.
func (fs *FS) asUser(uid, gid uint32) (credState, error) {
	runtime.LockOSThread()
	if uid == fs.euid && gid == fs.egid {
		return 0, nil
	}
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(cur) != gid {
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(fs.egid), 0, 0)
		runtime.UnlockOSThread()
		return 0, switchErr(gidMaps, gid)
	}
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
	if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != uid {
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(fs.euid), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(fs.egid), 0, 0)
		runtime.UnlockOSThread()
		return 0, switchErr(uidMaps, uid)
	}
	return credIDs, nil
}

// asSelf restores the process's credentials on the calling thread.
func (fs *FS) asSelf(c credState) {
	if c&credIDs != 0 {
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(fs.euid), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(fs.egid), 0, 0)
	}
	runtime.UnlockOSThread()
}

// idMaps is this process's uid_map or gid_map, read once (it is written
// before the worker runs and never changes).
type idMaps struct {
	once sync.Once
	path string
	ext  [][3]uint64 // inside, outside, count
	ok   bool
}

var (
	uidMaps = &idMaps{path: "/proc/self/uid_map"}
	gidMaps = &idMaps{path: "/proc/self/gid_map"}
)

// mapped reports whether id has a mapping in this process's user namespace
// (true when the map cannot be read: the caller then answers EPERM).
func (m *idMaps) mapped(id uint32) bool {
	m.once.Do(func() {
		b, err := os.ReadFile(m.path)
		if err != nil {
			return
		}
		m.ext, m.ok = parseIDMap(string(b)), true
	})
	if !m.ok {
		return true
	}
	for _, e := range m.ext {
		if uint64(id) >= e[0] && uint64(id)-e[0] < e[2] {
			return true
		}
	}
	return false
}

// parseIDMap parses the lines of /proc/PID/uid_map ("inside outside count").
func parseIDMap(s string) [][3]uint64 {
	var out [][3]uint64
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		var e [3]uint64
		bad := false
		for i := range f {
			n, err := strconv.ParseUint(f[i], 10, 64)
			bad = bad || err != nil
			e[i] = n
		}
		if !bad {
			out = append(out, e)
		}
	}
	return out
}

// switchErr is asUser's answer when the switch to id did not happen.
func switchErr(m *idMaps, id uint32) error {
	if !m.mapped(id) {
		return unix.EOVERFLOW
	}
	return unix.EPERM
}

// asCreator is asUser for the requests that create an inode (MKNOD, MKDIR,
// SYMLINK, CREATE, TMPFILE). With FUSE_CREATE_SUPP_GROUP negotiated, the
// guest kernel sends the creator's supplementary group that matches the
// parent directory's group; it becomes the thread's only supplementary
// group (setgroups is per thread as a raw syscall), so the host grants the
// write access the guest user has through that group, as in the guest. If
// the host refuses setgroups (a user namespace that denies it) the request
// runs without it. The state says what asSelfCreator must restore.
func (fs *FS) asCreator(req *fuse.Request) (credState, error) {
	c, err := fs.asUser(req.UID, req.GID)
	if err != nil {
		return 0, err
	}
	if !fs.has(fuse.FlagCreateSuppGroup) {
		return c, nil
	}
	g, ok := req.SuppGroup()
	if !ok || g == req.GID || c&credIDs == 0 { // the daemon's own ids: its own groups
		return c, nil
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 1, uintptr(unsafe.Pointer(&g)), 0); e == 0 {
		c |= credGroups
	}
	return c, nil
}

// asSelfCreator undoes asCreator: the process's supplementary groups (when
// replaced), then asSelf.
func (fs *FS) asSelfCreator(c credState) {
	if c&credGroups != 0 {
		var p uintptr
		if len(fs.groups) > 0 {
			p = uintptr(unsafe.Pointer(&fs.groups[0]))
		}
		unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(fs.groups)), p, 0)
	}
	fs.asSelf(c)
}
