package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/sandbox"
	"vfsd/tools/daemon"
)

// procCaps reads a capability line (CapEff, CapPrm, CapBnd) of pid.
func procCaps(t *testing.T, pid int, field string) sandbox.CapSet {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, "read status", err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			must(t, "parse "+field, err)
			return sandbox.CapSet(n)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// checkSandboxed checks that worker pid runs in the namespace sandbox with
// the default capabilities, serving the shared directory dir.
func checkSandboxed(t *testing.T, pid int, dir string) {
	t.Helper()
	checkWorkerCaps(t, pid)
	for _, ns := range []string{"mnt", "pid", "net", "ipc", "uts"} {
		self, err1 := os.Readlink("/proc/self/ns/" + ns)
		w, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err1 != nil || err2 != nil || self == w {
			t.Errorf("worker %d %s namespace %q, the test's %q (%v %v)", pid, ns, w, self, err1, err2)
		}
	}
	root := fmt.Sprintf("/proc/%d/root", pid)
	var fs unix.Statfs_t
	must(t, "statfs worker root", unix.Statfs(root, &fs))
	if fs.Type != unix.TMPFS_MAGIC {
		t.Errorf("worker root is filesystem %#x, want tmpfs", fs.Type)
	}
	ents, err := os.ReadDir(root)
	must(t, "read worker root", err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for _, n := range names {
		if n != "shared" && n != "proc" && n != "lib" && n != "lib64" && n != "usr" {
			t.Errorf("worker root holds %q (all: %v)", n, names)
		}
	}
	a, b := hostStat(t, root+sandbox.SharedPath), hostStat(t, dir)
	if a.Dev != b.Dev || a.Ino != b.Ino {
		t.Errorf("worker's /shared is %d/%d, the shared directory %d/%d", a.Dev, a.Ino, b.Dev, b.Ino)
	}
	// The share is nodev in the worker's view (device nodes in it never open).
	var sfs unix.Statfs_t
	must(t, "statfs worker /shared", unix.Statfs(root+sandbox.SharedPath, &sfs))
	if sfs.Flags&unix.ST_NODEV == 0 {
		t.Errorf("worker's /shared is not nodev (statfs flags %#x)", sfs.Flags)
	}
	// Nothing above the shared directory: the worker's / is not the host's.
	h := hostStat(t, "/")
	w := hostStat(t, root)
	if h.Dev == w.Dev && h.Ino == w.Ino {
		t.Errorf("worker's root is the host's")
	}
}

// TestSandboxNamespace: a worker in the namespace sandbox serves, has
// dropped its capabilities, sees only its tmpfs root; after SIGKILL its
// successor is sandboxed the same way and a LINK and a RENAME between an
// inode looked up before the crash and a directory looked up after it work
// (same mounts: no EXDEV).
func TestSandboxNamespace(t *testing.T) {
	k, err := daemon.FromEnv()
	if err != nil || k != daemon.Vfsd {
		t.Skip("vfsd only")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	e := Start(t, Options{Extra: []string{"--sandbox=namespace", "--restart-backoff-max=10ms"}})
	ctl := e.Daemon.Socket + ".ctl"
	st := workerStatus(t, ctl)
	checkSandboxed(t, st.WorkerPID, e.Dir)

	writeHost(t, e.Path("f"), []byte("data"), 0o644)
	must(t, "mkdir", os.Mkdir(e.Path("d1"), 0o755))
	f := lookup(t, e, root, "f")
	d1 := lookup(t, e, root, "d1")

	s2 := killWorker(t, ctl, st, e.Daemon.Output)
	checkSandboxed(t, s2.WorkerPID, e.Dir)

	must(t, "mkdir", os.Mkdir(e.Path("d2"), 0o755))
	d2 := lookup(t, e, root, "d2")
	if _, err := e.C.Link(e.Ctx, f.NodeID, d2.NodeID, "g"); err != nil {
		t.Fatalf("LINK pre-crash inode into post-crash dir: %v", err)
	}
	if err := e.C.Rename(e.Ctx, root, "f", d2.NodeID, "h"); err != nil {
		t.Fatalf("RENAME into post-crash dir: %v", err)
	}
	if err := e.C.Rename(e.Ctx, d2.NodeID, "h", d1.NodeID, "i"); err != nil {
		t.Fatalf("RENAME into pre-crash dir: %v", err)
	}
	a, b := hostStat(t, e.Path("d2/g")), hostStat(t, e.Path("d1/i"))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Fatalf("d2/g ino %d nlink %d, d1/i ino %d", a.Ino, a.Nlink, b.Ino)
	}
	if got := string(readHost(t, e.Path("d1/i"))); got != "data" {
		t.Fatalf("d1/i = %q", got)
	}
}
