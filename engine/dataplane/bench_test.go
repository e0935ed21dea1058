package dataplane

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
)

// BenchmarkQueue drives one queue through vring/driver with GETATTR requests
// answered by a trivial handler (104-byte payload), at queue depth 1 (one
// kick and one call per request) and 32 (one kick per 32 requests). Reported
// allocs/op cover the whole process, queue thread included: the non-blocking
// path must stay at 0.
func BenchmarkQueue(b *testing.B) {
	for _, depth := range []int{1, 32} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			h := newHarness(b, &fakeFS{}, 256, true)
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
