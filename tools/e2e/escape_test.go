package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/tools/fuseclient"
)

// Escape tests: a guest must never reach a host file outside the shared
// directory. Each test puts canaries outside the share (in the test's temp
// directory, next to the share, and in a sibling directory "outside") with
// known content, mode, owner and mtime, and after every case checks that
// they are unchanged, that nothing was created next to them, and that the
// daemon still answers.

const canaryData = "canary: the guest must never see this\n"

type canaries struct {
	t     testing.TB
	e     *Env
	tmp   string // parent of the share
	out   string // tmp/outside
	files []string
	want  map[string]unix.Stat_t
	dirs  map[string][]string // directory listings that must not change
}

func newCanaries(t testing.TB, e *Env) *canaries {
	t.Helper()
	c := &canaries{t: t, e: e, tmp: filepath.Dir(e.Dir), want: map[string]unix.Stat_t{}, dirs: map[string][]string{}}
	c.out = filepath.Join(c.tmp, "outside")
	must(t, "mkdir outside", os.Mkdir(c.out, 0o755))
	for _, p := range []string{filepath.Join(c.tmp, "canary"), filepath.Join(c.out, "canary")} {
		writeHost(t, p, []byte(canaryData), 0o640)
		old := time.Unix(1_000_000_000, 0)
		must(t, "chtimes canary", os.Chtimes(p, old, old))
		c.files = append(c.files, p)
		c.want[p] = hostStat(t, p)
	}
	c.dirs[c.tmp] = listDir(t, c.tmp)
	c.dirs[c.out] = listDir(t, c.out)
	return c
}

