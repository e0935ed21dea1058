package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
)

// Mode is a --sandbox value.
type Mode string

const (
	Namespace Mode = "namespace" // own mount/pid/net/ipc/uts namespaces, pivot_root (the default)
	Chroot    Mode = "chroot"    // chroot into the shared directory (chroot.go)
	None      Mode = "none"      // no isolation; capabilities are still dropped
)

// ParseMode parses a --sandbox value.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case Namespace, Chroot, None:
		return Mode(s), nil
	}
	return "", errors.New("want namespace, chroot or none")
}

const (
	// EnvStage marks the worker image that runs inside the finished
	// sandbox (set by Enter on its re-exec; removed by PrepareCmd).
	EnvStage = "VFSD_SANDBOX_STAGE"
	// SharedPath is the shared directory inside the namespace sandbox.
	SharedPath = "/shared"
	// ProcPath is where procfs is inside the namespace sandbox.
	ProcPath = "/proc"

	// Names of the fds kept in the supervisor's fd store: the sandbox
	// root (a tmpfs holding /shared and /proc) and the mount namespace
	// it lives in, which the stored fd keeps alive across worker deaths.
	RootFDName  = "sandbox.root"
	MntNSFDName = "sandbox.mntns"
)

// CloneFlags are the namespaces every worker is started in (namespace mode).
const CloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS

// PrepareCmd returns the supervisor's hook for starting a worker in mode m:
// the namespaces to create and a clean environment (no inherited stage
// variables: stage one sets them).
func PrepareCmd(m Mode) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		env := cmd.Env[:0:0]
		for _, kv := range cmd.Env {
			if !strings.HasPrefix(kv, EnvStage+"=") && !strings.HasPrefix(kv, EnvProcFD+"=") && !strings.HasPrefix(kv, EnvRootID+"=") {
				env = append(env, kv)
			}
		}
		cmd.Env = env
		if m != Namespace {
			return
		}
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Cloneflags |= CloneFlags
	}
}

// IsHeld reports whether name is one of the sandbox's stored fds (the
// worker must not hand them to the filesystem).
func IsHeld(name string) bool { return name == RootFDName || name == MntNSFDName }

// Config is what Enter needs.
type Config struct {
	Mode      Mode
	SharedDir string // on the host
	Caps      CapSet // kept after the drop
}

// Enter puts the calling worker into its sandbox. In the first stage it sets
// up the namespace sandbox (mode namespace), drops every capability outside
// cfg.Caps from the bounding set and re-executes the binary
// (/proc/self/exe) with the same arguments and EnvStage=1; it returns only
// on error. In the second stage (EnvStage=1) it checks the result and
// returns the shared directory's path as the worker must now use it.
//
// The worker must call it before anything else: its inherited fds (stored
// fds, vhost-user and notify sockets) must still be open without
// close-on-exec.
func Enter(cfg Config) (string, error) {
	if os.Getenv(EnvStage) == "1" {
		return verify(cfg)
	}
	if err := awaitIDMap(); err != nil { // --uid-map via newuidmap (userns.go)
		return "", fmt.Errorf("sandbox: %w", err)
	}
	runtime.LockOSThread() // never unlocked: this thread execs
	last, err := lastCap()
	if err != nil {
		return "", fmt.Errorf("sandbox: %w", err)
	}
	if cfg.Mode == Namespace {
		if err := setupNamespace(cfg.SharedDir); err != nil {
			return "", fmt.Errorf("sandbox: %w", err)
		}
	}
	exefd := -1
	var extra []string
	if cfg.Mode == Chroot {
		if exefd, extra, err = setupChroot(cfg.SharedDir, cfg.Caps); err != nil {
			return "", fmt.Errorf("sandbox: %w", err)
		}
	}
	if err := dropBounding(cfg.Caps, last); err != nil {
		return "", fmt.Errorf("sandbox: %w", err)
	}
	env := append(append(os.Environ(), extra...), EnvStage+"=1")
	if exefd >= 0 {
		err = execFD(exefd, os.Args, env)
		return "", fmt.Errorf("sandbox: re-exec the binary inside the chroot: %w", err)
	}
	err = unix.Exec("/proc/self/exe", os.Args, env)
	return "", fmt.Errorf("sandbox: re-exec /proc/self/exe: %w", err)
}

