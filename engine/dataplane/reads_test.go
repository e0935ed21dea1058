package dataplane

import (
	"bytes"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/metrics"
)

// fileFS answers READ from one host file, as the passthrough does: the
// handle's pin is released by the reply once the data is read.
type fileFS struct {
	fd       int
	pins     atomic.Int64 // taken minus released
	deferred atomic.Int64 // READs the queue's batcher took
}

func (f *fileFS) Unpin() { f.pins.Add(-1) }

func (f *fileFS) Handle(req *fuse.Request, rep *fuse.Reply) {
	if req.Opcode != fuse.OpRead {
		rep.Error(unix.ENOSYS)
		return
	}
	var in fuse.ReadIn
	fuse.Parse(req.Arg, &in)
	fd := f.fd
	if in.Fh == badFh {
		fd = -1
	}
	f.pins.Add(1)
	rep.ReadFile(fd, int64(in.Offset), int(in.Size), f)
	if rep.Deferred() {
		f.deferred.Add(1)
	}
}

const badFh = 1 // fileFS reads fd -1 for this handle

// TestBatchedReads: READs found together are answered with the right bytes
// whether they go to io_uring as a batch or one by one (NoUring), across
// more READs than one submission holds (a flush in the middle of a batch),
// with short reads at EOF, reads past it and a bad fd's error; every pin is
// released.
func TestBatchedReads(t *testing.T) {
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i*31 + i>>8)
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	for _, noUring := range []bool{false, true} {
		fs := &fileFS{fd: fd}
		h := newHarness(t, fs, 512, true)
		h.dp.Close()
		reg := metrics.New(2, nil)
		h.dp, err = New(Options{Handler: fs, PoolSize: 2, Logger: quietLogger(), NoUring: noUring, Metrics: reg})
		if err != nil {
			t.Fatal(err)
		}
		const n = 150 // > maxDeferredReads
		type want struct {
			out  uint64
			off  int
			size int
			bad  bool
		}
		wants := map[uint16]want{}
		for i := range n {
			off, size := (i*4099)%len(data), 4096
			switch i {
			case 7:
				off = len(data) - 100 // short: 100 bytes
			case 8:
				off = len(data) + 5000 // past EOF: none
			case 9:
				size = 128 << 10 // several pages, one iovec
			}
			in := fuse.ReadIn{Offset: uint64(off), Size: uint32(size)}
			if i == 10 {
				in.Fh = badFh
			}
			arg := fuse.Bytes(&in)
			rd, wr := h.request(fuse.OpRead, uint64(1000+i), arg, uint64(fuse.OutHeaderSize+size))
			head, err := h.ring.Add(rd, wr) // no kick: the queue finds them all at start
			if err != nil {
				t.Fatal(err)
			}
			wants[head] = want{wr[0][0], off, size, i == 10}
		}
		h.start(1)
		for _, u := range h.waitUsed(n, 10*time.Second) {
			w, ok := wants[u.head]
			if !ok {
				t.Fatalf("noUring=%v: used head %d twice or unknown", noUring, u.head)
			}
			delete(wants, u.head)
			exp := data[min(w.off, len(data)):min(w.off+w.size, len(data))]
			length, eno, _ := h.outHeader(w.out)
			if w.bad {
				if eno != -int32(unix.EBADF) || u.written != fuse.OutHeaderSize {
					t.Fatalf("noUring=%v: READ of a bad fd: errno %d, used %d", noUring, eno, u.written)
				}
				continue
			}
			if eno != 0 || length != u.written || u.written != uint32(fuse.OutHeaderSize+len(exp)) {
				t.Fatalf("noUring=%v: READ at %d: header len %d errno %d, used %d, want %d bytes",
					noUring, w.off, length, eno, u.written, len(exp))
			}
			if got := h.bytes(w.out+fuse.OutHeaderSize, uint64(len(exp))); !bytes.Equal(got, exp) {
				t.Fatalf("noUring=%v: READ at %d: wrong bytes", noUring, w.off)
			}
		}
		if _, err := h.dp.StopQueue(1); err != nil {
			t.Fatal(err)
		}
		if pins := fs.pins.Load(); pins != 0 {
			t.Fatalf("noUring=%v: %d pins never released", noUring, pins)
		}
		d := fs.deferred.Load()
		t.Logf("noUring=%v: %d of %d READs read at the end of their batch", noUring, d, n)
		if noUring && d != 0 {
			t.Fatalf("NoUring, yet %d READs were deferred", d)
		}
		// Every deferred READ went to the ring: a batch here is never a lone READ.
		if got := reg.Queue(1).RingReads(); got != uint64(d) {
			t.Fatalf("noUring=%v: vfsd_ring_reads_total %d, want %d", noUring, got, d)
		}
	}
}