func listDir(t testing.TB, p string) []string {
	t.Helper()
	ents, err := os.ReadDir(p)
	must(t, "readdir "+p, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// check fails the test if a canary changed (content, mode, owner, size,
// mtime, ctime: a chmod or chown shows in ctime), or a file appeared or
// went next to one, or the daemon stopped answering.
func (c *canaries) check(what string) {
	c.t.Helper()
	for _, p := range c.files {
		st := hostStat(c.t, p)
		w := c.want[p]
		if st.Ino != w.Ino || st.Mode != w.Mode || st.Uid != w.Uid || st.Gid != w.Gid || st.Size != w.Size ||
			st.Mtim != w.Mtim || st.Ctim != w.Ctim || st.Nlink != w.Nlink {
			c.t.Fatalf("%s: canary %s changed: %+v, was %+v", what, p, st, w)
		}
		if b := readNoatime(c.t, p); string(b) != canaryData {
			c.t.Fatalf("%s: canary %s content changed: %q", what, p, b)
		}
		if st.Atim != w.Atim {
			c.t.Fatalf("%s: canary %s was read (atime %v, was %v)", what, p, st.Atim, w.Atim)
		}
	}
	for d, names := range c.dirs {
		if got := listDir(c.t, d); !slices.Equal(got, names) {
			c.t.Fatalf("%s: %s now holds %v, was %v", what, d, got, names)
		}
	}
	if _, err := c.e.C.Getattr(c.e.Ctx, root, nil); err != nil {
		c.t.Fatalf("%s: daemon no longer answers GETATTR: %v", what, err)
	}
}

// refuse checks that a request failed (with any errno, but not a transport
// failure) and the canaries are intact.
func (c *canaries) refuse(what string, err error) {
	c.t.Helper()
	var eno unix.Errno
	if err == nil {
		c.t.Fatalf("%s: succeeded, want an error", what)
	}
	if !errors.As(err, &eno) {
		c.t.Fatalf("%s: %v (not an errno reply)", what, err)
	}
	c.check(what)
}

// readNoatime reads p without touching its atime: the canaries' atime
// tells a read by anyone else (relatime updates an atime not after the
// mtime, and both are in 2001).
func readNoatime(t testing.TB, p string) []byte {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	must(t, "open canary", err)
	defer unix.Close(fd)
	b := make([]byte, 4096)
	n, err := unix.Read(fd, b)
	must(t, "read canary", err)
	return b[:n]
}

// tryAll runs every operation the guest could use to reach through node
// (a symlink or a magic link placed in the share): none may read, write,
// chmod, chown, truncate or create through it.
func (c *canaries) tryAll(what string, parent, node uint64, name string) {
	c.t.Helper()
	e, ctx := c.e, c.e.Ctx
	for _, fl := range []uint32{unix.O_RDONLY, unix.O_RDWR, unix.O_WRONLY | unix.O_TRUNC, unix.O_RDONLY | unix.O_DIRECTORY} {
		_, err := e.C.Open(ctx, node, fl, 0)
		c.refuse(fmt.Sprintf("%s: OPEN flags %#x", what, fl), err)
	}
	_, err := e.C.Opendir(ctx, node, 0)
	c.refuse(what+": OPENDIR", err)
	_, err = e.C.Lookup(ctx, node, "canary")
	c.refuse(what+": LOOKUP canary through it", err)
	_, err = e.C.Mkdir(ctx, node, "newdir", 0o755, 0)
	c.refuse(what+": MKDIR through it", err)
	_, _, err = e.C.Create(ctx, node, "newfile", unix.O_RDWR, 0o644, 0)
	c.refuse(what+": CREATE through it", err)
	_, err = e.C.Symlink(ctx, node, "newlink", "x")
	c.refuse(what+": SYMLINK through it", err)
	_, err = e.C.Mknod(ctx, node, "newfifo", unix.S_IFIFO|0o644, 0, 0)
	c.refuse(what+": MKNOD through it", err)
	_, _, err = e.C.Tmpfile(ctx, node, unix.O_RDWR, 0o644, 0)
	c.refuse(what+": TMPFILE through it", err)
	// Create over the link's own name without O_EXCL must not follow it.
	_, _, err = e.C.Create(ctx, parent, name, unix.O_RDWR|unix.O_TRUNC, 0o644, 0)
	c.refuse(what+": CREATE over the link's name", err)
	_, err = e.C.Mknod(ctx, parent, name, unix.S_IFREG|0o644, 0, 0)
	c.refuse(what+": MKNOD over the link's name", err)
	// Attribute changes act on the link itself, never on its target.
	e.C.Setattr(ctx, node, fuseclient.SetattrIn{Valid: fuseclient.FattrMode, Mode: 0o777})
	c.check(what + ": SETATTR mode")
	e.C.Setattr(ctx, node, fuseclient.SetattrIn{Valid: fuseclient.FattrUID | fuseclient.FattrGID, UID: 4242, GID: 4242})
	c.check(what + ": SETATTR owner")
	e.C.Setattr(ctx, node, fuseclient.SetattrIn{Valid: fuseclient.FattrSize, Size: 0})
	c.check(what + ": SETATTR size")
	e.C.Setattr(ctx, node, fuseclient.SetattrIn{Valid: fuseclient.FattrMtime | fuseclient.FattrAtime, Mtime: 5, Atime: 5})
	c.check(what + ": SETATTR times")
	e.C.Setxattr(ctx, node, "user.escape", []byte("x"), 0)
	c.check(what + ": SETXATTR")
	e.C.Getxattr(ctx, node, "user.escape", 100)
	e.C.Listxattr(ctx, node, 1000)
	e.C.Removexattr(ctx, node, "user.escape")
	c.check(what + ": xattr reads")
	e.C.Access(ctx, node, unix.R_OK|unix.W_OK)
	e.C.Statx(ctx, node, nil, 0, 0xfff)
	e.C.Statfs(ctx, node)
	c.check(what + ": ACCESS/STATX/STATFS")
	// A hard link to the link links the link, not its target.
	if ent, err := e.C.Link(ctx, node, root, "hardlink-"+name); err == nil {
		if ent.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
			c.t.Fatalf("%s: LINK made a %o, want a link to the symlink", what, ent.Attr.Mode)
		}
		must(c.t, "UNLINK hard link", e.C.Unlink(ctx, root, "hardlink-"+name))
	}
	c.check(what + ": LINK")
}

func TestEscapeSymlinks(t *testing.T) {
	e := Start(t, Options{})
	c := newCanaries(t, e)
	must(t, "mkdir sub", os.MkdirAll(e.Path("sub", "deeper"), 0o755))
	links := map[string]string{
		"abs":       filepath.Join(c.tmp, "canary"),
		"rel":       "../canary",
		"dotdot":    "sub/../../canary",
		"deepdots":  strings.Repeat("../", 40) + strings.TrimPrefix(filepath.Join(c.tmp, "canary"), "/"),
		"absdir":    c.out,
		"reldir":    "../outside",
		"tmpdir":    "..",
		"slashroot": "/",
		"loop":      "loop",
	}
	for name, target := range links {
		must(t, "symlink", os.Symlink(target, e.Path(name)))
	}
	must(t, "symlink in sub", os.Symlink("../../../outside", e.Path("sub", "deeper", "up")))
	c.dirs[e.Dir] = listDir(t, e.Dir) // nothing may appear in the share either

	for name, target := range links {
		ent := lookup(t, e, root, name)
		if ent.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Fatalf("LOOKUP %s: mode %o, want the symlink itself", name, ent.Attr.Mode)
		}
		got, err := e.C.Readlink(e.Ctx, ent.NodeID)
		must(t, "READLINK "+name, err)
		if got != target {
			t.Fatalf("READLINK %s: %q, want %q", name, got, target)
		}
		c.tryAll("symlink "+name, root, ent.NodeID, name)
	}
	sub := lookup(t, e, root, "sub")
	deeper := lookup(t, e, sub.NodeID, "deeper")
	up := lookup(t, e, deeper.NodeID, "up")
	c.tryAll("symlink sub/deeper/up", deeper.NodeID, up.NodeID, "up")
	// RENAME and LINK take names, never paths: a link name is not followed.
	c.refuse("RENAME a file over a symlink's target", e.C.Rename(e.Ctx, root, "abs/canary", root, "x"))
	must(t, "RENAME of the symlink itself", e.C.Rename(e.Ctx, root, "abs", sub.NodeID, "abs2"))
	c.dirs[e.Dir] = listDir(t, e.Dir)
	c.check("after RENAME")
}

