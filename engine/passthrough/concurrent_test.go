package passthrough

import (
	"encoding/binary"
	"os"
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// worker is a minimal queue thread: its own Request, Reply and buffers.
type worker struct {
	fs     *FS
	unique uint64
	req    fuse.Request
	rep    fuse.Reply
	out    []byte
}

func (w *worker) call(op uint32, nodeid uint64, args ...[]byte) (unix.Errno, []byte) {
	w.unique++
	var body []byte
	for _, a := range args {
		body = append(body, a...)
	}
	h := fuse.InHeader{Len: uint32(fuse.InHeaderSize + len(body)), Opcode: op, Unique: w.unique, NodeID: nodeid}
	buf := append(append([]byte(nil), fuse.Bytes(&h)...), body...)
	if err := w.req.Decode(fuse.Scatter{buf}); err != nil {
		panic(err)
	}
	w.rep.Reset(fuse.Scatter{w.out}, w.unique)
	w.fs.Handle(&w.req, &w.rep)
	if w.rep.Written() == 0 {
		return 0, nil
	}
	e := unix.Errno(-int32(binary.LittleEndian.Uint32(w.out[4:])))
	return e, w.out[fuse.OutHeaderSize:w.rep.Written()]
}

// TestConcurrentLifetimes races LOOKUP/GETATTR/FORGET on one inode and
// OPEN/READ/RELEASE on its handles across threads (run with -race): every
// answer is a success, ESTALE or EBADF, never data from another file.
func TestConcurrentLifetimes(t *testing.T) {
	c := newTFS(t, Options{})
	os.WriteFile(c.path("f"), []byte("ffff"), 0o644)
	os.WriteFile(c.path("g"), []byte("gggg"), 0o644)
	f := c.mustLookup(fuse.RootID, "f")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			w := &worker{fs: c.fs, out: make([]byte, 8192), unique: uint64(g) << 40}
			for i := range 300 {
				n := "f"
				if (i+g)%3 == 0 {
					n = "g"
				}
				e, p := w.call(fuse.OpLookup, fuse.RootID, name(n))
				if e != 0 {
					t.Errorf("LOOKUP: %v", e)
					return
				}
				var ent fuse.EntryOut
				fuse.Parse(p, &ent)
				if e, _ := w.call(fuse.OpGetattr, f.NodeID, b(fuse.GetattrIn{})); e != 0 && e != unix.ESTALE {
					t.Errorf("GETATTR: %v", e)
				}
				e, p = w.call(fuse.OpOpen, ent.NodeID, b(fuse.OpenIn{Flags: unix.O_RDONLY}))
				if e == 0 {
					var o fuse.OpenOut
					fuse.Parse(p, &o)
					e, p = w.call(fuse.OpRead, ent.NodeID, b(fuse.ReadIn{Fh: o.Fh, Size: 4}))
					if e != 0 || string(p) != n+n+n+n {
						t.Errorf("READ %s: %v %q", n, e, p)
					}
					w.call(fuse.OpRelease, ent.NodeID, b(fuse.ReleaseIn{Fh: o.Fh}))
				} else if e != unix.ESTALE {
					t.Errorf("OPEN: %v", e)
				}
				w.call(fuse.OpForget, ent.NodeID, b(fuse.ForgetIn{Nlookup: 1}))
			}
		}()
	}
	wg.Wait()
	if c.fs.handles.Len() != 0 {
		t.Errorf("%d handles left", c.fs.handles.Len())
	}
	// f still has the test's own reference; g none.
	if n := c.fs.inodes.Len(); n != 2 {
		t.Errorf("%d inode records, want 2 (root, f)", n)
	}
}
