package vring_test

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"

	"vfsd/vring"
)

// TestConcurrent runs driver and device on two goroutines over the same
// memory, as the guest and the worker do: every request carries a sequence
// number the device must read back intact and answer in its reply. With -race
// it also checks that the index atomics order all ring and buffer accesses.
func TestConcurrent(t *testing.T) {
	const (
		size = 16
		reqs = 20000
	)
	for _, eventIdx := range []bool{false, true} {
		r := newRig(t, size, eventIdx, 65000, 0)
		var wg sync.WaitGroup
		var failed atomic.Bool
		wg.Add(1)
		go func() { // device
			defer wg.Done()
			var c vring.Chain
			for done := 0; done < reqs; {
				ok, err := r.q.Pop(&c)
				if err != nil {
					t.Errorf("Pop: %v", err)
					failed.Store(true)
					return
				}
				if !ok {
					if r.q.EnableNotify() {
						r.q.DisableNotify()
					}
					continue
				}
				seq := binary.LittleEndian.Uint64(c.Readable[0])
				binary.LittleEndian.PutUint64(c.Writable[0], ^seq)
				r.q.Push(c.Head, 8)
				r.q.Publish()
				done++
			}
		}()
		// driver: slot i of the queue uses buffers 2i (request) and 2i+1 (reply)
		var bufOf [size]int
		sent, got := 0, 0
		for got < reqs && !failed.Load() {
			for sent < reqs && r.drv.NumFree() >= 2 {
				slot := sent % size
				rq, rp := buf(2*slot, 8), buf(2*slot+1, 8)
				binary.LittleEndian.PutUint64(r.a[rq[0]:], uint64(sent))
				h, err := r.drv.Add([][2]uint64{rq}, [][2]uint64{rp})
				if err != nil {
					t.Fatal(err)
				}
				bufOf[h] = slot
				sent++
			}
			r.drv.NeedKick()
			h, w, ok := r.drv.PollUsed()
			if !ok {
				if err := r.drv.Err(); err != nil {
					t.Fatal(err)
				}
				continue
			}
			slot := bufOf[h]
			req := binary.LittleEndian.Uint64(r.a[buf(2*slot, 8)[0]:])
			rep := binary.LittleEndian.Uint64(r.a[buf(2*slot+1, 8)[0]:])
			if w != 8 || rep != ^req {
				t.Fatalf("reply %#x to request %d (written %d)", rep, req, w)
			}
			got++
		}
		wg.Wait()
	}
}