func TestEscapeDotDot(t *testing.T) {
	e := Start(t, Options{})
	c := newCanaries(t, e)
	must(t, "mkdir", os.MkdirAll(e.Path("d", "e"), 0o755))
	rootAttr, err := e.C.Getattr(e.Ctx, root, nil)
	must(t, "GETATTR root", err)
	for range 3 {
		ent, err := e.C.Lookup(e.Ctx, root, "..")
		must(t, "LOOKUP .. of the root", err)
		if ent.NodeID != root && ent.Attr.Ino != rootAttr.Attr.Ino {
			t.Fatalf("LOOKUP .. of the root gave nodeid %d ino %d, want the root (ino %d)", ent.NodeID, ent.Attr.Ino, rootAttr.Attr.Ino)
		}
		_, err = e.C.Lookup(e.Ctx, ent.NodeID, "canary")
		c.refuse("LOOKUP canary in .. of the root", err)
		_, err = e.C.Lookup(e.Ctx, ent.NodeID, "outside")
		c.refuse("LOOKUP outside in .. of the root", err)
	}
	d := lookup(t, e, root, "d")
	de := lookup(t, e, d.NodeID, "e")
	up, err := e.C.Lookup(e.Ctx, de.NodeID, "..")
	must(t, "LOOKUP .. of d/e", err)
	if up.Attr.Ino != d.Attr.Ino {
		t.Fatalf("LOOKUP .. of d/e: ino %d, want d's %d", up.Attr.Ino, d.Attr.Ino)
	}
	upup, err := e.C.Lookup(e.Ctx, up.NodeID, "..")
	must(t, "LOOKUP .. of d", err)
	if upup.Attr.Ino != rootAttr.Attr.Ino {
		t.Fatalf("LOOKUP .. of d: ino %d, want the root's %d", upup.Attr.Ino, rootAttr.Attr.Ino)
	}
	top, err := e.C.Lookup(e.Ctx, upup.NodeID, "..")
	must(t, "LOOKUP .. of .. of d", err)
	if top.Attr.Ino != rootAttr.Attr.Ino {
		t.Fatalf("LOOKUP .. above the root: ino %d, want the root's %d", top.Attr.Ino, rootAttr.Attr.Ino)
	}
	_, err = e.C.Lookup(e.Ctx, top.NodeID, "canary")
	c.refuse("LOOKUP canary above the root", err)
	// ".." is a lookup-only name.
	_, err = e.C.Mkdir(e.Ctx, d.NodeID, "..", 0o755, 0)
	c.refuse("MKDIR ..", err)
	c.refuse("RENAME d/e to ../escaped", e.C.Rename(e.Ctx, d.NodeID, "e", root, "../escaped"))
	c.refuse("RENAME .. of d", e.C.Rename(e.Ctx, d.NodeID, "..", root, "x"))
	c.refuse("UNLINK ..", e.C.Unlink(e.Ctx, d.NodeID, ".."))
	c.refuse("RMDIR ..", e.C.Rmdir(e.Ctx, de.NodeID, ".."))
	_, err = e.C.Link(e.Ctx, de.NodeID, root, "..")
	c.refuse("LINK to ..", err)
}

