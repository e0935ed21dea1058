package passthrough

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/journal"
	"vfsd/maptable"
)

// fakeStore is the supervisor's fd store as the FS sees it: Store keeps a
// duplicate (the fd outlives the worker), Remove closes it.
type fakeStore struct {
	mu  sync.Mutex
	fds map[string][]int
}

func newFakeStore(t testing.TB) *fakeStore {
	s := &fakeStore{fds: map[string][]int{}}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for n, fds := range s.fds {
			for _, fd := range fds {
				unix.Close(fd)
			}
			delete(s.fds, n)
		}
	})
	return s
}

func (s *fakeStore) Store(name string, fds ...int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fds[name] = append(s.fds[name], d)
	}
	return nil
}

func (s *fakeStore) Remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fd := range s.fds[name] {
		unix.Close(fd)
	}
	delete(s.fds, name)
	return nil
}

// SendBatch applies a batch as the supervisor's store does: the removes,
// then the stores.
func (s *fakeStore) SendBatch(removes, names []string, fds []int) error {
	for _, n := range removes {
		s.Remove(n)
	}
	for i, n := range names {
		if err := s.Store(n, fds[i]); err != nil {
			return err
		}
	}
	return nil
}

// handBack is what a new worker receives: one duplicate per name.
func (s *fakeStore) handBack(t testing.TB) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]int{}
	for n, fds := range s.fds {
		d, err := unix.FcntlInt(uintptr(fds[0]), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		m[n] = d
	}
	return m
}

func (s *fakeStore) names(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.fds {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// crashed is the panic value of a simulated SIGKILL.
type crashed struct{ point string }

// abandon drops an FS whose handler died at a crash point (possibly with
// its locks held), as the kernel drops a killed worker: fds closed, memory
// gone; the memfds live on in the store.
func abandon(fs *FS) {
	if fs.sq != nil {
		// What the dead worker had queued for the store never got there.
		fs.sq.mu.Lock()
		fs.sq.resetLocked()
		fs.sq.mu.Unlock()
	}
	for _, mu := range []*sync.RWMutex{&fs.imu, &fs.hmu} {
		if mu.TryLock() {
			mu.Unlock()
		} else {
			mu.Unlock() // held by the dead handler
		}
	}
	fs.Close()
}

// rig is one shared directory with a store, served by a sequence of FSes.
type rig struct {
	t     *testing.T
	dir   string
	store *fakeStore
	c     *tfs
}

func newRig(t *testing.T) *rig {
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	r := &rig{t: t, dir: dir, store: newFakeStore(t)}
	r.c = newTFS(t, Options{Root: dir, FDStore: r.store, Xattr: true})
	r.c.queue = 1
	return r
}

// restart crashes nothing itself: it abandons the current FS and starts a
// new one from the store's fds (resume).
func (r *rig) restart() {
	r.t.Helper()
	unique := r.c.unique
	abandon(r.c.fs)
	r.closeStrays()
	r.c = openTFS(r.t, Options{Root: r.dir, FDStore: r.store, Xattr: true, Resume: r.store.handBack(r.t)}, false)
	r.c.unique = unique
	r.c.queue = 1
}

// closeStrays closes what a dead worker's handler held locally (an fd
// between open and hand-over): every fd on the shared directory that is
// not the store's.
func (r *rig) closeStrays() {
	r.store.mu.Lock()
	stored := map[int]bool{}
	for _, fds := range r.store.fds {
		for _, fd := range fds {
			stored[fd] = true
		}
	}
	r.store.mu.Unlock()
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || stored[fd] {
			continue
		}
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, r.dir) {
			unix.Close(fd)
		}
	}
}

// callCrash sends a request that dies at the n-th crash point (n < 0: no
// crash); it reports whether it died and returns the reply otherwise.
func (r *rig) callCrash(n int, op uint32, nodeid uint64, args ...[]byte) (died bool, point string, e unix.Errno, p []byte) {
	i := 0
	crashHook = func(pt string) {
		if i == n {
			panic(crashed{pt})
		}
		i++
	}
	defer func() {
		crashHook = nil
		if v := recover(); v != nil {
			c, ok := v.(crashed)
			if !ok {
				panic(v)
			}
			died, point = true, c.point
		}
	}()
	e, p = r.c.call(op, nodeid, args...)
	return
}

// countPoints runs fn with a hook counting crash points.
func countPoints(fn func()) int {
	n := 0
	crashHook = func(string) { n++ }
	defer func() { crashHook = nil }()
	fn()
	return n
}

type request struct {
	op     uint32
	nodeid uint64
	args   [][]byte
	queue  int
}

// scenario: setup prepares host state and guest references and returns
// the request under test; check verifies host state and reference counts
// after the request was answered (payload normalized by norm).
type scenario struct {
	name  string
	setup func(r *rig) request
	check func(r *rig, e unix.Errno, p []byte)
}

// onCrash, by scenario name, runs after the request died at point, before
// the restart: it makes the host look as the kill left it (a short write).
var onCrash = map[string]func(r *rig, point string){
	"WRITE O_APPEND short": func(r *rig, point string) {
		// The kill stopped the kernel's write at a page boundary.
		if point == cpSyscall {
			if err := os.Truncate(r.c.path("f"), 4096); err != nil {
				r.t.Fatal(err)
			}
		}
	},
}

// normalize blanks what differs between two runs on different directories
// (nodeids, fhs, inode numbers, timestamps).
func normalize(op uint32, p []byte) []byte {
	p = append([]byte(nil), p...)
	blankEntry := func(b []byte) {
		var e fuse.EntryOut
		if _, ok := fuse.Parse(b, &e); !ok {
			return
		}
		e.NodeID, e.Generation = 0, 0
		e.Attr.Ino, e.Attr.Atime, e.Attr.Mtime, e.Attr.Ctime = 0, 0, 0, 0
		e.Attr.Atimensec, e.Attr.Mtimensec, e.Attr.Ctimensec = 0, 0, 0
		e.Attr.Blocks = 0
		copy(b, fuse.Bytes(&e))
	}
	switch op {
	case fuse.OpLookup, fuse.OpMkdir, fuse.OpMknod, fuse.OpSymlink, fuse.OpLink:
		blankEntry(p)
	case fuse.OpCreate, fuse.OpTmpfile:
		blankEntry(p)
		if len(p) >= fuse.EntryOutSize+8 {
			clear(p[fuse.EntryOutSize : fuse.EntryOutSize+8])
		}
	case fuse.OpOpen, fuse.OpOpendir:
		if len(p) >= 8 {
			clear(p[:8])
		}
	}
	return p
}

