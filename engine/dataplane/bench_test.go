package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/metrics"
)

// BenchmarkQueue drives one queue through vring/driver with GETATTR requests
// answered by a trivial handler (104-byte payload), at queue depth 1 (one
// kick and one call per request) and 32 (one kick per 32 requests). Reported
// allocs/op cover the whole process, queue thread included: the non-blocking
// path must stay at 0, with metrics recorded too (/metrics variants). The
// read4k variants READ 4 KiB of a page-cached file instead (at depth 32 a
// batch's READs go to io_uring together, reads.go).
func BenchmarkQueue(b *testing.B) {
	p := filepath.Join(b.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
		b.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	for _, c := range []struct {
		depth   int
		metrics bool
		read    bool
	}{{1, false, false}, {32, false, false}, {1, true, false}, {32, true, false}, {1, false, true}, {32, false, true}} {
		depth := c.depth
		name := fmt.Sprintf("depth=%d", depth)
		if c.metrics {
			name += "/metrics"
		}
		op, arg, payload := uint32(fuse.OpGetattr), make([]byte, 16), uint32(attrOut)
		var handler fuse.Handler = &fakeFS{}
		if c.read {
			name += "/read4k"
			op, arg, payload = fuse.OpRead, fuse.Bytes(&fuse.ReadIn{Size: 4096}), 4096
			handler = &fileFS{fd: fd}
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, handler, 256, true)
			if c.metrics {
				h.dp.o.Metrics = metrics.New(2, nil)
			}
			h.start(1)
			type buf struct{ rd, wr [][2]uint64 }
			bufs := make([]buf, depth)
			for i := range bufs {
				bufs[i].rd, bufs[i].wr = h.request(op, uint64(i+1), arg, uint64(fuse.OutHeaderSize+payload))
			}
			fds := []unix.PollFd{{Fd: int32(h.call), Events: unix.POLLIN}}
			var ev [8]byte
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; done += depth {
				for i := range bufs {
					if _, err := h.ring.Add(bufs[i].rd, bufs[i].wr); err != nil {
						b.Fatal(err)
					}
				}
				if h.ring.NeedKick() {
					signal(h.kick)
				}
				for got := 0; got < depth; {
					if _, w, ok := h.ring.PollUsed(); ok {
						if w != fuse.OutHeaderSize+payload {
							b.Fatalf("written %d", w)
						}
						got++
						continue
					}
					if h.ring.EnableInterrupts() {
						continue
					}
					unix.Poll(fds, 1000)
					unix.Read(h.call, ev[:])
				}
			}
		})
	}
}
