package dataplane

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/metrics"
)

// BenchmarkQueue drives one queue through vring/driver with GETATTR requests
// answered by a trivial handler (104-byte payload), at queue depth 1 (one
// kick and one call per request) and 32 (one kick per 32 requests). Reported
// allocs/op cover the whole process, queue thread included: the non-blocking
// path must stay at 0, with metrics recorded too (/metrics variants).
func BenchmarkQueue(b *testing.B) {
	for _, c := range []struct {
		depth   int
		metrics bool
	}{{1, false}, {32, false}, {1, true}, {32, true}} {
		depth := c.depth
		name := fmt.Sprintf("depth=%d", depth)
		if c.metrics {
			name += "/metrics"
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, &fakeFS{}, 256, true)
			if c.metrics {
				h.dp.o.Metrics = metrics.New(2, nil)
			}
			h.start(1)
			type buf struct{ rd, wr [][2]uint64 }
			bufs := make([]buf, depth)
			for i := range bufs {
				bufs[i].rd, bufs[i].wr = h.request(fuse.OpGetattr, uint64(i+1), make([]byte, 16), fuse.OutHeaderSize+attrOut)
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
						if w != fuse.OutHeaderSize+attrOut {
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