func (r *rig) mustLookup(name string) fuse.EntryOut {
	r.t.Helper()
	return r.c.mustLookup(fuse.RootID, name)
}

func (r *rig) count(nodeid uint64) uint64 {
	n, _ := recNlookup(r.t, r.c.fs, nodeid)
	return n
}

func (r *rig) wantCount(what string, nodeid uint64, want uint64) {
	r.t.Helper()
	if got := r.count(nodeid); got != want {
		r.t.Errorf("%s: nlookup %d, want %d", what, got, want)
	}
}

// wantHandles checks that the handle map and the store agree: n handles,
// each with its fd stored, nothing else stored.
func (r *rig) wantHandles(n int) {
	r.t.Helper()
	if got := r.c.fs.handles.Len(); got != n {
		r.t.Errorf("%d handle records, want %d", got, n)
	}
	// Where handles re-open from their inodes (storeQueue.lazy), one whose
	// queued store died with a worker is in the store again only once a
	// request used it; the scenarios use their handles to check that.
	got := r.store.names("fh.")
	if len(got) != n && !(r.c.fs.sq.lazy && len(got) < n) {
		r.t.Errorf("store holds %v, want %d fh fds", got, n)
	}
}

func entryOf(t *testing.T, p []byte) fuse.EntryOut { return parse[fuse.EntryOut](t, p) }

