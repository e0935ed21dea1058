package passthrough

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// With Options.ProcSelfFD (the chroot sandbox), xattrs on inodes that
// cannot be opened go through the proc thread, relative to the inherited
// /proc/self/fd, and still land on the inode itself; the process's own
// working directory is untouched.
func TestProcThreadXattr(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("trusted.* xattrs need root")
	}
	procfd, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	cwd, _ := os.Getwd()
	c := newTFS(t, Options{Xattr: true, ProcSelfFD: procfd})
	if c.fs.procThread == nil {
		t.Fatal("no proc thread with ProcSelfFD set")
	}
	os.WriteFile(c.path("target"), nil, 0o644)
	os.Symlink("target", c.path("l"))
	unix.Mkfifo(c.path("p"), 0o644)
	l := c.mustLookup(fuse.RootID, "l")
	p := c.mustLookup(fuse.RootID, "p")
	name := func(s string) []byte { return append([]byte(s), 0) }
	set := func(node uint64, n, v string) unix.Errno {
		eno, _ := c.call(fuse.OpSetxattr, node, b(fuse.SetxattrIn{Size: uint32(len(v))}), name(n), []byte(v))
		return eno
	}
	wantErr(t, "trusted xattr on a symlink", set(l.NodeID, "trusted.l", "L"), 0)
	wantErr(t, "user xattr on a fifo", set(p.NodeID, "user.x", "1"), unix.EPERM)
	wantErr(t, "trusted xattr on a fifo", set(p.NodeID, "trusted.x", "1"), 0)
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(c.path("l"), "trusted.l", buf); err != nil || string(buf[:n]) != "L" {
		t.Errorf("symlink xattr on the host: %q %v", buf[:n], err)
	}
	if _, err := unix.Getxattr(c.path("target"), "trusted.l", buf); err != unix.ENODATA {
		t.Errorf("symlink xattr landed on the target: %v", err)
	}
	eno, out := c.call(fuse.OpGetxattr, l.NodeID, b(fuse.GetxattrIn{Size: 64}), name("trusted.l"))
	if eno != 0 || string(out) != "L" {
		t.Errorf("GETXATTR through the proc thread: %v %q", eno, out)
	}
	eno, out = c.call(fuse.OpListxattr, p.NodeID, b(fuse.GetxattrIn{Size: 64}))
	if eno != 0 || string(out) != "trusted.x\x00" {
		t.Errorf("LISTXATTR through the proc thread: %v %q", eno, out)
	}
	eno, _ = c.call(fuse.OpRemovexattr, p.NodeID, name("trusted.x"))
	wantErr(t, "REMOVEXATTR through the proc thread", eno, 0)
	if now, _ := os.Getwd(); now != cwd {
		t.Errorf("the process's working directory moved: %s -> %s", cwd, now)
	}
}
