package sandbox

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseIDMap(t *testing.T) {
	for s, want := range map[string]IDMap{
		":0:100000:65536:":          {0, 100000, 65536},
		":1000:1000:1:":             {1000, 1000, 1},
		":0:0:4294967295:":          {0, 0, 4294967295},
		":4294967293:5:1:":          {4294967293, 5, 1},
		":007:8:9:":                 {7, 8, 9},
		":0:4294967294:1:":          {0, 4294967294, 1},
		":10:4294967200:94:":        {10, 4294967200, 94},
		":65534:65534:1:":           {65534, 65534, 1},
		":0:100000:10:":             {0, 100000, 10},
		":2147483648:1:2147483647:": {2147483648, 1, 2147483647},
	} {
		got, err := ParseIDMap(s)
		if err != nil || got != want {
			t.Errorf("ParseIDMap(%q) = %v, %v; want %v", s, got, err, want)
		}
		if again, err := ParseIDMap(got.String()); err != nil || again != got {
			t.Errorf("%v.String() = %q does not parse back", got, got.String())
		}
	}
	for s, msg := range map[string]string{
		"":                  "want :namespace_id",
		"0:1:2":             "want :namespace_id",
		":0:1:2":            "want :namespace_id",
		"0:1:2:":            "want :namespace_id",
		":0:1:2:3:":         "want :namespace_id",
		":0:1::":            "want :namespace_id",
		":-1:1:2:":          "want :namespace_id",
		":+1:1:2:":          "want :namespace_id",
		":a:1:2:":           "want :namespace_id",
		":0:4294967296:1:":  "want :namespace_id",
		": 0:1:2:":          "want :namespace_id",
		":0:1:0:":           "count must be at least 1",
		":0:4294967295:1:":  "passes 4294967294",
		":4294967295:0:1:":  "passes 4294967294",
		":0:4294967290:10:": "passes 4294967294",
		":1:0:4294967295:":  "passes 4294967294",
	} {
		if m, err := ParseIDMap(s); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseIDMap(%q) = %v, %v; want an error with %q", s, m, err, msg)
		}
	}
}

// fakeUserNS resolves maps as a process with euid/egid would, with
// newuidmap/newgidmap found (or not).
func fakeUserNS(uids, gids []IDMap, euid, egid int, helpers bool) *UserNS {
	return &UserNS{UIDs: uids, GIDs: gids,
		geteuid: func() int { return euid }, getegid: func() int { return egid },
		lookPath: func(name string) (string, error) {
			if helpers {
				return "/usr/bin/" + name, nil
			}
			return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
		}}
}