func TestEscapeMagicLinks(t *testing.T) {
	e := Start(t, Options{})
	c := newCanaries(t, e)
	// What the daemon itself would find behind these names if it ever
	// followed them: its own open fds (the shared directory's fd, files it
	// has open), its root and cwd. The canary is opened by the daemon
	// through the share never, so a follow would show as a read or an
	// escape to "/".
	links := map[string]string{"root": "/proc/self/root", "cwd": "/proc/self/cwd",
		"exe": "/proc/self/exe", "thread": "/proc/thread-self/root", "pid1": "/proc/1/root"}
	for i := range 16 {
		links[fmt.Sprintf("fd%d", i)] = fmt.Sprintf("/proc/self/fd/%d", i)
	}
	for name, target := range links {
		must(t, "symlink", os.Symlink(target, e.Path(name)))
	}
	c.dirs[e.Dir] = listDir(t, e.Dir)
	for name := range links {
		ent := lookup(t, e, root, name)
		if ent.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Fatalf("LOOKUP %s: mode %o, want the symlink itself", name, ent.Attr.Mode)
		}
		c.tryAll("magic link "+name, root, ent.NodeID, name)
		// Through the daemon's root: the canary's absolute path, one
		// component at a time.
		node := ent.NodeID
		for _, comp := range strings.Split(strings.TrimPrefix(c.tmp, "/"), "/") {
			next, err := e.C.Lookup(e.Ctx, node, comp)
			if err != nil {
				break
			}
			node = next.NodeID
			t.Fatalf("magic link %s: LOOKUP %s through it succeeded", name, comp)
		}
		c.check("walk through " + name)
	}
}

// mountOrSkip runs mount(2); the test is skipped when we may not mount.
func mountOrSkip(t *testing.T, src, dst, fstype string, flags uintptr, data string) {
	t.Helper()
	if unix.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("mount %s on %s: %v", src, dst, err)
		}
		t.Fatalf("mount %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dst, unix.MNT_DETACH); err != nil {
			t.Errorf("umount %s: %v", dst, err)
		}
	})
}

