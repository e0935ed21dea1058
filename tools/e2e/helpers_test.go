package e2e

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/sandbox"
	"vfsd/tools/fuseclient"
)

const root = 1

func hostStat(t testing.TB, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("host lstat %s: %v", path, err)
	}
	return st
}

func writeHost(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func readHost(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("host read %s: %v", path, err)
	}
	return b
}

func hostMissing(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("host %s: want it gone, lstat says %v", path, err)
	}
}

// wantErrno fails unless err is exactly errno.
func wantErrno(t testing.TB, what string, err error, errno unix.Errno) {
	t.Helper()
	if !errors.Is(err, errno) {
		t.Fatalf("%s: got %v, want %v", what, err, errno)
	}
}

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// checkAttr compares FUSE attributes with a host stat.
func checkAttr(t testing.TB, what string, a fuseclient.Attr, st unix.Stat_t) {
	t.Helper()
	if a.Ino != st.Ino || a.Mode != st.Mode || a.Nlink != uint32(st.Nlink) || a.UID != st.Uid ||
		a.GID != st.Gid || a.Size != uint64(st.Size) {
		t.Fatalf("%s: attr ino %d mode %o nlink %d uid %d gid %d size %d; host ino %d mode %o nlink %d uid %d gid %d size %d",
			what, a.Ino, a.Mode, a.Nlink, a.UID, a.GID, a.Size, st.Ino, st.Mode, st.Nlink, st.Uid, st.Gid, st.Size)
	}
	if a.Mtime != uint64(st.Mtim.Sec) || a.Mtimensec != uint32(st.Mtim.Nsec) {
		t.Fatalf("%s: mtime %d.%09d, host %d.%09d", what, a.Mtime, a.Mtimensec, st.Mtim.Sec, st.Mtim.Nsec)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFCHR || st.Mode&unix.S_IFMT == unix.S_IFBLK {
		if a.Rdev != uint32(st.Rdev) {
			t.Fatalf("%s: rdev %#x, host %#x", what, a.Rdev, st.Rdev)
		}
	}
}

func lookup(t testing.TB, e *Env, parent uint64, name string) fuseclient.EntryOut {
	t.Helper()
	ent, err := e.C.Lookup(e.Ctx, parent, name)
	if err != nil {
		t.Fatalf("LOOKUP %s: %v", name, err)
	}
	if ent.NodeID == 0 || ent.NodeID == root {
		t.Fatalf("LOOKUP %s: nodeid %d", name, ent.NodeID)
	}
	return ent
}

// openFile creates (on the host) and opens (through FUSE) a file.
func openFile(t testing.TB, e *Env, name string, data []byte, flags uint32) (fuseclient.EntryOut, uint64) {
	t.Helper()
	writeHost(t, e.Path(name), data, 0o644)
	ent := lookup(t, e, root, name)
	o, err := e.C.Open(e.Ctx, ent.NodeID, flags, 0)
	must(t, "OPEN "+name, err)
	return ent, o.FH
}

// wantErrnoUnguarded checks the errno of a request a Linux guest never sends
// (its VFS answers first: UNLINK of a name it has not looked up, READLINK of
// a non-symlink). vfsd must give the POSIX errno; the reference virtiofsd is
// allowed its own (it answers EIO for names it has not looked up).
func wantErrnoUnguarded(t testing.TB, e *Env, what string, err error, errno unix.Errno) {
	t.Helper()
	if e.Kind == "virtiofsd" && !errors.Is(err, errno) {
		if err == nil {
			t.Fatalf("%s: succeeded, want an error", what)
		}
		t.Logf("reference virtiofsd: %s answers %v (POSIX: %v); a guest never sends this", what, err, errno)
		return
	}
	wantErrno(t, what, err, errno)
}

// pubDir makes a world-writable directory for requests with non-root
// credentials.
func pubDir(t testing.TB, e *Env) uint64 {
	t.Helper()
	must(t, "mkdir pub", os.Mkdir(e.Path("pub"), 0o777))
	must(t, "chmod pub", os.Chmod(e.Path("pub"), 0o777))
	return lookup(t, e, root, "pub").NodeID
}

// workerStatus returns the supervisor's status (control socket ctl), which
// must name a running worker.
func workerStatus(t *testing.T, ctl string) ctlStatus {
	t.Helper()
	st, err := queryStatus(ctl)
	if err != nil || st.WorkerPID == 0 {
		t.Fatalf("status: %+v %v", st, err)
	}
	return st
}

// killWorker SIGKILLs the worker of st and waits up to 10 s for the
// supervisor (control socket ctl) to report its successor. output, when
// not nil, is added to the failure.
func killWorker(t *testing.T, ctl string, st ctlStatus, output func() string) ctlStatus {
	t.Helper()
	must(t, "kill worker", syscall.Kill(st.WorkerPID, syscall.SIGKILL))
	deadline := time.Now().Add(10 * time.Second)
	for {
		s2, err := queryStatus(ctl)
		if err == nil && s2.WorkerPID != 0 && s2.WorkerPID != st.WorkerPID && s2.Restarts > st.Restarts {
			return s2
		}
		if time.Now().After(deadline) {
			out := ""
			if output != nil {
				out = output()
			}
			t.Fatalf("no successor of worker %d: %+v %v\n%s", st.WorkerPID, s2, err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkWorkerCaps checks that worker pid holds exactly the default
// capability set (engine/sandbox) in CapEff, CapPrm and CapBnd.
func checkWorkerCaps(t *testing.T, pid int) {
	t.Helper()
	for _, f := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got := procCaps(t, pid, f); got != sandbox.DefaultCaps() {
			t.Errorf("worker %d %s = %s, want %s", pid, f, got, sandbox.DefaultCaps())
		}
	}
}
