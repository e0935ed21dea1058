package sandbox

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The chroot sandbox (--sandbox=chroot), for hosts where the worker cannot
// get namespaces of its own (a container without CAP_SYS_ADMIN, say): the
// worker chroot()s into the shared directory. Nothing else of the host is
// in its root, not even /proc, so stage one prepares what the worker needs
// from outside before the chroot:
//
//   - /proc/self/fd, opened O_PATH and inherited by stage two
//     (EnvProcFD): the filesystem re-opens O_PATH fds through it, and runs
//     path-form xattr calls relative to it (engine/passthrough).
//   - The binary, opened O_PATH: stage two is started with
//     execveat(fd, "", AT_EMPTY_PATH) because no path reaches it. The ELF
//     interpreter of a dynamically linked binary is looked up by path in
//     the new root, where the guest controls every file, so chroot mode
//     needs a statically linked vfsd (CGO_ENABLED=0; `make build` builds
//     one) and refuses any other.
//   - TZ and GOMAXPROCS: the Go runtime would otherwise read
//     /etc/localtime and cgroup files by path, that is the guest's files
//     inside the share. Unset TZ becomes UTC; unset GOMAXPROCS the value
//     stage one computed.
//
// CAP_SYS_CHROOT is never kept (a chrooted process holding it can leave
// the chroot), so --modcaps=+sys_chroot is refused in this mode.
//
// Crash recovery needs nothing more: there is no new mount namespace, so a
// restarted worker's root is the same vfsmount as the dead worker's and
// link/rename between stored and new fds never hits EXDEV.

const (
	// EnvProcFD names stage one's O_PATH fd of /proc/self/fd (chroot mode).
	EnvProcFD = "VFSD_SANDBOX_PROCFD"
	// EnvRootID is the shared directory's "dev:ino", for stage two's check.
	EnvRootID = "VFSD_SANDBOX_ROOTID"
)

// capSysChroot is CAP_SYS_CHROOT's number.
const capSysChroot = 18

// setupChroot is stage one in chroot mode: it returns the binary's O_PATH
// fd to execveat and the environment additions; the caller drops the
// bounding set and execs.
func setupChroot(shared string, caps CapSet) (exefd int, env []string, err error) {
	if caps.Has(capSysChroot) {
		return -1, nil, errors.New("--sandbox=chroot with CAP_SYS_CHROOT kept would let the worker leave its chroot; drop +sys_chroot from --modcaps")
	}
	if interp, err := elfInterp("/proc/self/exe"); err != nil {
		return -1, nil, err
	} else if interp != "" {
		return -1, nil, fmt.Errorf("--sandbox=chroot needs a statically linked vfsd: this binary asks for the loader %s, which cannot be found inside the shared directory (build with CGO_ENABLED=0, as `make build` does, or use --sandbox=namespace)", interp)
	}
	var st unix.Stat_t
	if err := unix.Stat(shared, &st); err != nil {
		return -1, nil, fmt.Errorf("shared directory %s: %w", shared, err)
	}
	exefd, err = unix.Open("/proc/self/exe", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("open /proc/self/exe: %w", err)
	}
	// Not close-on-exec: stage two takes it over (EnvProcFD).
	procfd, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		unix.Close(exefd)
		return -1, nil, fmt.Errorf("open /proc/self/fd: %w", err)
	}
	fail := func(e error) (int, []string, error) {
		unix.Close(exefd)
		unix.Close(procfd)
		return -1, nil, e
	}
	if err := unix.Chdir(shared); err != nil {
		return fail(fmt.Errorf("chdir %s: %w", shared, err))
	}
	if err := unix.Chroot("."); err != nil {
		return fail(fmt.Errorf("chroot %s: %w", shared, err))
	}
	if err := unix.Chdir("/"); err != nil {
		return fail(err)
	}
	env = []string{
		EnvProcFD + "=" + strconv.Itoa(procfd),
		fmt.Sprintf("%s=%d:%d", EnvRootID, st.Dev, st.Ino),
	}
	if _, ok := os.LookupEnv("TZ"); !ok {
		env = append(env, "TZ=UTC")
	}
	if _, ok := os.LookupEnv("GOMAXPROCS"); !ok {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(runtime.GOMAXPROCS(0)))
	}
	return exefd, env, nil
}

// verifyChroot is stage two's check in chroot mode: the root must be the
// shared directory and the inherited /proc/self/fd must be procfs.
func verifyChroot() (string, error) {
	want := os.Getenv(EnvRootID)
	os.Unsetenv(EnvRootID)
	var st unix.Stat_t
	if err := unix.Stat("/", &st); err != nil {
		return "", fmt.Errorf("sandbox: stat /: %w", err)
	}
	if got := fmt.Sprintf("%d:%d", st.Dev, st.Ino); got != want {
		return "", fmt.Errorf("sandbox: the root (%s) is not the shared directory (%s)", got, want)
	}
	if inheritedProcFD() < 0 {
		return "", errors.New("sandbox: no /proc/self/fd inherited from stage one")
	}
	return "/", nil
}

// ProcSelfFD returns the O_PATH fd of /proc/self/fd that stage one of the
// chroot sandbox handed over (close-on-exec from now on), or -1 outside
// that mode. The caller owns it.
func ProcSelfFD() int {
	fd := inheritedProcFD()
	os.Unsetenv(EnvProcFD)
	if fd < 0 {
		return -1
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return -1
	}
	return fd
}

// inheritedProcFD is EnvProcFD's fd if it is a procfs directory, else -1.
func inheritedProcFD() int {
	fd, err := strconv.Atoi(os.Getenv(EnvProcFD))
	if err != nil || fd < 3 {
		return -1
	}
	var sf unix.Statfs_t
	if err := unix.Fstatfs(fd, &sf); err != nil || sf.Type != unix.PROC_SUPER_MAGIC {
		return -1
	}
	return fd
}

// elfInterp returns the PT_INTERP of the ELF file at path ("" if static).
func elfInterp(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("PT_INTERP: %w", err)
		}
		return strings.TrimRight(string(b), "\x00"), nil
	}
	return "", nil
}

// execFD replaces the process image with the binary open at fd
// (execveat(fd, "", AT_EMPTY_PATH)); it returns only on error.
func execFD(fd int, argv, env []string) error {
	argvp, err := cStrings(argv)
	if err != nil {
		return err
	}
	envp, err := cStrings(env)
	if err != nil {
		return err
	}
	empty, _ := unix.BytePtrFromString("")
	_, _, e := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envp[0])), unix.AT_EMPTY_PATH, 0)
	return e
}

// cStrings is a NULL-terminated array of C strings.
func cStrings(ss []string) ([]*byte, error) {
	out := make([]*byte, len(ss)+1)
	for i, s := range ss {
		p, err := unix.BytePtrFromString(s)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}