// verify is the second stage: capabilities must be within cfg.Caps, and in
// namespace mode the root must be the sandbox's.
func verify(cfg Config) (string, error) {
	os.Unsetenv(EnvStage)
	prm, eff, err := current()
	if err != nil {
		return "", fmt.Errorf("sandbox: capget: %w", err)
	}
	if extra := (prm | eff) &^ cfg.Caps; extra != 0 {
		return "", fmt.Errorf("sandbox: capabilities %s were not dropped", extra)
	}
	switch cfg.Mode {
	case Chroot:
		return verifyChroot()
	case None:
		return cfg.SharedDir, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return "", errors.New("sandbox: the root is not the sandbox's")
	}
	if _, err := os.Stat(ProcPath + "/self/fd"); err != nil {
		return "", fmt.Errorf("sandbox: %w", err)
	}
	return SharedPath, nil
}

// heldFDs returns the sandbox fds among those the supervisor handed over
// (LISTEN_FDS/LISTEN_FDNAMES), read without consuming the variables.
func heldFDs() (root, mntns int) {
	root, mntns = -1, -1
	n, err := strconv.Atoi(os.Getenv(fdstore.EnvListenFDs))
	if err != nil || n <= 0 {
		return
	}
	for i, name := range strings.Split(os.Getenv(fdstore.EnvListenFDNames), ":") {
		if i >= n {
			break
		}
		switch name {
		case RootFDName:
			root = fdstore.ListenFDsStart + i
		case MntNSFDName:
			mntns = fdstore.ListenFDsStart + i
		}
	}
	return
}

// setupNamespace runs in a fresh mount namespace (CloneFlags). The first
// worker builds the sandbox root and stores it; a restarted worker, finding
// both stored fds, enters that same root (see doc.go for why).
func setupNamespace(shared string) error {
	if uerr := checkOwnNS(); uerr != nil {
		return uerr
	}
	shfd, err := unix.Open(shared, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("shared directory %s: %w", shared, err)
	}
	defer unix.Close(shfd)
	// Nothing we mount may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts slave: %w", err)
	}
	root, mntns := heldFDs()
	if root >= 0 && mntns >= 0 {
		// Restart: leave only an empty tmpfs in our own namespace, then
		// take the first worker's root (its mounts, same vfsmounts).
		if err := pivotInto(shared, func(string) error { return nil }); err != nil {
			return err
		}
		if err := unix.Fchdir(root); err != nil {
			return fmt.Errorf("enter the stored sandbox root: %w", err)
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("enter the stored sandbox root: %w", err)
		}
		return unix.Chdir("/")
	}
	nsfd, err := unix.Open("/proc/self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open mount namespace: %w", err)
	}
	defer unix.Close(nsfd)
	// A detached recursive copy of the shared directory, taken before the
	// tmpfs covers its path (a recursive bind made afterwards would copy
	// the tmpfs too).
	tree, err := unix.OpenTree(shfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone the shared directory's mounts: %w", err)
	}
	defer unix.Close(tree)
	// nodev on every mount of the copy: the worker never opens a device
	// node of the share (OPEN and CREATE refuse them; the guest's kernel
	// opens its own), so a node a guest made there can never reach a host
	// device through the worker, whatever path a bug might take. Adding
	// nodev is allowed on locked mounts too (user namespaces).
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE,
		&unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("mark the shared directory's mounts nodev: %w", err)
	}
	build := func(top string) error {
		for _, d := range []string{SharedPath, ProcPath} {
			if err := unix.Mkdir(top+d, 0o755); err != nil {
				return fmt.Errorf("mkdir %s: %w", d, err)
			}
		}
		if err := unix.MoveMount(tree, "", unix.AT_FDCWD, top+SharedPath, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("attach the shared directory: %w", err)
		}
		// The host's procfs (its pid namespace), read-only: /proc/self
		// must name every worker, and each restarted worker has a pid
		// namespace of its own, so a procfs of the first worker's pid
		// namespace would not do.
		err := unix.Mount("/proc", top+ProcPath, "", unix.MS_BIND, "")
		if err == unix.EINVAL {
			// In a user namespace /proc's submounts are locked to
			// it: only a recursive bind may copy it (userns.go).
			err = unix.Mount("/proc", top+ProcPath, "", unix.MS_BIND|unix.MS_REC, "")
		}
		if err != nil {
			return fmt.Errorf("bind /proc: %w", err)
		}
		if err := bindLoader(top); err != nil {
			return err
		}
		ro := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if err := unix.Mount("", top+ProcPath, "", remountFlags(top+ProcPath, ro), ""); err != nil {
			return fmt.Errorf("remount /proc read-only: %w", err)
		}
		return nil
	}
	if err := pivotInto(shared, build); err != nil {
		return err
	}
	rfd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the sandbox root: %w", err)
	}
	defer unix.Close(rfd)
	return storeHeld(rfd, nsfd)
}