// The mounts are made after vfsd started: a worker in the namespace
// sandbox (the default) serves the clone of the share's mount tree taken
// when the first worker started (engine/sandbox), so it would not see them
// (unless the host's mounts propagate); this checks the filesystem's
// handling of mounts it sees, without the sandbox.
func TestEscapeMounts(t *testing.T) {
	e := Start(t, Options{Extra: []string{"--sandbox=none"}})
	c := newCanaries(t, e)
	// A bind mount of a directory outside the share (the admin's choice:
	// its contents are served), and a tmpfs submount.
	bound := filepath.Join(c.tmp, "bound")
	must(t, "mkdir bound", os.Mkdir(bound, 0o755))
	writeHost(t, filepath.Join(bound, "inner"), []byte("inner"), 0o644)
	must(t, "mkdir bind", os.Mkdir(e.Path("bind"), 0o755))
	must(t, "mkdir sub", os.Mkdir(e.Path("sub"), 0o755))
	must(t, "mkdir tmpfs", os.Mkdir(e.Path("sub", "tmpfs"), 0o755))
	mountOrSkip(t, bound, e.Path("bind"), "", unix.MS_BIND, "")
	mountOrSkip(t, "vfsd-e2e", e.Path("sub", "tmpfs"), "tmpfs", 0, "size=1m,mode=0755")
	c.dirs[c.tmp] = listDir(t, c.tmp)
	rootAttr, err := e.C.Getattr(e.Ctx, root, nil)
	must(t, "GETATTR root", err)
	sub := lookup(t, e, root, "sub")

	for _, m := range []struct {
		name   string
		parent uint64
		up     uint64 // ino ".." must name
	}{{"bind", root, rootAttr.Attr.Ino}, {"tmpfs", sub.NodeID, sub.Attr.Ino}} {
		ent := lookup(t, e, m.parent, m.name)
		if ent.Attr.Mode&unix.S_IFMT != unix.S_IFDIR {
			t.Fatalf("LOOKUP %s: mode %o", m.name, ent.Attr.Mode)
		}
		// ".." of a mount's root is the mount point's parent, in the share.
		up, err := e.C.Lookup(e.Ctx, ent.NodeID, "..")
		must(t, "LOOKUP .. of "+m.name, err)
		if up.Attr.Ino != m.up {
			t.Fatalf("LOOKUP .. of the %s mount: ino %d, want %d (in the share)", m.name, up.Attr.Ino, m.up)
		}
		_, err = e.C.Lookup(e.Ctx, up.NodeID, "canary")
		c.refuse("LOOKUP canary in .. of "+m.name, err)
		// Inside, the guest works as anywhere in the share.
		fent, fo, err := e.C.Create(e.Ctx, ent.NodeID, "made", unix.O_RDWR, 0o600, 0)
		must(t, "CREATE in "+m.name, err)
		_, err = e.C.Write(e.Ctx, fent.NodeID, fo.FH, 0, []byte("data"), 0)
		must(t, "WRITE in "+m.name, err)
		must(t, "RELEASE", e.C.Release(e.Ctx, fent.NodeID, fo.FH, 0, 0, 0))
		// Renames across the mount boundary fail (EXDEV), never copy.
		c.refuse("RENAME out of "+m.name, e.C.Rename(e.Ctx, ent.NodeID, "made", root, "moved"))
		_, err = e.C.Link(e.Ctx, fent.NodeID, root, "linked")
		c.refuse("LINK out of "+m.name, err)
		must(t, "UNLINK", e.C.Unlink(e.Ctx, ent.NodeID, "made"))
		c.check("mount " + m.name)
	}
	if got := listDir(t, bound); !slices.Equal(got, []string{"inner"}) {
		t.Fatalf("bound directory now holds %v", got)
	}
}