func scenarios() []scenario {
	mkfile := func(r *rig, name, content string) {
		if err := os.WriteFile(r.c.path(name), []byte(content), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	// fGone checks an UNLINK of "f" succeeded and removed it on the host.
	fGone := func(r *rig, e unix.Errno) {
		if e != 0 {
			r.t.Fatalf("errno %v", e)
		}
		if _, err := os.Lstat(r.c.path("f")); !os.IsNotExist(err) {
			r.t.Error("f still there")
		}
	}
	entryCount := func(want uint64) func(r *rig, e unix.Errno, p []byte) {
		return func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			r.wantCount("entry", entryOf(r.t, p).NodeID, want)
		}
	}
	return []scenario{
		{"LOOKUP known", func(r *rig) request {
			mkfile(r, "f", "x")
			r.mustLookup("f")
			return request{op: fuse.OpLookup, nodeid: fuse.RootID, args: [][]byte{name("f")}}
		}, entryCount(2)},
		{"LOOKUP new", func(r *rig) request {
			mkfile(r, "f", "x")
			return request{op: fuse.OpLookup, nodeid: fuse.RootID, args: [][]byte{name("f")}}
		}, entryCount(1)},
		{"MKDIR", func(r *rig) request {
			return request{op: fuse.OpMkdir, nodeid: fuse.RootID, args: [][]byte{b(fuse.MkdirIn{Mode: 0o755}), name("d")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			entryCount(1)(r, e, p)
			if st := hostStat(r.t, r.c.path("d")); st.Mode&unix.S_IFMT != unix.S_IFDIR {
				r.t.Error("d is not a directory")
			}
		}},
		{"MKNOD", func(r *rig) request {
			return request{op: fuse.OpMknod, nodeid: fuse.RootID, args: [][]byte{b(fuse.MknodIn{Mode: unix.S_IFIFO | 0o644}), name("p")}}
		}, entryCount(1)},
		{"SYMLINK", func(r *rig) request {
			return request{op: fuse.OpSymlink, nodeid: fuse.RootID, args: [][]byte{name("s"), name("target")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			entryCount(1)(r, e, p)
			if l, _ := os.Readlink(r.c.path("s")); l != "target" {
				r.t.Errorf("symlink -> %q", l)
			}
		}},
		{"LINK", func(r *rig) request {
			mkfile(r, "f", "x")
			f := r.mustLookup("f")
			return request{op: fuse.OpLink, nodeid: fuse.RootID, args: [][]byte{b(fuse.LinkIn{Oldnodeid: f.NodeID}), name("g")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			entryCount(2)(r, e, p)
			if st := hostStat(r.t, r.c.path("f")); st.Nlink != 2 {
				r.t.Errorf("nlink %d", st.Nlink)
			}
		}},
		{"UNLINK", func(r *rig) request {
			mkfile(r, "f", "x")
			f := r.mustLookup("f")
			r.c.open(f.NodeID, unix.O_RDONLY) // open in the guest: must be kept
			return request{op: fuse.OpUnlink, nodeid: fuse.RootID, args: [][]byte{name("f")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			fGone(r, e)
			if len(r.store.names("ino.")) != 1 {
				r.t.Errorf("unlinked inode's fd not kept: %v", r.store.names("ino."))
			}
		}},
		{"UNLINK-closed", func(r *rig) request {
			mkfile(r, "f", "x")
			r.mustLookup("f")
			return request{op: fuse.OpUnlink, nodeid: fuse.RootID, args: [][]byte{name("f")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			fGone(r, e)
			// Kept or not: after a crash the inode is loaded from its
			// record, and the new worker keeps those (TestUnlinkUnopened
			// checks the case without one).
		}},
		{"RMDIR", func(r *rig) request {
			os.Mkdir(r.c.path("d"), 0o755)
			return request{op: fuse.OpRmdir, nodeid: fuse.RootID, args: [][]byte{name("d")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			if _, err := os.Lstat(r.c.path("d")); !os.IsNotExist(err) {
				r.t.Error("d still there")
			}
		}},
		{"RENAME", func(r *rig) request {
			mkfile(r, "a", "A")
			mkfile(r, "b", "B")
			return request{op: fuse.OpRename, nodeid: fuse.RootID, args: [][]byte{b(fuse.RenameIn{Newdir: fuse.RootID}), name("a"), name("b")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			got, _ := os.ReadFile(r.c.path("b"))
			if _, err := os.Lstat(r.c.path("a")); !os.IsNotExist(err) || string(got) != "A" {
				r.t.Errorf("after rename: a exists %v, b %q", err == nil, got)
			}
		}},
		{"RENAME2 EXCHANGE", func(r *rig) request {
			mkfile(r, "a", "A")
			mkfile(r, "b", "B")
			return request{op: fuse.OpRename2, nodeid: fuse.RootID,
				args: [][]byte{b(fuse.Rename2In{Newdir: fuse.RootID, Flags: unix.RENAME_EXCHANGE}), name("a"), name("b")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			a, _ := os.ReadFile(r.c.path("a"))
			bb, _ := os.ReadFile(r.c.path("b"))
			if string(a) != "B" || string(bb) != "A" {
				r.t.Errorf("after exchange: a %q b %q", a, bb)
			}
		}},
		{"CREATE", func(r *rig) request {
			return request{op: fuse.OpCreate, nodeid: fuse.RootID,
				args: [][]byte{b(fuse.CreateIn{Flags: unix.O_RDWR | unix.O_EXCL | unix.O_CREAT, Mode: 0o644}), name("n")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			entryCount(1)(r, e, p)
			r.wantHandles(1)
			fh := parse[fuse.OpenOut](r.t, p[fuse.EntryOutSize:]).Fh
			if n, eno := r.c.write(entryOf(r.t, p).NodeID, fh, 0, []byte("ok"), 0); eno != 0 || n != 2 {
				r.t.Errorf("write through the created fh: %d %v", n, eno)
			}
		}},
		{"TMPFILE", func(r *rig) request {
			return request{op: fuse.OpTmpfile, nodeid: fuse.RootID,
				args: [][]byte{b(fuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o600}), name("t")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			entryCount(1)(r, e, p)
			r.wantHandles(1)
			if len(r.store.names("ino.")) != 1 {
				r.t.Errorf("tmpfile inode's fd not kept: %v", r.store.names("ino."))
			}
		}},
		{"OPEN", func(r *rig) request {
			mkfile(r, "f", "x")
			f := r.mustLookup("f")
			return request{op: fuse.OpOpen, nodeid: f.NodeID, args: [][]byte{b(fuse.OpenIn{Flags: unix.O_RDWR})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			r.wantHandles(1)
			fh := parse[fuse.OpenOut](r.t, p).Fh
			if got, eno := r.c.read(r.mustLookup("f").NodeID, fh, 0, 10); eno != 0 || string(got) != "x" {
				r.t.Errorf("READ through the opened fh: %q %v", got, eno)
			}
		}},
		{"OPENDIR", func(r *rig) request {
			return request{op: fuse.OpOpendir, nodeid: fuse.RootID, args: [][]byte{b(fuse.OpenIn{})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			r.wantHandles(1)
			fh := parse[fuse.OpenOut](r.t, p).Fh
			if eno, _ := r.c.call(fuse.OpReaddir, fuse.RootID, b(fuse.ReadIn{Fh: fh, Size: 4096})); eno != 0 {
				r.t.Errorf("READDIR through the opened fh: %v", eno)
			}
		}},
		{"RELEASE", func(r *rig) request {
			mkfile(r, "f", "x")
			f := r.mustLookup("f")
			fh := r.c.open(f.NodeID, unix.O_RDONLY)
			return request{op: fuse.OpRelease, nodeid: f.NodeID, args: [][]byte{b(fuse.ReleaseIn{Fh: fh})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			r.wantHandles(0)
		}},
		{"SETLK new owner", func(r *rig) request {
			mkfile(r, "f", "0123456789")
			f := r.mustLookup("f")
			fh := r.c.open(f.NodeID, unix.O_RDWR)
			if e := r.c.setlk(f.NodeID, fh, 0xb, unix.F_RDLCK, 8, 9); e != 0 {
				r.t.Fatalf("SETLK B: %v", e)
			}
			return request{op: fuse.OpSetlk, nodeid: f.NodeID, args: [][]byte{b(fuse.LkIn{Fh: fh, Owner: 0xa,
				Lk: fuse.FileLock{Start: 0, End: 4, Type: unix.F_WRLCK, PID: 42}})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			if l := hostConflict(r.t, r.c.path("f"), 0, 8); l.Type != unix.F_WRLCK || l.Start != 0 || l.Len != 5 {
				r.t.Errorf("host sees %+v, want A's write lock on [0,5)", l)
			}
			if got := r.store.names("lk."); len(got) != 2 {
				r.t.Errorf("store holds %v, want the two owners' lock fds", got)
			}
		}},
		{"FLUSH drops the owner's locks", func(r *rig) request {
			mkfile(r, "f", "0123456789")
			f := r.mustLookup("f")
			fh := r.c.open(f.NodeID, unix.O_RDWR)
			if e := r.c.setlk(f.NodeID, fh, 0xa, unix.F_WRLCK, 0, 4); e != 0 {
				r.t.Fatalf("SETLK A: %v", e)
			}
			if e := r.c.setlk(f.NodeID, fh, 0xb, unix.F_WRLCK, 8, 9); e != 0 {
				r.t.Fatalf("SETLK B: %v", e)
			}
			return request{op: fuse.OpFlush, nodeid: f.NodeID, args: [][]byte{b(fuse.FlushIn{Fh: fh, LockOwner: 0xa})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			if l := hostConflict(r.t, r.c.path("f"), 0, 0); l.Type != unix.F_WRLCK || l.Start != 8 {
				r.t.Errorf("host sees %+v, want only B's lock at 8", l)
			}
			if got := r.store.names("lk."); len(got) != 1 {
				r.t.Errorf("store holds %v, want B's lock fd only", got)
			}
		}},
		{"WRITE O_APPEND", func(r *rig) request {
			mkfile(r, "f", "base")
			f := r.mustLookup("f")
			// Without writeback the append flag reaches the host.
			r.c.fs.flags.Store(r.c.fs.flags.Load() &^ fuse.FlagWritebackCache)
			fh := r.c.open(f.NodeID, unix.O_WRONLY|unix.O_APPEND)
			data := []byte("+more")
			return request{op: fuse.OpWrite, nodeid: f.NodeID,
				args: [][]byte{b(fuse.WriteIn{Fh: fh, Size: uint32(len(data))}), data}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			if got, _ := os.ReadFile(r.c.path("f")); string(got) != "base+more" {
				r.t.Errorf("file %q", got)
			}
		}},
		{"WRITE O_APPEND short", func(r *rig) request {
			mkfile(r, "f", "base")
			f := r.mustLookup("f")
			r.c.fs.flags.Store(r.c.fs.flags.Load() &^ fuse.FlagWritebackCache)
			fh := r.c.open(f.NodeID, unix.O_WRONLY|unix.O_APPEND)
			return request{op: fuse.OpWrite, nodeid: f.NodeID,
				args: [][]byte{b(fuse.WriteIn{Fh: fh, Size: uint32(len(appendData))}), appendData}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			if n := parse[fuse.WriteOut](r.t, p).Size; n != uint32(len(appendData)) {
				r.t.Errorf("wrote %d of %d", n, len(appendData))
			}
			if got, _ := os.ReadFile(r.c.path("f")); !bytes.Equal(got, append([]byte("base"), appendData...)) {
				r.t.Errorf("file holds %d bytes, not base+data", len(got))
			}
		}},
		{"SETXATTR CREATE", func(r *rig) request {
			mkfile(r, "f", "x")
			f := r.mustLookup("f")
			return request{op: fuse.OpSetxattr, nodeid: f.NodeID,
				args: [][]byte{b(fuse.SetxattrIn{Size: 3, Flags: unix.XATTR_CREATE}), name("user.k"), []byte("val")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
			v := make([]byte, 16)
			n, err := unix.Getxattr(r.c.path("f"), "user.k", v)
			if err != nil || string(v[:n]) != "val" {
				r.t.Errorf("xattr %q %v", v[:n], err)
			}
		}},
		{"REMOVEXATTR", func(r *rig) request {
			mkfile(r, "f", "x")
			unix.Setxattr(r.c.path("f"), "user.k", []byte("v"), 0)
			f := r.mustLookup("f")
			return request{op: fuse.OpRemovexattr, nodeid: f.NodeID, args: [][]byte{name("user.k")}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 {
				r.t.Fatalf("errno %v", e)
			}
		}},
		{"FORGET", func(r *rig) request {
			mkfile(r, "f", "x")
			for range 3 {
				r.mustLookup("f")
			}
			f := r.mustLookup("f")
			return request{op: fuse.OpForget, nodeid: f.NodeID, args: [][]byte{b(fuse.ForgetIn{Nlookup: 3})}, queue: 0}
		}, func(r *rig, e unix.Errno, p []byte) {
			id, _ := r.c.fs.inodes.Lookup(keyOfPath(r.t, r.c.path("f")))
			r.wantCount("f", uint64(id), 1)
		}},
		{"BATCH_FORGET", func(r *rig) request {
			mkfile(r, "f", "x")
			mkfile(r, "g", "y")
			f := r.mustLookup("f")
			r.mustLookup("f")
			g := r.mustLookup("g")
			return request{op: fuse.OpBatchForget, nodeid: 0, queue: 0, args: [][]byte{b(fuse.BatchForgetIn{Count: 2}),
				b(fuse.ForgetOne{NodeID: f.NodeID, Nlookup: 1}), b(fuse.ForgetOne{NodeID: g.NodeID, Nlookup: 1})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			fid, _ := r.c.fs.inodes.Lookup(keyOfPath(r.t, r.c.path("f")))
			r.wantCount("f", uint64(fid), 1)
			if _, ok := r.c.fs.inodes.Lookup(keyOfPath(r.t, r.c.path("g"))); ok {
				r.t.Error("g not freed")
			}
		}},
		{"INIT", func(r *rig) request {
			r.c.call(fuse.OpDestroy, fuse.RootID)
			return request{op: fuse.OpInit, args: [][]byte{b(fuse.InitIn{Major: 7, Minor: 38, MaxReadahead: 4096})}}
		}, func(r *rig, e unix.Errno, p []byte) {
			if e != 0 || !r.c.fs.Session().Initialized {
				r.t.Fatalf("errno %v session %+v", e, r.c.fs.Session())
			}
		}},
	}
}

func keyOfPath(t testing.TB, p string) maptable.Key {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, statxMask, &st); err != nil {
		t.Fatal(err)
	}
	return keyOf(&st)
}

// TestCrashEveryStep: for every rule, the request dies at each of its
// crash points in turn; a new FS resumed from the same memfds and store
// answers the resubmitted request as the crash-free run did, and host state
// and reference counts are exact.
func TestCrashEveryStep(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			// Crash-free reference run.
			r := newRig(t)
			req := sc.setup(r)
			r.c.queue = req.queue
			var e0 unix.Errno
			var p0 []byte
			n := countPoints(func() { e0, p0 = r.c.call(req.op, req.nodeid, req.args...) })
			r.c.head = 100 // check's own requests use another head
			sc.check(r, e0, p0)
			inodes0, handles0 := r.c.fs.inodes.Len(), r.c.fs.handles.Len()
			if n == 0 {
				t.Fatalf("no crash points: %s is not journaled", sc.name)
			}
			for i := range n {
				t.Run(fmt.Sprint(i), func(t *testing.T) {
					r := newRig(t)
					req := sc.setup(r)
					r.c.queue, r.c.head = req.queue, uint16(7+i)
					died, point, _, _ := r.callCrash(i, req.op, req.nodeid, req.args...)
					if !died {
						t.Fatalf("did not reach crash point %d", i)
					}
					unique := r.c.unique
					if f := onCrash[sc.name]; f != nil {
						f(r, point)
					}
					r.restart()
					resubmit := func() (unix.Errno, []byte) {
						r.c.queue, r.c.head, r.c.resumed = req.queue, uint16(7+i), true
						r.c.unique = unique - 1 // the same request again
						e, p := r.c.call(req.op, req.nodeid, req.args...)
						r.c.resumed, r.c.head = false, 100
						return e, p
					}
					e, p := resubmit()
					if e != e0 || !bytes.Equal(normalize(req.op, p), normalize(req.op, p0)) {
						t.Fatalf("after a crash at %q: errno %v payload %x\nwant errno %v payload %x", point, e, p, e0, p0)
					}
					if n, h := r.c.fs.inodes.Len(), r.c.fs.handles.Len(); n != inodes0 || h != handles0 {
						t.Errorf("after a crash at %q: %d inode and %d handle records, want %d and %d", point, n, h, inodes0, handles0)
					}
					sc.check(r, e, p)
					// A second resubmission (crash before the reply was
					// pushed, again) replays the same answer.
					r.restart()
					e2, p2 := resubmit()
					if e2 != e || !bytes.Equal(p2, p) {
						t.Fatalf("second resubmission after %q: errno %v payload %x, want %v %x", point, e2, p2, e, p)
					}
					sc.check(r, e2, p2)
				})
			}
		})
	}
}

// appendData is an O_APPEND WRITE's payload: 3 pages and a bit, no two
// pages alike.
var appendData = func() []byte {
	d := make([]byte, 3*4096+1030)
	for i := range d {
		d[i] = byte(i*7 + i>>12)
	}
	return d
}()

// TestAppendShortWrite: an O_APPEND WRITE killed inside the kernel's write
// (a prefix of the data landed) is completed by the resubmission, also when
// the completion itself is cut short by a second kill, or dies before or
// after its write; bytes that are not the data's answer EIO.
func TestAppendShortWrite(t *testing.T) {
	const base = "base"
	want := append([]byte(base), appendData...)
	type cut struct {
		point string // crash point of the completion run ("" none)
		size  int64  // file size the kill left (0: as written)
	}
	for _, tc := range []struct {
		name   string
		first  int64 // size the first kill left
		second *cut
		spoil  bool // overwrite the landed prefix before the resubmission
		want   unix.Errno
	}{
		{name: "complete", first: 4096},
		{name: "one byte", first: int64(len(base)) + 1},
		{name: "all but one", first: int64(len(want)) - 1},
		{name: "completion cut", first: 4096, second: &cut{point: cpSyscall, size: 8192}},
		{name: "completion whole", first: 4096, second: &cut{point: cpSyscall}},
		{name: "completion not begun", first: 4096, second: &cut{point: cpRef}},
		{name: "completion nothing written", first: 4096, second: &cut{point: cpSyscall, size: 4096}},
		{name: "not our bytes", first: 4096, spoil: true, want: unix.EIO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			os.WriteFile(r.c.path("f"), []byte(base), 0o644)
			f := r.mustLookup("f")
			r.c.fs.flags.Store(r.c.fs.flags.Load() &^ fuse.FlagWritebackCache)
			fh := r.c.open(f.NodeID, unix.O_WRONLY|unix.O_APPEND)
			args := [][]byte{b(fuse.WriteIn{Fh: fh, Size: uint32(len(appendData))}), appendData}
			r.c.queue, r.c.head = 1, 9
			if died, point, _, _ := r.callCrash(1, fuse.OpWrite, f.NodeID, args...); !died || point != cpSyscall {
				t.Fatalf("died %v at %q, want the write's syscall point", died, point)
			}
			unique := r.c.unique
			if err := os.Truncate(r.c.path("f"), tc.first); err != nil {
				t.Fatal(err)
			}
			if tc.spoil {
				fd, _ := unix.Open(r.c.path("f"), unix.O_WRONLY, 0)
				unix.Pwrite(fd, []byte("X"), int64(len(base)))
				unix.Close(fd)
			}
			r.restart()
			resubmit := func(crashAt string) (bool, unix.Errno, []byte) {
				r.c.queue, r.c.head, r.c.resumed, r.c.unique = 1, 9, true, unique-1
				defer func() { r.c.resumed = false }()
				if crashAt == "" {
					e, p := r.c.call(fuse.OpWrite, f.NodeID, args...)
					return false, e, p
				}
				crashHook = func(pt string) {
					if pt == crashAt {
						panic(crashed{pt})
					}
				}
				died, _, e, p := r.callCrash(-1, fuse.OpWrite, f.NodeID, args...)
				return died, e, p
			}
			if c := tc.second; c != nil {
				i := 0
				crashHook = func(pt string) {
					if pt == c.point {
						panic(crashed{pt})
					}
					i++
				}
				func() {
					defer func() {
						crashHook = nil
						if v := recover(); v == nil {
							t.Fatalf("completion did not reach %q", c.point)
						}
					}()
					r.c.queue, r.c.head, r.c.resumed, r.c.unique = 1, 9, true, unique-1
					r.c.call(fuse.OpWrite, f.NodeID, args...)
				}()
				r.c.resumed = false
				if c.size > 0 {
					if err := os.Truncate(r.c.path("f"), c.size); err != nil {
						t.Fatal(err)
					}
				}
				r.restart()
			}
			for round := range 2 { // the second: a replay of the done record
				_, e, p := resubmit("")
				if e != tc.want {
					t.Fatalf("round %d: errno %v, want %v", round, e, tc.want)
				}
				if e != 0 {
					return
				}
				if n := parse[fuse.WriteOut](t, p).Size; n != uint32(len(appendData)) {
					t.Fatalf("round %d: wrote %d of %d", round, n, len(appendData))
				}
				if got, _ := os.ReadFile(r.c.path("f")); !bytes.Equal(got, want) {
					t.Fatalf("round %d: file holds %d bytes (want %d), not base+data", round, len(got), len(want))
				}
				r.restart()
			}
		})
	}
}

// TestResumeKeepsState: nodeids, fhs (with their open file description:
// offset-free I/O and OFD locks), the session and unlinked inodes the
// guest holds open survive a restart.
func TestResumeKeepsState(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("f"), []byte("hello"), 0o644)
	os.Mkdir(r.c.path("d"), 0o755)
	f := r.mustLookup("f")
	d := r.mustLookup("d")
	fh := r.c.open(f.NodeID, unix.O_RDWR)
	dh := r.c.opendir(d.NodeID)
	lk := fuse.LkIn{Fh: fh, Owner: 1, Lk: fuse.FileLock{Type: unix.F_WRLCK, Start: 0, End: fuse.OffsetMax}}
	if e, _ := r.c.call(fuse.OpSetlk, f.NodeID, b(lk)); e != 0 {
		t.Fatalf("SETLK: %v", e)
	}
	os.WriteFile(r.c.path("u"), []byte("gone"), 0o644)
	u := r.mustLookup("u")
	uh := r.c.open(u.NodeID, unix.O_RDONLY)
	if e, _ := r.c.call(fuse.OpUnlink, fuse.RootID, name("u")); e != 0 {
		t.Fatal(e)
	}
	sess := r.c.fs.Session()
	r.restart()

	if got := r.c.fs.Session(); got != sess {
		t.Fatalf("session %+v, want %+v", got, sess)
	}
	if e, _ := r.c.call(fuse.OpGetattr, f.NodeID, b(fuse.GetattrIn{})); e != 0 {
		t.Errorf("GETATTR of a nodeid from before the restart: %v", e)
	}
	if p, e := r.c.read(f.NodeID, fh, 0, 100); e != 0 || string(p) != "hello" {
		t.Errorf("READ through an fh from before: %q %v", p, e)
	}
	if e, _ := r.c.call(fuse.OpReaddir, d.NodeID, b(fuse.ReadIn{Fh: dh, Size: 4096})); e != 0 {
		t.Errorf("READDIR through a dir handle from before: %v", e)
	}
	// The OFD lock is still held by the fh's open file description: a
	// second open conflicts, re-locking through the fh succeeds.
	fh2 := r.c.open(f.NodeID, unix.O_RDWR)
	if e, _ := r.c.call(fuse.OpSetlk, f.NodeID, b(fuse.LkIn{Fh: fh2, Owner: 2, Lk: lk.Lk})); e != unix.EAGAIN {
		t.Errorf("conflicting lock after restart: %v, want EAGAIN", e)
	}
	if e, _ := r.c.call(fuse.OpSetlk, f.NodeID, b(lk)); e != 0 {
		t.Errorf("re-lock through the same fh: %v", e)
	}
	if e, p := r.c.call(fuse.OpGetattr, u.NodeID, b(fuse.GetattrIn{})); e != 0 || parse[fuse.AttrOut](t, p).Attr.Nlink != 0 {
		t.Errorf("GETATTR of an unlinked inode after restart: %v", e)
	}
	if p, e := r.c.read(u.NodeID, uh, 0, 100); e != 0 || string(p) != "gone" {
		t.Errorf("READ of an unlinked file through an fh from before: %q %v", p, e)
	}
	r.c.call(fuse.OpRelease, u.NodeID, b(fuse.ReleaseIn{Fh: uh}))
	// FORGET of the unlinked inode frees it and its stored fd.
	r.c.queue = 0
	r.c.call(fuse.OpForget, u.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if names := r.store.names("ino."); len(names) != 0 {
		t.Errorf("store still holds %v", names)
	}
	r.c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh}))
	r.c.call(fuse.OpRelease, f.NodeID, b(fuse.ReleaseIn{Fh: fh2}))
	r.c.call(fuse.OpReleasedir, d.NodeID, b(fuse.ReleaseIn{Fh: dh}))
	r.wantHandles(0)
	// DESTROY forgets records never loaded since the restart too.
	r.restart()
	r.c.call(fuse.OpDestroy, fuse.RootID)
	if n := r.c.fs.inodes.Len(); n != 1 {
		t.Errorf("%d inode records after DESTROY, want the root's", n)
	}
}

// TestResumeRefuses: state that does not match is refused with an error.
func TestResumeRefuses(t *testing.T) {
	r := newRig(t)
	fds := r.store.handBack(t)
	other := t.TempDir()
	if _, err := New(Options{Root: other, Resume: fds}); err == nil {
		t.Error("resumed on another shared directory")
	}
	fds = r.store.handBack(t)
	fds[InodesFDName], fds[HandlesFDName] = fds[HandlesFDName], fds[InodesFDName]
	if _, err := New(Options{Root: r.dir, Resume: fds}); err == nil {
		t.Error("resumed with the maps swapped")
	}
}

// fdIno is the inode number of fd's file (memfds: one per memfd).
func fdIno(t testing.TB, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// wantStateStored checks that the store holds exactly one fd per state
// name, each the memfd fs uses.
func wantStateStored(t *testing.T, s *fakeStore, fs *FS) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, fd := range map[string]int{InodesFDName: fs.inodes.FD(), HandlesFDName: fs.handles.FD(), journal.FDName: fs.journal.FD()} {
		got := s.fds[name]
		if len(got) != 1 {
			t.Errorf("store holds %d fds named %s, want 1", len(got), name)
			continue
		}
		if fdIno(t, got[0]) != fdIno(t, fd) {
			t.Errorf("store's %s is not the memfd the FS uses", name)
		}
	}
}

// TestFreshStartReplacesState: a worker that starts afresh while a
// predecessor's state memfds are still stored replaces them (one fd per
// name, the new one), so that the next restart resumes the new state.
func TestFreshStartReplacesState(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("f"), []byte("x"), 0o644)
	r.mustLookup("f")
	abandon(r.c.fs)
	fs, err := New(Options{Root: r.dir, FDStore: r.store})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	wantStateStored(t, r.store, fs)
	// The next worker resumes the new (empty) state: one record, the root.
	fs2, err := New(Options{Root: r.dir, FDStore: r.store, Resume: r.store.handBack(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer fs2.Close()
	if n := fs2.inodes.Len(); n != 1 {
		t.Errorf("resumed %d inode records, want the new state's 1", n)
	}
}

// TestResumePartialState: resume with the FS's state memfds absent or only
// partly stored (a crash between the worker's stores and storeState) starts
// afresh instead of failing, drops the stale fds and their names, stores a
// complete state and serves.
func TestResumePartialState(t *testing.T) {
	for _, missing := range [][]string{
		{InodesFDName, HandlesFDName, journal.FDName},
		{journal.FDName},
		{HandlesFDName, journal.FDName},
		{InodesFDName},
	} {
		t.Run(strings.Join(missing, "+"), func(t *testing.T) {
			r := newRig(t)
			os.WriteFile(r.c.path("f"), []byte("x"), 0o644)
			f := r.mustLookup("f")
			r.c.open(f.NodeID, unix.O_RDONLY) // a stale "fh.<id>"
			abandon(r.c.fs)
			for _, name := range missing {
				r.store.Remove(name)
			}
			other, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			r.store.Store("other.name", other) // not the FS's: kept in the store
			unix.Close(other)
			fds := r.store.handBack(t)
			inos := map[int]uint64{}
			for _, fd := range fds {
				inos[fd] = fdIno(t, fd)
			}
			var logged bytes.Buffer
			c := openTFS(t, Options{Root: r.dir, FDStore: r.store, Resume: fds,
				Logger: slog.New(slog.NewTextHandler(&logged, nil))}, true)
			fs := c.fs
			if fs.lazy {
				t.Error("resumed from partial state")
			}
			if !strings.Contains(logged.String(), "level=WARN") {
				t.Errorf("no warning logged: %q", logged.String())
			}
			wantStateStored(t, r.store, fs)
			if got := r.store.names("fh."); len(got) != 0 {
				t.Errorf("stale handle fds still stored: %v", got)
			}
			if got := r.store.names("other."); len(got) != 1 {
				t.Errorf("a name that is not the FS's was removed")
			}
			for name, fd := range fds {
				var st unix.Stat_t
				if unix.Fstat(fd, &st) == nil && st.Ino == inos[fd] {
					t.Errorf("handed-back fd %d (%s) left open", fd, name)
				}
			}
			if e, _ := c.call(fuse.OpGetattr, fuse.RootID, b(fuse.GetattrIn{})); e != 0 {
				t.Errorf("GETATTR after a fresh start: %v", e)
			}
		})
	}
}

// BenchmarkResume: New with resume costs the same at 1 and 100,000 inodes
// (tables are mapped, inodes loaded on first use).
func BenchmarkResume(b *testing.B) {
	for _, n := range []int{1, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			dir := b.TempDir()
			store := newFakeStore(b)
			fs, err := New(Options{Root: dir, FDStore: store, MaxInodes: 1 << 18})
			if err != nil {
				b.Fatal(err)
			}
			// Inode records as LOOKUPs leave them (no host files needed to
			// measure the restart).
			rec := make([]byte, fs.irec)
			for i := 1; i < n; i++ {
				if _, err := fs.inodes.Insert(maptable.Key{1, uint64(i), 1}, rec); err != nil {
					b.Fatal(err)
				}
			}
			fs.Close()
			b.ResetTimer()
			for b.Loop() {
				fs, err := New(Options{Root: dir, FDStore: store, Resume: store.handBack(b)})
				if err != nil {
					b.Fatal(err)
				}
				fs.Close()
			}
		})
	}
}

// BenchmarkFirstRequestAfterResume: New with resume, then the first GETATTR
// of an inode from before the restart (loaded from its record, installed in
// the slot table), with the default 1<<20 inode slots and the inode at a
// high slot. The cost must not grow with the slot index.
func BenchmarkFirstRequestAfterResume(b *testing.B) {
	dir := b.TempDir()
	store := newFakeStore(b)
	c := openTFS(b, Options{Root: dir, FDStore: store, MaxInodes: 1 << 20}, true)
	var hi fuse.EntryOut
	for i := range 64 { // the highest slot of 64 files: ~98% of the table
		n := fmt.Sprint("f", i)
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
		e, p := c.call(fuse.OpLookup, fuse.RootID, name(n))
		if e != 0 {
			b.Fatal(e)
		}
		var ent fuse.EntryOut
		fuse.Parse(p, &ent)
		if uint32(ent.NodeID) >= uint32(hi.NodeID) {
			hi = ent
		}
	}
	getattr := fuse.Bytes(&fuse.GetattrIn{})
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		c2 := openTFS(b, Options{Root: dir, FDStore: store, MaxInodes: 1 << 20, Resume: store.handBack(b)}, false)
		b.StartTimer()
		if e, _ := c2.call(fuse.OpGetattr, hi.NodeID, getattr); e != 0 {
			b.Fatal(e)
		}
		b.StopTimer()
		c2.fs.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(uint32(hi.NodeID)), "slot")
}

// TestUnlinkUnopened: a regular file whose last link goes while no handle
// is open is not kept (nothing in the guest can reach it); after a restart
// its nodeid answers ESTALE and FORGET frees its record. A handle made on
// it after the unlink (an OPEN that raced with the UNLINK) keeps it then,
// if the inode had its fd; one still deferred (never used) has nothing to
// open it by any more, and the OPEN answers ESTALE (the guest's VFS then
// walks the path again and finds the name gone, as if the OPEN came after
// the UNLINK).
func TestUnlinkUnopened(t *testing.T) {
	r := newRig(t)
	for _, n := range []string{"f", "g", "h", "x", "d"} {
		os.WriteFile(r.c.path(n), []byte(n), 0o644)
	}
	f := r.mustLookup("f")
	g := r.mustLookup("g")
	h := r.mustLookup("h")
	d := r.mustLookup("d")
	if e, _ := r.c.call(fuse.OpGetattr, g.NodeID, b(fuse.GetattrIn{})); e != 0 {
		t.Fatalf("GETATTR: %v", e) // g gets its fd
	}
	for _, n := range []string{"f", "g", "d"} {
		if e, _ := r.c.call(fuse.OpUnlink, fuse.RootID, name(n)); e != 0 {
			t.Fatalf("UNLINK %s: %v", n, e)
		}
	}
	// h's last link goes by a rename over it.
	if e, _ := r.c.call(fuse.OpRename, fuse.RootID, b(fuse.RenameIn{Newdir: fuse.RootID}), name("x"), name("h")); e != 0 {
		t.Fatalf("RENAME: %v", e)
	}
	if names := r.store.names("ino."); len(names) != 0 {
		t.Fatalf("unopened unlinked files kept: %v", names)
	}
	gh := r.c.open(g.NodeID, unix.O_RDONLY)
	if names := r.store.names("ino."); len(names) != 1 {
		t.Fatalf("a handle on an unlinked file did not keep it: %v", names)
	}
	if r.c.fs.deferOpen {
		if e, _ := r.c.call(fuse.OpOpen, d.NodeID, b(fuse.OpenIn{Flags: unix.O_RDONLY})); e != unix.ESTALE {
			t.Errorf("OPEN of a never-used inode after its last link went: %v, want ESTALE", e)
		}
	}
	r.restart()
	if p, e := r.c.read(g.NodeID, gh, 0, 10); e != 0 || string(p) != "g" {
		t.Errorf("READ of the file opened after its unlink: %q %v", p, e)
	}
	for _, n := range []uint64{f.NodeID, h.NodeID} {
		if e, _ := r.c.call(fuse.OpGetattr, n, b(fuse.GetattrIn{})); e != unix.ESTALE {
			t.Errorf("GETATTR of an unkept unlinked file after restart: %v, want ESTALE", e)
		}
	}
	r.c.call(fuse.OpRelease, g.NodeID, b(fuse.ReleaseIn{Fh: gh}))
	r.c.queue = 0
	for _, n := range []uint64{f.NodeID, g.NodeID, h.NodeID, d.NodeID} {
		r.c.call(fuse.OpForget, n, b(fuse.ForgetIn{Nlookup: 1}))
	}
	if n := r.c.fs.inodes.Len(); n != 1 {
		t.Errorf("%d inode records after FORGET, want 1 (the root)", n)
	}
	if names := r.store.names("ino."); len(names) != 0 {
		t.Errorf("store still holds %v", names)
	}
}

// TestUnlinkOpenRace: an UNLINK and an OPEN of the same file on two request
// queues at once. Whatever the interleaving, a handle the OPEN answered on
// a file whose last link went stays usable after a restart: either the
// unlink saw the open handle, or the open saw the unlink's mark, and the
// inode was kept (keepIfLastLink, newHandle).
func TestUnlinkOpenRace(t *testing.T) {
	dir := t.TempDir()
	store := newFakeStore(t)
	o := Options{Root: dir, FDStore: store, Queues: 3}
	c1 := newTFS(t, o)
	c1.queue = 1
	c2 := &tfs{t: t, fs: c1.fs, dir: dir, out: make([]byte, 64<<10), queue: 2, unique: 1 << 40}
	type opened struct {
		nodeid, fh uint64
		data       string
	}
	var kept []opened
	for i := range 200 {
		fname := fmt.Sprintf("f%d", i)
		data := fmt.Sprintf("data %d", i)
		os.WriteFile(c1.path(fname), []byte(data), 0o644)
		f := c1.mustLookup(fuse.RootID, fname)
		var wg sync.WaitGroup
		var ue, oe unix.Errno
		var op []byte
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			oe, op = c2.call(fuse.OpOpen, f.NodeID, b(fuse.OpenIn{Flags: unix.O_RDONLY}))
		}()
		ue, _ = c1.call(fuse.OpUnlink, fuse.RootID, name(fname))
		wg.Wait()
		if ue != 0 {
			t.Fatalf("UNLINK %s: %v", fname, ue)
		}
		if oe != 0 {
			continue // the inode went before the OPEN found it: fine
		}
		fh := parse[fuse.OpenOut](t, op).Fh
		if !slices.Contains(store.names("ino."), inoName(f.NodeID)) {
			t.Fatalf("%s: OPEN answered fh %#x on an unlinked file that was not kept", fname, fh)
		}
		kept = append(kept, opened{f.NodeID, fh, data})
	}
	// The handles still read their files after a restart.
	abandon(c1.fs)
	r := &rig{t: t, dir: dir, store: store}
	r.closeStrays()
	c := openTFS(t, Options{Root: dir, FDStore: store, Queues: 3, Resume: store.handBack(t)}, false)
	c.queue = 1
	c.unique = 1 << 50
	for _, k := range kept {
		if p, e := c.read(k.nodeid, k.fh, 0, 100); e != 0 || string(p) != k.data {
			t.Errorf("after restart, READ of fh %#x: %q %v, want %q", k.fh, p, e, k.data)
		}
	}
	t.Logf("%d of 200 OPENs won the race", len(kept))
}

// TestUnlinkOpenFile: the guest holds a file open, its handle's fd still
// queued for the store (lazy), when the file's last link goes and the
// worker dies. The unlink kept the inode (and sent the queue with it), so
// the handle works after the restart.
func TestUnlinkOpenFile(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("f"), []byte("still here"), 0o644)
	f := r.mustLookup("f")
	r.c.noFlush = true // nothing published: the handle store stays queued
	fh := r.c.open(f.NodeID, unix.O_RDONLY)
	if e, _ := r.c.call(fuse.OpUnlink, fuse.RootID, name("f")); e != 0 {
		t.Fatalf("UNLINK: %v", e)
	}
	r.restart()
	if p, e := r.c.read(f.NodeID, fh, 0, 100); e != 0 || string(p) != "still here" {
		t.Errorf("READ through the handle of the unlinked file after a restart: %q %v", p, e)
	}
}

// TestReusedInodeNumber: after a restart, a record whose inode is gone
// (deleted while no fd kept it) and whose number a new file now has must
// not be taken for the new file: the new file gets a record and nodeid of
// its own, the old nodeid answers ESTALE and its FORGET is harmless. The
// reuse is simulated by changing the record's file handle (ext4: number
// and generation), which is what tells the two inodes apart.
func TestReusedInodeNumber(t *testing.T) {
	r := newRig(t)
	os.WriteFile(r.c.path("f"), []byte("new file"), 0o644)
	old := r.mustLookup("f")
	r.c.fs.imu.Lock()
	err := r.c.fs.inodes.Update(maptable.ID(old.NodeID), maptable.UpdateFunc(func(val []byte) {
		n := binary.LittleEndian.Uint32(val[recFhLen:])
		val[recFh+int(n)-1] ^= 0xff // another generation
	}))
	r.c.fs.imu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	r.restart()
	e := r.mustLookup("f")
	if e.NodeID == old.NodeID {
		t.Fatalf("LOOKUP after the restart answered the old inode's nodeid %#x", old.NodeID)
	}
	if eno, _ := r.c.call(fuse.OpGetattr, e.NodeID, b(fuse.GetattrIn{})); eno != 0 {
		t.Errorf("GETATTR of the new file: %v", eno)
	}
	if eno, _ := r.c.call(fuse.OpGetattr, old.NodeID, b(fuse.GetattrIn{})); eno != unix.ESTALE {
		t.Errorf("GETATTR of the old inode's nodeid: %v, want ESTALE", eno)
	}
	r.c.queue = 0
	r.c.call(fuse.OpForget, old.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
	if n := r.c.fs.inodes.Len(); n != 2 {
		t.Errorf("%d inode records, want 2 (the root and the new file)", n)
	}
	r.c.queue = 1
	if eno, _ := r.c.call(fuse.OpGetattr, e.NodeID, b(fuse.GetattrIn{})); eno != 0 {
		t.Errorf("GETATTR of the new file after the old one's FORGET: %v", eno)
	}
}