func TestUserNSCheck(t *testing.T) {
	t.Setenv(EnvForceHelpers, "")
	big := []IDMap{{0, 100000, 65536}}
	own := func(id uint32) []IDMap { return []IDMap{{0, id, 1}} }
	for _, tc := range []struct {
		name       string
		u          *UserNS
		err        string // "" for success
		useHelpers bool
	}{
		{"root any range", fakeUserNS(big, big, 0, 0, false), "", false},
		{"unprivileged own ids", fakeUserNS(own(1000), own(1001), 1000, 1001, false), "", false},
		{"unprivileged subordinate ranges", fakeUserNS(append(own(1000), IDMap{1, 100000, 65536}),
			append(own(1001), IDMap{1, 100000, 65536}), 1000, 1001, true), "", true},
		{"unprivileged gid range only", fakeUserNS(own(1000), append(own(1001), IDMap{1, 100000, 10}), 1000, 1001, true), "", true},
		{"no newuidmap", fakeUserNS(append(own(1000), IDMap{1, 100000, 10}), own(1000), 1000, 1000, false), "", false},
		{"unprivileged 0 not own uid", fakeUserNS(big, own(1000), 1000, 1000, true), "", false},
		{"unprivileged 0 not own gid", fakeUserNS(own(1000), big, 1000, 1000, true), "", false},
		{"uid map missing", fakeUserNS(nil, big, 0, 0, false), "give both", false},
		{"gid map missing", fakeUserNS(big, nil, 0, 0, false), "give both", false},
		{"0 unmapped", fakeUserNS([]IDMap{{1, 100000, 10}}, big, 0, 0, false), "namespace id 0 must be mapped", false},
		{"inside overlap", fakeUserNS([]IDMap{{0, 100000, 10}, {9, 200000, 10}}, big, 0, 0, false), "namespace ranges overlap", false},
		{"host overlap", fakeUserNS(big, []IDMap{{0, 100000, 10}, {10, 100009, 10}}, 0, 0, false), "host ranges overlap", false},
	} {
		switch tc.name {
		case "no newuidmap":
			tc.err = "package uidmap"
		case "unprivileged 0 not own uid":
			tc.err = "namespace uid 0 must map to 1000"
		case "unprivileged 0 not own gid":
			tc.err = "namespace gid 0 must map to 1000"
		}
		err := tc.u.Check()
		if tc.err == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			} else if tc.u.Helpers() != tc.useHelpers {
				t.Errorf("%s: helpers %v, want %v", tc.name, tc.u.Helpers(), tc.useHelpers)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.err)
		}
	}
	many := make([]IDMap, MaxIDMaps+1)
	for i := range many {
		many[i] = IDMap{uint32(i), uint32(100000 + i), 1}
	}
	if err := fakeUserNS(many, many, 0, 0, false).Check(); err == nil || !strings.Contains(err.Error(), "at most 340") {
		t.Errorf("341 mappings: %v", err)
	}
	if err := fakeUserNS(many[:MaxIDMaps], many[:MaxIDMaps], 0, 0, false).Check(); err != nil {
		t.Errorf("340 mappings: %v", err)
	}
	if err := (&UserNS{}).Check(); err != nil {
		t.Errorf("no maps: %v", err)
	}
	t.Setenv(EnvForceHelpers, "1")
	u := fakeUserNS(own(0), own(0), 0, 0, true)
	if err := u.Check(); err != nil || !u.Helpers() {
		t.Errorf("forced helpers: %v %v", err, u.Helpers())
	}
}

func base(cmd *exec.Cmd) { PrepareCmd(Namespace)(cmd) }

func TestUserNSPrepareSysProcAttr(t *testing.T) {
	t.Setenv(EnvForceHelpers, "")
	// Without maps: only the inherited VFSD_IDMAP_FD goes.
	cmd := exec.Command("/bin/true")
	cmd.Env = []string{EnvIDMapFD + "=9", EnvStage + "=1", "X=1"}
	(&UserNS{}).Prepare(base)(cmd)
	if !slices.Equal(cmd.Env, []string{"X=1"}) || cmd.SysProcAttr.Cloneflags&unix.CLONE_NEWUSER != 0 {
		t.Fatalf("no maps: env %q flags %#x", cmd.Env, cmd.SysProcAttr.Cloneflags)
	}

	u := fakeUserNS([]IDMap{{0, 1000, 1}}, []IDMap{{0, 1001, 1}}, 1000, 1001, false)
	if err := u.Check(); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("/bin/true")
	u.Prepare(base)(cmd)
	a := cmd.SysProcAttr
	if a.Cloneflags&(CloneFlags|unix.CLONE_NEWUSER) != CloneFlags|unix.CLONE_NEWUSER {
		t.Errorf("clone flags %#x", a.Cloneflags)
	}
	if len(a.UidMappings) != 1 || a.UidMappings[0] != (syscall.SysProcIDMap{ContainerID: 0, HostID: 1000, Size: 1}) ||
		len(a.GidMappings) != 1 || a.GidMappings[0].HostID != 1001 {
		t.Errorf("maps %v %v", a.UidMappings, a.GidMappings)
	}
	if a.GidMappingsEnableSetgroups || a.Credential == nil || !a.Credential.NoSetGroups || a.Credential.Uid != 0 {
		t.Errorf("unprivileged: setgroups %v credential %+v", a.GidMappingsEnableSetgroups, a.Credential)
	}
	if len(cmd.ExtraFiles) != 0 || slices.ContainsFunc(cmd.Env, func(s string) bool { return strings.HasPrefix(s, EnvIDMapFD) }) {
		t.Errorf("SysProcAttr path got the helper socket: %v %q", cmd.ExtraFiles, cmd.Env)
	}
}

func TestHelperArgs(t *testing.T) {
	got := helperArgs(42, []IDMap{{0, 1000, 1}, {1, 100000, 65536}})
	if want := []string{"42", "0", "1000", "1", "1", "100000", "65536"}; !slices.Equal(got, want) {
		t.Fatalf("%q, want %q", got, want)
	}
}

