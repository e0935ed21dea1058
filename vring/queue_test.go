package vring_test

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"vfsd/vring"
	"vfsd/vring/driver"
	"vfsd/vring/mem"
)

// Guest RAM for tests: region A at GPA 0 holds the rings and buffers; region
// B is adjacent in guest space (a separate host allocation), so a buffer
// across the boundary must come back as two segments.
const (
	sizeA = 1 << 18
	gpaB  = sizeA
	sizeB = 1 << 16
)

type rig struct {
	t    *testing.T
	a, b []byte
	tab  *mem.Table
	drv  *driver.Ring
	q    *vring.Queue
	cfg  vring.Config
}

func newRig(t testing.TB, size int, eventIdx bool, start uint16, maxChain int) *rig {
	r := &rig{a: make([]byte, sizeA), b: make([]byte, sizeB)}
	var err error
	r.tab, err = mem.NewTable([]mem.Mapped{
		{Region: mem.Region{GuestAddr: 0, Size: sizeA, UserAddr: 0x7f0000000000}, Data: r.a},
		{Region: mem.Region{GuestAddr: gpaB, Size: sizeB, UserAddr: 0x7f1000000000}, Data: r.b},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.drv, err = driver.New(r.a, 0, size, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.drv.StartAt(start); err != nil {
		t.Fatal(err)
	}
	d, av, u := r.drv.Addrs()
	r.cfg = vring.Config{Size: size, Desc: d, Avail: av, Used: u, EventIdx: eventIdx, MaxChain: maxChain}
	r.q, err = vring.New(r.tab, r.cfg, start, start)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// buf is a buffer at GPA 0x20000 + i*0x1000 in region A.
func buf(i int, n uint64) [2]uint64 { return [2]uint64{0x20000 + uint64(i)*0x1000, n} }

func (r *rig) pop(t *testing.T) (vring.Chain, error) {
	t.Helper()
	var c vring.Chain
	ok, err := r.q.Pop(&c)
	if !ok && err == nil {
		t.Fatal("Pop: ring empty")
	}
	return c, err
}

func lens(segs [][]byte) []int {
	var n []int
	for _, s := range segs {
		n = append(n, len(s))
	}
	return n
}

func TestBasicChain(t *testing.T) {
	r := newRig(t, 16, false, 0, 0)
	copy(r.a[0x20000:], "hello")
	head, err := r.drv.Add([][2]uint64{buf(0, 5)}, [][2]uint64{buf(1, 200), buf(2, 50)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.pop(t)
	if err != nil || c.Head != head {
		t.Fatalf("Pop: head %d err %v", c.Head, err)
	}
	if len(c.Readable) != 1 || string(c.Readable[0]) != "hello" {
		t.Fatalf("readable %q", c.Readable)
	}
	if got := lens(c.Writable); len(got) != 2 || got[0] != 200 || got[1] != 50 {
		t.Fatalf("writable lengths %v", got)
	}
	copy(c.Writable[0], "world")
	if !bytes.Equal(r.a[0x21000:0x21005], []byte("world")) {
		t.Fatal("writable segment is not guest RAM")
	}
	var c2 vring.Chain
	if ok, err := r.q.Pop(&c2); ok || err != nil {
		t.Fatalf("second Pop = %v, %v", ok, err)
	}
	r.q.Push(c.Head, 5)
	if r.drv.UsedIdx() != 0 {
		t.Fatal("Push published before Publish")
	}
	if !r.q.Publish() {
		t.Fatal("Publish: no notification without NO_INTERRUPT")
	}
	if h, w, ok := r.drv.PollUsed(); !ok || h != head || w != 5 {
		t.Fatalf("PollUsed = %d %d %v", h, w, ok)
	}
	if r.q.Publish() {
		t.Fatal("Publish with nothing pushed notifies")
	}
	r.drv.SetAvailFlags(driver.AvailFNoInterrupt)
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	c, _ = r.pop(t)
	r.q.Push(c.Head, 0)
	if r.q.Publish() {
		t.Fatal("Publish notifies despite NO_INTERRUPT")
	}
}

func TestZeroLengthSkipped(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	r.drv.Add([][2]uint64{buf(0, 0), buf(1, 3)}, [][2]uint64{buf(2, 0), buf(3, 4)})
	c, err := r.pop(t)
	if err != nil || len(c.Readable) != 1 || len(c.Writable) != 1 || len(c.Readable[0]) != 3 {
		t.Fatalf("%v %v %v", err, lens(c.Readable), lens(c.Writable))
	}
	// Skipped entirely: neither the address nor the direction matters.
	r.drv.Add(nil, [][2]uint64{{1 << 50, 0}})
	h, _ := r.drv.Add([][2]uint64{buf(0, 3)}, nil)
	r.drv.SetDesc(int(h), 1<<50, 0, driver.DescFWrite|driver.DescFNext, (h+1)%8)
	r.drv.SetDesc(int(h+1)%8, 0x20000, 3, 0, 0)
	if _, err := r.pop(t); err != nil {
		t.Fatalf("zero-length outside RAM: %v", err)
	}
	if c, err := r.pop(t); err != nil || len(c.Readable) != 1 || len(c.Writable) != 0 {
		t.Fatalf("zero-length writable before readable: %v", err)
	}
}

func TestIndirect(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	tbl := r.drv.End()
	head, err := r.drv.AddIndirect(tbl, [][2]uint64{buf(0, 10), buf(1, 20)}, [][2]uint64{buf(2, 30)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.pop(t)
	if err != nil || c.Head != head {
		t.Fatal(err)
	}
	if got := lens(c.Readable); len(got) != 2 || got[0] != 10 || got[1] != 20 || len(c.Writable) != 1 {
		t.Fatalf("readable %v writable %v", got, lens(c.Writable))
	}
	// A table of exactly MaxChain entries is fine; the pointer does not count.
	r = newRig(t, 4, false, 0, 0)
	ws := [][2]uint64{buf(0, 1), buf(1, 1), buf(2, 1), buf(3, 1)}
	r.drv.AddIndirect(r.drv.End(), nil, ws)
	if c, err := r.pop(t); err != nil || len(c.Writable) != 4 {
		t.Fatalf("full indirect table: %v", err)
	}
}

func TestIndirectTableAcrossRegions(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	tbl := uint64(gpaB - 16) // entry 0 in region A, entry 1 in region B
	driver.PutDesc(r.a[tbl:], 0x20000, 7, driver.DescFNext, 1)
	driver.PutDesc(r.b[0:], 0x21000, 9, driver.DescFWrite, 0)
	r.drv.SetDesc(0, tbl, 32, driver.DescFIndirect, 0)
	r.drv.PublishRaw(0)
	c, err := r.pop(t)
	if err != nil || len(c.Readable) != 1 || len(c.Writable) != 1 || len(c.Writable[0]) != 9 {
		t.Fatalf("%v %v %v", err, lens(c.Readable), lens(c.Writable))
	}
}

func TestSplitAcrossRegions(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	r.a[sizeA-1], r.b[0] = 'x', 'y'
	r.drv.Add([][2]uint64{{gpaB - 0x10, 0x20}}, [][2]uint64{{gpaB - 1, sizeB + 1}})
	c, err := r.pop(t)
	if err != nil {
		t.Fatal(err)
	}
	if got := lens(c.Readable); len(got) != 2 || got[0] != 0x10 || got[1] != 0x10 {
		t.Fatalf("readable %v", got)
	}
	if c.Readable[0][0xf] != 'x' || c.Readable[1][0] != 'y' {
		t.Fatal("segments point at the wrong bytes")
	}
	if got := lens(c.Writable); len(got) != 2 || got[0] != 1 || got[1] != sizeB {
		t.Fatalf("writable %v", got)
	}
	// One byte more runs off the end of region B.
	r.drv.Add(nil, [][2]uint64{{gpaB - 1, sizeB + 2}})
	if c, err := r.pop(t); !errors.Is(err, vring.ErrBadChain) || len(c.Writable) != 0 {
		t.Fatalf("buffer past RAM: %v", err)
	}
}

func TestWraparound(t *testing.T) {
	r := newRig(t, 4, true, 65530, 0)
	for i := 0; i < 40; i++ {
		var heads []uint16
		for k := 0; k < 3; k++ {
			h, err := r.drv.Add([][2]uint64{buf(k, 1)}, nil)
			if err != nil {
				t.Fatalf("iteration %d: %v", i, err)
			}
			heads = append(heads, h)
		}
		for k := 0; k < 3; k++ {
			c, err := r.pop(t)
			if err != nil || c.Head != heads[k] {
				t.Fatalf("iteration %d: head %d want %d: %v", i, c.Head, heads[k], err)
			}
			r.q.Push(c.Head, uint32(k))
		}
		r.q.Publish()
		for k := 0; k < 3; k++ {
			if h, w, ok := r.drv.PollUsed(); !ok || h != heads[k] || w != uint32(k) {
				t.Fatalf("iteration %d: PollUsed %d %d %v (%v)", i, h, w, ok, r.drv.Err())
			}
		}
	}
	if want := uint16(65530 + 120 - 65536); r.q.LastAvail() != want || r.q.UsedIdx() != want {
		t.Fatalf("indices %d %d", r.q.LastAvail(), r.q.UsedIdx())
	}
}

func TestEventIdxPublish(t *testing.T) {
	r := newRig(t, 8, true, 0, 0)
	complete := func(n int) bool {
		for i := 0; i < n; i++ {
			r.drv.Add([][2]uint64{buf(0, 1)}, nil)
			c, err := r.pop(t)
			if err != nil {
				t.Fatal(err)
			}
			r.q.Push(c.Head, 0)
		}
		notify := r.q.Publish()
		for i := 0; i < n; i++ {
			r.drv.PollUsed()
		}
		return notify
	}
	if !complete(1) {
		t.Fatal("first Publish after New must notify")
	}
	// The driver advanced used_event to 1 when it polled: the next element (1)
	// crosses it.
	if !complete(1) {
		t.Fatal("used_event 1 crossed without notification")
	}
	r.drv.DisableInterrupts() // used_event stays at 2
	r.drv.SetUsedEvent(5)     // wants a notification when element 5 is used
	if complete(2) {          // elements 2,3
		t.Fatal("notified before used_event")
	}
	if !complete(3) { // elements 4,5,6 cross 5
		t.Fatal("batch crossing used_event not notified")
	}
	if complete(1) {
		t.Fatal("notified after used_event passed")
	}
}

func TestNotifySuppression(t *testing.T) {
	// Without EVENT_IDX: used.flags NO_NOTIFY.
	r := newRig(t, 8, false, 0, 0)
	r.q.DisableNotify()
	if r.drv.UsedFlags()&driver.UsedFNoNotify == 0 {
		t.Fatal("DisableNotify did not set NO_NOTIFY")
	}
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	if r.drv.NeedKick() {
		t.Fatal("driver kicks despite NO_NOTIFY")
	}
	if !r.q.EnableNotify() {
		t.Fatal("EnableNotify missed a pending chain")
	}
	if r.drv.UsedFlags() != 0 {
		t.Fatal("EnableNotify did not clear NO_NOTIFY")
	}
	r.pop(t)
	if r.q.EnableNotify() {
		t.Fatal("EnableNotify reports work on an empty ring")
	}
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	if !r.drv.NeedKick() {
		t.Fatal("no kick with notifications enabled")
	}

	// With EVENT_IDX: avail_event.
	r = newRig(t, 8, true, 100, 0)
	if r.drv.AvailEvent() != 100 {
		t.Fatalf("New: avail_event %d, want 100", r.drv.AvailEvent())
	}
	r.q.DisableNotify()
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	if !r.drv.NeedKick() { // avail_event 100 crossed by 100->101
		t.Fatal("first chain after enable did not kick")
	}
	r.pop(t)
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	if r.drv.NeedKick() {
		t.Fatal("kick while disabled")
	}
	if !r.q.EnableNotify() || r.drv.AvailEvent() != 101 {
		t.Fatalf("EnableNotify: avail_event %d", r.drv.AvailEvent())
	}
	r.pop(t)
	r.pop(t)
	if r.q.EnableNotify() {
		t.Fatal("EnableNotify reports work on an empty ring")
	}
	r.drv.Add([][2]uint64{buf(0, 1)}, nil)
	if !r.drv.NeedKick() {
		t.Fatal("no kick after EnableNotify")
	}
}

func TestNewValidates(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	good := r.cfg
	bad := []func(c *vring.Config){
		func(c *vring.Config) { c.Size = 0 },
		func(c *vring.Config) { c.Size = 12 },
		func(c *vring.Config) { c.Size = 65536 },
		func(c *vring.Config) { c.Desc += 8 },
		func(c *vring.Config) { c.Avail++ },
		func(c *vring.Config) { c.Used += 2 },
		func(c *vring.Config) { c.Desc = sizeA - 64 },          // table crosses into region B
		func(c *vring.Config) { c.Used = gpaB + sizeB },        // outside RAM
		func(c *vring.Config) { c.Avail = math.MaxUint64 - 1 }, // overflows
		func(c *vring.Config) { c.MaxChain = -1 },
	}
	for i, f := range bad {
		c := good
		f(&c)
		if _, err := vring.New(r.tab, c, 0, 0); err == nil {
			t.Errorf("case %d: New accepted %+v", i, c)
		}
	}
}

func TestSetMem(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	onlyA, err := mem.NewTable(r.tab.Regions()[:1])
	if err != nil {
		t.Fatal(err)
	}
	if err := r.q.SetMem(onlyA); err != nil {
		t.Fatal(err)
	}
	r.drv.Add(nil, [][2]uint64{{gpaB, 8}})
	if _, err := r.pop(t); !errors.Is(err, vring.ErrBadChain) {
		t.Fatalf("buffer in removed region: %v", err)
	}
	onlyB, _ := mem.NewTable(r.tab.Regions()[1:])
	if err := r.q.SetMem(onlyB); err == nil {
		t.Fatal("SetMem accepted a table without the rings")
	}
	r.drv.Add(nil, [][2]uint64{buf(0, 8)}) // old translation still in use
	if _, err := r.pop(t); err != nil {
		t.Fatal(err)
	}
}

func TestWalk(t *testing.T) {
	r := newRig(t, 8, false, 0, 0)
	h, _ := r.drv.Add([][2]uint64{buf(0, 4)}, [][2]uint64{buf(1, 8)})
	c, err := r.pop(t)
	if err != nil {
		t.Fatal(err)
	}
	// A restarted backend re-walks the in-flight head.
	var again vring.Chain
	if err := r.q.Walk(h, &again); err != nil || again.Head != h || len(again.Readable) != 1 || len(again.Writable) != 1 ||
		&again.Writable[0][0] != &c.Writable[0][0] {
		t.Fatalf("Walk: %v", err)
	}
	if r.q.LastAvail() != 1 {
		t.Fatal("Walk consumed an avail entry")
	}
	if err := r.q.Walk(8, &again); !errors.Is(err, vring.ErrBroken) {
		t.Fatalf("Walk(8): %v", err)
	}
	r.drv.SetDesc(3, 0x20000, 1, driver.DescFNext, 3)
	if err := r.q.Walk(3, &again); !errors.Is(err, vring.ErrBadChain) || again.Head != 3 {
		t.Fatalf("Walk(loop): %v", err)
	}
}
