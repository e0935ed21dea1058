package vring_test

import (
	"testing"

	"vfsd/vring"
)

// BenchmarkPopPush: one request through the ring (driver Add, device
// Pop/Push/Publish, driver PollUsed). Pop, Push and Publish must not allocate.
func BenchmarkPopPush(b *testing.B) {
	r := newRig(b, 256, true, 0, 0)
	rd := [][2]uint64{buf(0, 64), buf(1, 4096)}
	wr := [][2]uint64{buf(2, 16), {gpaB - 2048, 4096}} // last one spans regions
	var c vring.Chain
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.drv.Add(rd, wr); err != nil {
			b.Fatal(err)
		}
		if ok, err := r.q.Pop(&c); !ok || err != nil {
			b.Fatal(ok, err)
		}
		r.q.Push(c.Head, 16)
		r.q.Publish()
		if _, _, ok := r.drv.PollUsed(); !ok {
			b.Fatal("PollUsed")
		}
	}
}

func TestPopPushAllocs(t *testing.T) {
	r := newRig(t, 256, true, 0, 0)
	rd := [][2]uint64{buf(0, 64)}
	wr := [][2]uint64{buf(2, 16), {gpaB - 2048, 4096}}
	var c vring.Chain
	step := func() {
		r.drv.Add(rd, wr)
		r.q.Pop(&c)
		r.q.Push(c.Head, 16)
		r.q.Publish()
		r.drv.PollUsed()
	}
	step() // grows c's slices once
	if n := testing.AllocsPerRun(100, step); n != 0 {
		t.Fatalf("%v allocs per request", n)
	}
}