// TestEscapeDeviceCreate: a guest may make a device node in the share
// (MKNOD, as root with CAP_MKNOD, vfsd's default), but CREATE without O_EXCL
// of its name must not open the device on the host and hand the guest a
// handle to it (for a block or memory device, the host's disk or RAM); nor
// may it hang the queue on a FIFO. Through the supervised, sandboxed daemon.
func TestEscapeDeviceCreate(t *testing.T) {
	e := Start(t, Options{})
	for _, n := range []struct {
		name       string
		mode, rdev uint32
	}{{"zero", unix.S_IFCHR | 0o666, uint32(unix.Mkdev(1, 5))}, {"fifo", unix.S_IFIFO | 0o666, 0}} {
		if _, err := e.C.Mknod(e.Ctx, root, n.name, n.mode, n.rdev, 0); err != nil {
			if errors.Is(err, unix.EPERM) {
				t.Logf("MKNOD %s: %v (not root here)", n.name, err)
				continue
			}
			t.Fatalf("MKNOD %s: %v", n.name, err)
		}
		ent, fo, err := e.C.Create(e.Ctx, root, n.name, unix.O_RDWR, 0o600, 0)
		if err == nil {
			t.Errorf("CREATE of the %s node opened it on the host", n.name)
			e.C.Release(e.Ctx, ent.NodeID, fo.FH, 0, 0, 0)
			continue
		}
		if !errors.Is(err, unix.ENXIO) {
			t.Errorf("CREATE of the %s node: %v, want ENXIO", n.name, err)
		}
	}
}

// TestEscapeRenameRace: a host process swaps a directory of the share for
// a symlink to a directory outside it, in a loop, while the guest walks
// into it and creates there. Nothing may land outside.
func TestEscapeRenameRace(t *testing.T) {
	e := Start(t, Options{Depth: 8})
	c := newCanaries(t, e)
	must(t, "mkdir race", os.MkdirAll(e.Path("race", "sub"), 0o777))
	var stop atomic.Bool
	var wg sync.WaitGroup
	var swaps atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		targets := []string{c.out, c.tmp, "../outside", ".."}
		for i := 0; !stop.Load(); i++ {
			if os.Rename(e.Path("race"), e.Path("race.real")) != nil {
				continue
			}
			os.Symlink(targets[i%len(targets)], e.Path("race"))
			os.Rename(e.Path("race"), e.Path("race.link")) // a rename, not an unlink: atomic swaps
			os.Rename(e.Path("race.real"), e.Path("race"))
			os.Remove(e.Path("race.link"))
			swaps.Add(1)
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	ok := 0
	for i := 0; time.Now().Before(deadline); i++ {
		ent, err := e.C.Lookup(e.Ctx, root, "race")
		if err != nil {
			continue
		}
		n := fmt.Sprintf("f%d", i)
		if _, fo, err := e.C.Create(e.Ctx, ent.NodeID, n, unix.O_RDWR, 0o600, 0); err == nil {
			ok++
			e.C.Release(e.Ctx, ent.NodeID, fo.FH, 0, 0, 0)
		}
		e.C.Mkdir(e.Ctx, ent.NodeID, "d"+n, 0o755, 0)
		e.C.Symlink(e.Ctx, ent.NodeID, "l"+n, "canary")
		if s, err := e.C.Lookup(e.Ctx, ent.NodeID, "sub"); err == nil {
			e.C.Mknod(e.Ctx, s.NodeID, "p"+n, unix.S_IFIFO|0o600, 0, 0)
			e.C.Forget(e.Ctx, s.NodeID, 1)
		}
		if cn, err := e.C.Lookup(e.Ctx, ent.NodeID, "canary"); err == nil {
			if cn.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
				t.Fatalf("LOOKUP race/canary found a %o: the walk left the share", cn.Attr.Mode)
			}
			e.C.Forget(e.Ctx, cn.NodeID, 1)
		}
		if o, err := e.C.Opendir(e.Ctx, ent.NodeID, 0); err == nil {
			ents, _ := e.C.ReaddirAll(e.Ctx, ent.NodeID, o.FH, 4096)
			for _, d := range ents {
				if d.Name == "outside" || d.Name == "bound" || d.Name == "shared" {
					t.Fatalf("READDIR of race lists %q: it read a directory outside the share", d.Name)
				}
			}
			e.C.Releasedir(e.Ctx, ent.NodeID, o.FH)
		}
		e.C.Forget(e.Ctx, ent.NodeID, 1)
		c.check(fmt.Sprintf("race round %d", i))
	}
	stop.Store(true)
	wg.Wait()
	if swaps.Load() == 0 || ok == 0 {
		t.Fatalf("no race happened: %d swaps, %d creates", swaps.Load(), ok)
	}
	t.Logf("%d swaps, %d creates inside", swaps.Load(), ok)
	c.check("after the race")
}