// checkOwnNS refuses to set up mounts outside the namespaces CloneFlags
// creates (a worker started by hand): such a worker is not pid 1.
func checkOwnNS() error {
	if os.Getpid() != 1 {
		return errors.New("the worker is not in namespaces of its own: start it through the supervisor")
	}
	return nil
}

// pivotInto mounts a tmpfs over dir (hiding it in this namespace only),
// lets build populate it (paths relative to its top), makes it read-only,
// pivots into it and detaches the old root.
func pivotInto(dir string, build func(top string) error) error {
	fl := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("tmpfs", dir, "tmpfs", fl, "mode=0755,size=64k,nr_inodes=256"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	if err := build(dir); err != nil {
		return err
	}
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|fl, ""); err != nil {
		return fmt.Errorf("remount the root read-only: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	// The old root is now stacked on "."; detach it (and everything below).
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return unix.Chdir("/")
}

// storeHeld gives the sandbox root and mount namespace to the supervisor's
// fd store (namespace first: a root without it is useless).
func storeHeld(rootfd, nsfd int) error {
	nfd, err := strconv.Atoi(os.Getenv(fdstore.EnvNotifyFD))
	if err != nil {
		return fmt.Errorf("%s not set: the namespace sandbox needs the supervisor's fd store", fdstore.EnvNotifyFD)
	}
	dup, err := unix.FcntlInt(uintptr(nfd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return fmt.Errorf("notify fd: %w", err)
	}
	c, err := fdstore.NewClientFD(dup)
	if err != nil {
		unix.Close(dup)
		return err
	}
	defer c.Close()
	if err := c.Store(MntNSFDName, nsfd); err != nil {
		return fmt.Errorf("store the mount namespace: %w", err)
	}
	if err := c.Store(RootFDName, rootfd); err != nil {
		return fmt.Errorf("store the sandbox root: %w", err)
	}
	return nil
}

// bindLoader makes the dynamic loader and the shared libraries this binary
// runs with (a cgo build is dynamically linked) available, read-only, at
// their paths inside the sandbox root: the re-exec resolves the ELF
// interpreter in the new root. A static binary needs nothing.
func bindLoader(top string) error {
	interp, err := elfInterp("/proc/self/exe")
	if err != nil || interp == "" {
		return err
	}
	type bind struct{ src, dst string }
	binds := []bind{{interp, interp}}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") || !strings.Contains(f[5], ".so") || seen[f[5]] {
			continue
		}
		seen[f[5]] = true
		binds = append(binds, bind{f[5], f[5]})
	}
	for _, b := range binds {
		dst := top + b.dst
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("loader: %w", err)
		}
		if f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		} else {
			return fmt.Errorf("loader: %w", err)
		}
		if err := unix.Mount(b.src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", b.src, err)
		}
		fl := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
		if err := unix.Mount("", dst, "", remountFlags(dst, fl), ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", b.dst, err)
		}
	}
	return nil
}
