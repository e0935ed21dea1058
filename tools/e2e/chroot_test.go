package e2e

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/tools/daemon"
)

// checkChrooted checks that worker pid runs chrooted into the shared
// directory dir, in the test's own namespaces, with the default
// capabilities (CAP_SYS_CHROOT dropped).
func checkChrooted(t *testing.T, pid int, dir string) {
	t.Helper()
	checkWorkerCaps(t, pid)
	a, b := hostStat(t, fmt.Sprintf("/proc/%d/root/.", pid)), hostStat(t, dir)
	if a.Dev != b.Dev || a.Ino != b.Ino {
		t.Errorf("worker %d root is %d/%d, the shared directory %d/%d", pid, a.Dev, a.Ino, b.Dev, b.Ino)
	}
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	w, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err1 != nil || err2 != nil || self != w {
		t.Errorf("chroot mode made a mount namespace: worker %q, test %q (%v %v)", w, self, err1, err2)
	}
}

// TestSandboxChroot: a worker in the chroot sandbox serves from inside the
// shared directory, with no /proc in its root: file reads (O_PATH fds
// re-opened through the inherited /proc/self/fd) and reading a symlink's
// own xattrs (path form, on the proc thread) work; after SIGKILL its successor
// is chrooted the same way, and LINK/RENAME between an inode looked up
// before the crash and a directory looked up after it work.
func TestSandboxChroot(t *testing.T) {
	k, err := daemon.FromEnv()
	if err != nil || k != daemon.Vfsd {
		t.Skip("vfsd only")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	e := Start(t, Options{Extra: []string{"--sandbox=chroot", "--restart-backoff-max=10ms"}})
	ctl := e.Daemon.Socket + ".ctl"
	st := workerStatus(t, ctl)
	checkChrooted(t, st.WorkerPID, e.Dir)
	if _, err := os.Stat(e.Path("proc")); err == nil {
		t.Fatal("the worker created /proc in the shared directory")
	}

	writeHost(t, e.Path("f"), []byte("data"), 0o644)
	must(t, "mkdir", os.Mkdir(e.Path("d1"), 0o755))
	must(t, "symlink", os.Symlink("f", e.Path("l")))
	f := lookup(t, e, root, "f")
	d1 := lookup(t, e, root, "d1")
	l := lookup(t, e, root, "l")
	readBack := func(node uint64) string {
		t.Helper()
		o, err := e.C.Open(e.Ctx, node, unix.O_RDONLY, 0)
		must(t, "OPEN", err)
		buf := make([]byte, 16)
		n, err := e.C.Read(e.Ctx, node, o.FH, 0, buf)
		must(t, "READ", err)
		return string(buf[:n])
	}
	if got := readBack(f.NodeID); got != "data" {
		t.Fatalf("READ f = %q", got)
	}
	// The worker has no CAP_SYS_ADMIN, so it can set no xattr on a
	// symlink (user.* is refused there, trusted.* and security.* need
	// it); it can read a security.* one the host set.
	must(t, "host setxattr on the symlink", unix.Lsetxattr(e.Path("l"), "security.vfsd", []byte("L"), 0))
	getL := func(when string) {
		t.Helper()
		if v, _, err := e.C.Getxattr(e.Ctx, l.NodeID, "security.vfsd", 8); err != nil || string(v) != "L" {
			t.Fatalf("GETXATTR on the symlink %s: %q %v", when, v, err)
		}
		if _, _, err := e.C.Getxattr(e.Ctx, f.NodeID, "security.vfsd", 8); err == nil {
			t.Fatalf("GETXATTR on the symlink's target %s found the symlink's attribute", when)
		}
	}
	getL("before the crash")

	s2 := killWorker(t, ctl, st, e.Daemon.Output)
	checkChrooted(t, s2.WorkerPID, e.Dir)
	getL("after the crash")
	must(t, "mkdir", os.Mkdir(e.Path("d2"), 0o755))
	d2 := lookup(t, e, root, "d2")
	if _, err := e.C.Link(e.Ctx, f.NodeID, d2.NodeID, "g"); err != nil {
		t.Fatalf("LINK pre-crash inode into post-crash dir: %v", err)
	}
	if err := e.C.Rename(e.Ctx, d2.NodeID, "g", d1.NodeID, "i"); err != nil {
		t.Fatalf("RENAME into pre-crash dir: %v", err)
	}
	if got := readBack(lookup(t, e, d1.NodeID, "i").NodeID); got != "data" {
		t.Fatalf("d1/i = %q", got)
	}
}
