package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
)

// usernsEnv is a vfsd started for the --uid-map/--gid-map tests: unlike
// Start, its directory tree is traversable by the mapped host ids (the
// worker runs as them), its binary is a copy there, and it may run under
// other credentials.
type usernsEnv struct {
	*Env
	cmd  *exec.Cmd
	out  *syncBuf
	ctl  string
	done chan struct{}
}

type syncBuf struct{ b strings.Builder } // written once, read after outDone

// startUserns starts vfsd on top/shared (which the caller prepared) with
// args, as cred (nil: as the test), with env added to the test's
// environment and its socket in sockDir.
func startUserns(t *testing.T, top, sockDir string, cred *syscall.Credential, env []string, args ...string) *usernsEnv {
	t.Helper()
	src, err := VfsdBinary()
	must(t, "vfsd binary", err)
	bin := filepath.Join(top, "vfsd")
	b, err := os.ReadFile(src)
	must(t, "read binary", err)
	must(t, "copy binary", os.WriteFile(bin, b, 0o755))
	sock := filepath.Join(sockDir, "vhost.sock")
	shared := filepath.Join(top, "shared")
	a := append([]string{"--socket-path=" + sock, "--shared-dir=" + shared, "--restart-backoff-max=10ms"}, args...)
	cmd := exec.Command(bin, a...)
	cmd.Env = append(os.Environ(), env...)
	pr, pw, err := os.Pipe()
	must(t, "pipe", err)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	must(t, "start vfsd", cmd.Start())
	pw.Close()
	u := &usernsEnv{cmd: cmd, ctl: sock + ".ctl", done: make(chan struct{}), out: &syncBuf{}}
	outDone := make(chan struct{})
	go func() {
		b, _ := io.ReadAll(pr)
		u.out.b.Write(b)
		close(outDone)
	}()
	go func() { cmd.Wait(); close(u.done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	u.Env = &Env{T: t, Kind: daemon.Vfsd, Dir: shared, Ctx: ctx}
	t.Cleanup(func() {
		cancel()
		if u.FE != nil {
			u.FE.Close()
		}
		select {
		case <-u.done:
		case <-time.After(5 * time.Second):
			t.Errorf("vfsd did not exit within 5s of the frontend hanging up; killed")
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-u.done
		}
		<-outDone
		if t.Failed() {
			t.Logf("vfsd output:\n%s", u.out.b.String())
		}
	})
	fe, err := frontend.Dial(sock, frontend.Options{Mem: frontend.MemOptions{Size: 64 << 20}, RequestQueues: 1,
		DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial vfsd: %v", err)
	}
	u.FE = fe
	u.C = fuseclient.New(fe, fuseclient.Options{Depth: 8})
	if u.Init, err = u.C.Init(ctx, 0); err != nil {
		t.Fatalf("INIT: %v", err)
	}
	return u
}

// usernsTop makes a 0755 temporary directory (t.TempDir is 0700, which the
// mapped ids could not traverse) with shared/ owned by uid:gid.
func usernsTop(t *testing.T, uid, gid int) string {
	t.Helper()
	top, err := os.MkdirTemp("", "vfsd-userns-")
	must(t, "mkdtemp", err)
	t.Cleanup(func() { os.RemoveAll(top) })
	must(t, "chmod", os.Chmod(top, 0o755))
	must(t, "mkdir shared", os.Mkdir(filepath.Join(top, "shared"), 0o755))
	must(t, "chown shared", os.Chown(filepath.Join(top, "shared"), uid, gid))
	return top
}

func (u *usernsEnv) as(uid, gid uint32) *fuseclient.Client {
	return u.C.As(fuseclient.Creds{UID: uid, GID: gid, PID: 1})
}

// wantOwner checks the host owner of name in the shared directory.
func (u *usernsEnv) wantOwner(t *testing.T, name string, uid, gid uint32) {
	t.Helper()
	if st := hostStat(t, u.Path(name)); st.Uid != uid || st.Gid != gid {
		t.Errorf("host owner of %s is %d:%d, want %d:%d", name, st.Uid, st.Gid, uid, gid)
	}
}

func (u *usernsEnv) workerPID(t *testing.T) ctlStatus {
	t.Helper()
	return workerStatus(t, u.ctl)
}

// killWorker SIGKILLs the worker of st and waits for its successor.
func (u *usernsEnv) killWorker(t *testing.T, st ctlStatus) ctlStatus {
	t.Helper()
	return killWorker(t, u.ctl, st, nil)
}

// checkOwnUserNS: the worker runs in a user namespace of its own, mapped
// as asked.
func checkOwnUserNS(t *testing.T, pid int, uidMap string) {
	t.Helper()
	self, err1 := os.Readlink("/proc/self/ns/user")
	w, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err1 != nil || err2 != nil || self == w {
		t.Errorf("worker %d user namespace %q, the test's %q (%v %v)", pid, w, self, err1, err2)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	must(t, "read uid_map", err)
	if got := strings.Join(strings.Fields(string(b)), " "); got != uidMap {
		t.Errorf("worker %d uid_map %q, want %q", pid, got, uidMap)
	}
}

// usernsRound creates files as guest uid 0 and 1000 and checks their host
// owners, an unmapped guest id's errno and a root-owned host file's ids.
func usernsRound(t *testing.T, u *usernsEnv, sfx string, pub uint64) {
	t.Helper()
	_, _, err := u.as(0, 0).Create(u.Ctx, root, "r"+sfx, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	must(t, "CREATE as guest 0", err)
	u.wantOwner(t, "r"+sfx, 100000, 100000)
	_, _, err = u.as(1000, 1000).Create(u.Ctx, pub, "u"+sfx, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	must(t, "CREATE as guest 1000", err)
	u.wantOwner(t, "pub/u"+sfx, 101000, 101000)
	_, err = u.as(1000, 1000).Mkdir(u.Ctx, pub, "d"+sfx, 0o755, 0)
	must(t, "MKDIR as guest 1000", err)
	u.wantOwner(t, "pub/d"+sfx, 101000, 101000)
	// 70000 is outside the 65536 mapped ids.
	_, _, err = u.as(70000, 70000).Create(u.Ctx, pub, "x"+sfx, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	wantErrno(t, "CREATE as unmapped guest 70000", err, unix.EOVERFLOW)
	hostMissing(t, u.Path("pub", "x"+sfx))

	ent := lookup(t, u.Env, root, "hostroot")
	a, err := u.C.Getattr(u.Ctx, ent.NodeID, nil)
	must(t, "GETATTR hostroot", err)
	if a.Attr.UID != 65534 || a.Attr.GID != 65534 {
		t.Errorf("root-owned host file shows as %d:%d, want the overflow id 65534:65534", a.Attr.UID, a.Attr.GID)
	}
	ent = lookup(t, u.Env, root, "r"+sfx)
	if ent.Attr.UID != 0 || ent.Attr.GID != 0 {
		t.Errorf("guest 0's file shows as %d:%d, want 0:0", ent.Attr.UID, ent.Attr.GID)
	}
}

// TestUsernsRoot: a root vfsd with --uid-map/--gid-map=:0:100000:65536:
// starts its worker in a user namespace; guest ids map to 100000+id on the
// host, root-owned host files show as 65534, unmapped guest ids get
// EOVERFLOW; after SIGKILL the restarted worker is mapped the same way.
func TestUsernsRoot(t *testing.T) {
	if k, err := daemon.FromEnv(); err != nil || k != daemon.Vfsd {
		t.Skip("vfsd only")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	top := usernsTop(t, 100000, 100000)
	writeHost(t, filepath.Join(top, "shared", "hostroot"), []byte("x"), 0o644)
	u := startUserns(t, top, top, nil, nil, "--uid-map=:0:100000:65536:", "--gid-map=:0:100000:65536:")
	st := u.workerPID(t)
	checkOwnUserNS(t, st.WorkerPID, "0 100000 65536")
	checkSandboxed(t, st.WorkerPID, u.Dir)
	_, err := u.as(0, 0).Mkdir(u.Ctx, root, "pub", 0o777, 0)
	must(t, "MKDIR pub", err)
	u.wantOwner(t, "pub", 100000, 100000)
	pub := lookup(t, u.Env, root, "pub").NodeID
	usernsRound(t, u, "1", pub)

	s2 := u.killWorker(t, st)
	checkOwnUserNS(t, s2.WorkerPID, "0 100000 65536")
	checkSandboxed(t, s2.WorkerPID, u.Dir)
	// In a user namespace the restarted worker cannot open_by_handle_at
	// (CAP_DAC_READ_SEARCH in the initial user namespace): an inode the
	// dead worker knew only by its file handle answers ESTALE until it is
	// looked up again (a Linux guest's VFS retries once with LOOKUP_REVAL);
	// the lookup keeps its nodeid. See docs/OPERATIONS.md.
	if p2 := lookup(t, u.Env, root, "pub").NodeID; p2 != pub {
		t.Errorf("pub's nodeid after the restart is %d, was %d", p2, pub)
	}
	usernsRound(t, u, "2", pub)
}

// unprivUsernsForbidden says why this machine forbids unprivileged user
// namespaces ("" if it does not).
func unprivUsernsForbidden() string {
	for _, f := range []struct{ path, bad string }{
		{"/proc/sys/kernel/unprivileged_userns_clone", "0"},
		{"/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"},
		{"/proc/sys/user/max_user_namespaces", "0"},
	} {
		if b, err := os.ReadFile(f.path); err == nil && strings.TrimSpace(string(b)) == f.bad {
			return f.path + " is " + f.bad
		}
	}
	return ""
}

// TestUsernsUnprivileged: vfsd run as nobody (65534) with its own ids
// mapped to 0 serves a share it owns: files guest uid 0 creates are
// 65534's on the host, and a guest uid without a mapping gets EOVERFLOW.
// helpers: the same through the newuidmap/newgidmap path (forced with
// VFSD_USERNS_HELPERS=1; this machine need not have package uidmap: stand-in
// scripts write the same maps, as nobody may for its own ids), across a
// worker SIGKILL.
func TestUsernsUnprivileged(t *testing.T) {
	t.Run("sysprocattr", func(t *testing.T) { testUsernsUnprivileged(t, false) })
	t.Run("helpers", func(t *testing.T) { testUsernsUnprivileged(t, true) })
}

// fakeHelpers writes stand-ins for newuidmap/newgidmap into dir.
func fakeHelpers(t *testing.T, dir string) {
	t.Helper()
	must(t, "mkdir bin", os.Mkdir(dir, 0o755))
	for _, h := range []struct{ name, pre, file string }{
		{"newuidmap", "", "uid_map"},
		{"newgidmap", `echo deny > /proc/$pid/setgroups || exit 1; `, "gid_map"},
	} {
		script := "#!/bin/sh\npid=$1; shift; " + h.pre + `m=""; while [ $# -ge 3 ]; do m="$m$1 $2 $3
"; shift 3; done; printf '%s' "$m" > /proc/$pid/` + h.file + "\n"
		must(t, "write "+h.name, os.WriteFile(filepath.Join(dir, h.name), []byte(script), 0o755))
	}
}

func testUsernsUnprivileged(t *testing.T, helpers bool) {
	if k, err := daemon.FromEnv(); err != nil || k != daemon.Vfsd {
		t.Skip("vfsd only")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to uid 65534")
	}
	if why := unprivUsernsForbidden(); why != "" {
		t.Skipf("unprivileged user namespaces are forbidden here: %s", why)
	}
	top := usernsTop(t, 65534, 65534)
	run := filepath.Join(top, "run")
	must(t, "mkdir run", os.Mkdir(run, 0o755))
	must(t, "chown run", os.Chown(run, 65534, 65534))
	writeHost(t, filepath.Join(top, "shared", "hostroot"), []byte("x"), 0o644)
	var env []string
	if helpers {
		fakeHelpers(t, filepath.Join(top, "bin"))
		env = []string{"PATH=" + filepath.Join(top, "bin") + ":" + os.Getenv("PATH"), "VFSD_USERNS_HELPERS=1"}
	}
	u := startUserns(t, top, run, &syscall.Credential{Uid: 65534, Gid: 65534}, env,
		"--uid-map=:0:65534:1:", "--gid-map=:0:65534:1:")
	st := u.workerPID(t)
	checkOwnUserNS(t, st.WorkerPID, "0 65534 1")
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", u.cmd.Process.Pid)); err == nil &&
		!strings.Contains(string(b), "Uid:\t65534\t65534\t65534\t65534") {
		t.Fatalf("the supervisor is not running as 65534:\n%s", b)
	}

	_, _, err := u.as(0, 0).Create(u.Ctx, root, "mine", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	must(t, "CREATE as guest 0", err)
	u.wantOwner(t, "mine", 65534, 65534)
	_, err = u.as(0, 0).Mkdir(u.Ctx, root, "pub", 0o777, 0)
	must(t, "MKDIR pub", err)
	pub := lookup(t, u.Env, root, "pub").NodeID
	_, _, err = u.as(1000, 1000).Create(u.Ctx, pub, "theirs", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	wantErrno(t, "CREATE as unmapped guest 1000", err, unix.EOVERFLOW)
	hostMissing(t, u.Path("pub", "theirs"))
	ent := lookup(t, u.Env, root, "hostroot")
	if ent.Attr.UID != 65534 || ent.Attr.GID != 65534 {
		t.Errorf("root-owned host file shows as %d:%d, want 65534:65534", ent.Attr.UID, ent.Attr.GID)
	}
	ent = lookup(t, u.Env, root, "mine")
	if ent.Attr.UID != 0 || ent.Attr.GID != 0 {
		t.Errorf("guest 0's file shows as %d:%d, want 0:0", ent.Attr.UID, ent.Attr.GID)
	}
	checkSandboxed(t, st.WorkerPID, u.Dir)
	if !helpers {
		return
	}
	// The restarted worker goes through the helpers again.
	s2 := u.killWorker(t, st)
	checkOwnUserNS(t, s2.WorkerPID, "0 65534 1")
	checkSandboxed(t, s2.WorkerPID, u.Dir)
	_, _, err = u.as(0, 0).Create(u.Ctx, root, "mine2", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	must(t, "CREATE as guest 0 after the restart", err)
	u.wantOwner(t, "mine2", 65534, 65534)
	pub = lookup(t, u.Env, root, "pub").NodeID
	_, _, err = u.as(1000, 1000).Create(u.Ctx, pub, "theirs2", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, unix.S_IFREG|0o644, 0)
	wantErrno(t, "CREATE as unmapped guest 1000 after the restart", err, unix.EOVERFLOW)
}