// fakeHelper writes a script standing in for newuidmap/newgidmap: it
// records its arguments in out and exits with code.
func fakeHelper(t *testing.T, dir, name, out string, code int) string {
	t.Helper()
	p := filepath.Join(dir, name)
	script := "#!/bin/sh\necho \"$@\" >> " + out + "\necho helper says no >&2\nexit " + string(rune('0'+code)) + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUserNSHelpers runs the helper path against a child standing in for
// the worker: it writes to the inherited socket (as awaitIDMap does) and
// must get 'k' once both helpers ran on its pid; a failing helper gets the
// child killed.
func TestUserNSHelpers(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	for _, fail := range []bool{false, true} {
		dir := t.TempDir()
		rec := filepath.Join(dir, "calls")
		code := 0
		if fail {
			code = 1
		}
		u := &UserNS{UIDs: []IDMap{{0, 1000, 1}, {1, 100000, 10}}, GIDs: []IDMap{{0, 1001, 1}}, checked: true,
			newuidmap: fakeHelper(t, dir, "newuidmap", rec, code), newgidmap: fakeHelper(t, dir, "newgidmap", rec, 0)}
		// The stand-in worker: ask on the fd named in VFSD_IDMAP_FD, print
		// the answer, then linger (a killed one never prints).
		cmd := exec.Command("sh", "-c", `printf '?' >&$`+EnvIDMapFD+`; a=$(head -c1 <&$`+EnvIDMapFD+`); [ "$a" = k ] && { echo k; exit 0; }; sleep 5`)
		cmd.ExtraFiles = []*os.File{os.Stdin} // an fd the supervisor set up: the socket comes after it
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		u.Prepare(func(*exec.Cmd) {})(cmd)
		if i := slices.IndexFunc(cmd.Env, func(s string) bool { return strings.HasPrefix(s, EnvIDMapFD+"=") }); i < 0 ||
			cmd.Env[i] != EnvIDMapFD+"=4" || len(cmd.ExtraFiles) != 2 || cmd.SysProcAttr.Cloneflags&unix.CLONE_NEWUSER == 0 {
			t.Fatalf("prepared env %q files %d flags %#x", cmd.Env, len(cmd.ExtraFiles), cmd.SysProcAttr.Cloneflags)
		}
		// The user namespace itself is not the point here (and may be
		// forbidden): run the stand-in in ours.
		cmd.SysProcAttr.Cloneflags &^= unix.CLONE_NEWUSER | CloneFlags
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("fail=%v: the stand-in worker hangs; output %q", fail, out.String())
		}
		calls, _ := os.ReadFile(rec)
		pid := cmd.Process.Pid
		if !fail {
			want := strings.Join([]string{
				strings.Join(helperArgs(pid, u.UIDs), " "), strings.Join(helperArgs(pid, u.GIDs), " "), ""}, "\n")
			if err != nil || out.String() != "k\n" || string(calls) != want {
				t.Errorf("helpers ok: exit %v, output %q, calls %q (want %q)", err, out.String(), calls, want)
			}
			continue
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL || out.String() != "" {
			t.Errorf("helper fails: exit %v, output %q; want SIGKILL and no answer", err, out.String())
		}
		if strings.Contains(string(calls), "\n"+strings.Join(helperArgs(pid, u.GIDs), " ")) {
			t.Errorf("newgidmap ran after newuidmap failed: %q", calls)
		}
	}
}

func TestRemountFlags(t *testing.T) {
	// /proc is nosuid,nodev,noexec on every usual system.
	var st unix.Statfs_t
	if err := unix.Statfs("/proc", &st); err != nil {
		t.Skip(err)
	}
	got := remountFlags("/proc", unix.MS_REMOUNT|unix.MS_BIND)
	for _, f := range []struct{ st, ms int64 }{{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC}} {
		if (int64(st.Flags)&f.st != 0) != (int64(got)&f.ms != 0) {
			t.Errorf("statfs flags %#x, remount flags %#x", st.Flags, got)
		}
	}
	if got&(unix.MS_REMOUNT|unix.MS_BIND) != unix.MS_REMOUNT|unix.MS_BIND {
		t.Errorf("lost the asked flags: %#x", got)
	}
	if remountFlags("/nonexistent", 7) != 7 {
		t.Error("an unreadable path changed the flags")
	}
}