// badNames are names no guest kernel sends: they must be refused by every
// opcode that takes a name (LOOKUP accepts ".." and "."), and never
// resolve more than one component.
var badNames = []struct {
	what string
	raw  []byte // as sent, including the terminating NUL (or not)
}{
	{"slash", []byte("sub/x\x00")},
	{"leading slash", []byte("/x\x00")},
	{"dotdot slash", []byte("../canary\x00")},
	{"dotdot", []byte("..\x00")},
	{"dot", []byte(".\x00")},
	{"empty", []byte("\x00")},
	{"no NUL", []byte("unterminated")},
	{"256 bytes", append(bytes.Repeat([]byte("n"), 256), 0)},
	{"4 KiB", append(bytes.Repeat([]byte("n"), 4096), 0)},
	{"60 KiB", append(bytes.Repeat([]byte("n"), 60<<10), 0)},
	{"beyond ArgLimit", append(bytes.Repeat([]byte("n"), fuse.ArgLimit+100), 0)},
	{"slash 4 KiB", append(bytes.Repeat([]byte("a/"), 2048), 0)},
}

// TestEscapeNames sends every bad name to every name-taking opcode, in
// every name position. Embedded NULs end the name (the rest is trailing
// bytes), so "zz\0/../canary" names "zz" inside the share, which is fine.
func TestEscapeNames(t *testing.T) {
	e := Start(t, Options{})
	c := newCanaries(t, e)
	must(t, "mkdir sub", os.Mkdir(e.Path("sub"), 0o777))
	writeHost(t, e.Path("file"), []byte("f"), 0o644)
	c.dirs[e.Dir] = listDir(t, e.Dir)
	c.dirs[e.Path("sub")] = nil
	file := lookup(t, e, root, "file")
	subNode := lookup(t, e, root, "sub")
	_ = subNode
	nul := func(s string) []byte { return append([]byte(s), 0) }
	ops := []struct {
		name string
		op   uint32
		args func(n []byte) [][]byte
		out  int
	}{
		{"LOOKUP", fuse.OpLookup, func(n []byte) [][]byte { return [][]byte{n} }, fuse.EntryOutSize},
		{"MKDIR", fuse.OpMkdir, func(n []byte) [][]byte { return [][]byte{fuse.Bytes(&fuse.MkdirIn{Mode: 0o755}), n} }, fuse.EntryOutSize},
		{"MKNOD", fuse.OpMknod, func(n []byte) [][]byte {
			return [][]byte{fuse.Bytes(&fuse.MknodIn{Mode: unix.S_IFREG | 0o644}), n}
		}, fuse.EntryOutSize},
		{"SYMLINK name", fuse.OpSymlink, func(n []byte) [][]byte { return [][]byte{n, nul("target")} }, fuse.EntryOutSize},
		{"UNLINK", fuse.OpUnlink, func(n []byte) [][]byte { return [][]byte{n} }, 0},
		{"RMDIR", fuse.OpRmdir, func(n []byte) [][]byte { return [][]byte{n} }, 0},
		{"RENAME old", fuse.OpRename, func(n []byte) [][]byte { return [][]byte{fuse.Bytes(&fuse.RenameIn{Newdir: root}), n, nul("new")} }, 0},
		{"RENAME new", fuse.OpRename, func(n []byte) [][]byte { return [][]byte{fuse.Bytes(&fuse.RenameIn{Newdir: root}), nul("file"), n} }, 0},
		{"RENAME2 old", fuse.OpRename2, func(n []byte) [][]byte {
			return [][]byte{fuse.Bytes(&fuse.Rename2In{Newdir: root}), n, nul("new")}
		}, 0},
		{"RENAME2 new", fuse.OpRename2, func(n []byte) [][]byte {
			return [][]byte{fuse.Bytes(&fuse.Rename2In{Newdir: root, Flags: unix.RENAME_NOREPLACE}), nul("file"), n}
		}, 0},
		{"RENAME2 exchange", fuse.OpRename2, func(n []byte) [][]byte {
			return [][]byte{fuse.Bytes(&fuse.Rename2In{Newdir: root, Flags: unix.RENAME_EXCHANGE}), nul("file"), n}
		}, 0},
		{"LINK", fuse.OpLink, func(n []byte) [][]byte { return [][]byte{fuse.Bytes(&fuse.LinkIn{Oldnodeid: file.NodeID}), n} }, fuse.EntryOutSize},
		{"CREATE", fuse.OpCreate, func(n []byte) [][]byte {
			return [][]byte{fuse.Bytes(&fuse.CreateIn{Flags: unix.O_RDWR | unix.O_CREAT, Mode: unix.S_IFREG | 0o644}), n}
		}, fuse.EntryOutSize + fuse.OpenOutSize},
	}
	for _, bn := range badNames {
		for _, op := range ops {
			what := fmt.Sprintf("%s with name %s", op.name, bn.what)
			rep, err := e.C.Do(e.Ctx, &fuseclient.Req{Op: op.op, NodeID: root, Args: op.args(bn.raw), Out: op.out}, nil)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if op.op == fuse.OpLookup && (bn.what == "dotdot" || bn.what == "dot") {
				if rep.Error != 0 {
					t.Fatalf("%s: %v, want the root", what, rep.Err())
				}
				c.check(what)
				continue
			}
			if rep.Error == 0 {
				t.Fatalf("%s: succeeded", what)
			}
			c.check(what)
		}
	}
	// Names with embedded NULs end at the first NUL: whatever is created
	// is inside the share, under the prefix.
	for _, op := range ops {
		e.C.Do(e.Ctx, &fuseclient.Req{Op: op.op, NodeID: root, Args: op.args([]byte("zz\x00/../../canary\x00")), Out: op.out}, nil)
		c.dirs[e.Dir] = listDir(t, e.Dir)
		for _, n := range c.dirs[e.Dir] {
			if n != "file" && n != "sub" && n != "zz" && n != "new" && n != "target" {
				t.Fatalf("%s with an embedded NUL made %q in the share", op.name, n)
			}
		}
		c.check(op.name + " with an embedded NUL")
	}
	// Xattr names: no path meaning, but long and odd ones must be refused
	// or served on the node itself.
	for _, bn := range badNames {
		for _, op := range []struct {
			name string
			op   uint32
			args [][]byte
			out  int
		}{
			{"SETXATTR", fuse.OpSetxattr, [][]byte{fuse.Bytes(&fuse.SetxattrIn{Size: 1}), bn.raw, []byte("v")}, 0},
			{"GETXATTR", fuse.OpGetxattr, [][]byte{fuse.Bytes(&fuse.GetxattrIn{Size: 100}), bn.raw}, 100},
			{"REMOVEXATTR", fuse.OpRemovexattr, [][]byte{bn.raw}, 0},
		} {
			what := fmt.Sprintf("%s with name %s", op.name, bn.what)
			if _, err := e.C.Do(e.Ctx, &fuseclient.Req{Op: op.op, NodeID: file.NodeID, Args: op.args, Out: op.out}, nil); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			c.check(what)
		}
	}
	if got := listDir(t, e.Path("sub")); len(got) != 0 {
		t.Fatalf("a name with '/' created %v in sub", got)
	}
}
