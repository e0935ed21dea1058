package inflight_test

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/vring/inflight"
)

func TestCreateMap(t *testing.T) {
	r, err := inflight.Create(3, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var st unix.Stat_t
	if err := unix.Fstat(r.FD(), &st); err != nil || st.Size != int64(inflight.Size(3, 16)) {
		t.Fatalf("memfd size %d (%v), want %d", st.Size, err, inflight.Size(3, 16))
	}
	if err := unix.Ftruncate(r.FD(), 64); err == nil {
		t.Fatal("memfd can shrink under the mapping")
	}
	if r.Queue(3) != nil || r.Queue(0).Size() != 16 || r.Queue(2).Started() {
		t.Fatal("fresh region")
	}
	q := r.Queue(1)
	q.Init(7)
	q.Get(5)
	q.Get(9)

	// A second mapping of the fd, as a restarted worker makes it.
	r2, err := inflight.Map(r.FD(), 3, 16)
	if err != nil {
		t.Fatal(err)
	}
	q2 := r2.Queue(1)
	if !q2.Started() || r2.Queue(0).Started() || !q2.Inflight(5) || !q2.Inflight(9) {
		t.Fatal("state not seen through the second mapping")
	}
	la, heads, err := q2.Resume(7, func(uint16) uint32 { t.Fatal("no open batch to walk"); return 0 })
	if err != nil || la != 9 || !slices.Equal(heads, []uint16{5, 9}) {
		t.Fatalf("Resume = %d %v %v", la, heads, err)
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r2.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	// Map does not own the fd: it is still usable.
	if err := unix.Fstat(r.FD(), &st); err != nil {
		t.Fatal("Map's Close closed the caller's fd")
	}

	// Wrong geometry: too many queues for the file, wrong desc_num.
	if _, err := inflight.Map(r.FD(), 4, 16); err == nil {
		t.Fatal("Map past the end of the file")
	}
	if _, err := inflight.Map(r.FD(), 1, 8); err == nil {
		t.Fatal("Map with desc_num mismatch (queue 1 is started with 16)")
	}
	if _, err := inflight.Map(r.FD(), 1, 12); err == nil {
		t.Fatal("Map with queue size 12")
	}
	if _, err := inflight.MapAt(r.FD(), 4, 1, 16); err == nil {
		t.Fatal("MapAt with misaligned offset")
	}
	if _, err := inflight.MapAt(r.FD(), -8, 1, 16); err == nil {
		t.Fatal("MapAt with negative offset")
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := inflight.Map(p[0], 1, 16); err == nil {
		t.Fatal("Map of a pipe")
	}
}

// TestMapAtZeroed: a frontend's zeroed region at an offset (SET_INFLIGHT_FD's
// mmap_offset): version 0, desc_num 0 is accepted and Init makes it ours.
func TestMapAtZeroed(t *testing.T) {
	fd, err := unix.MemfdCreate("inflight-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const off = 4096 + 64
	if err := unix.Ftruncate(fd, off+int64(inflight.Size(2, 64))); err != nil {
		t.Fatal(err)
	}
	r, err := inflight.MapAt(fd, off, 2, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	q := r.Queue(1)
	if q.Started() {
		t.Fatal("zeroed region started")
	}
	if _, _, err := q.Resume(0, nil); !errors.Is(err, inflight.ErrNotStarted) {
		t.Fatalf("Resume: %v", err)
	}
	q.Init(0)
	q.Get(63)
	r2, err := inflight.MapAt(fd, off, 2, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if la, heads, err := r2.Queue(1).Resume(0, nil); err != nil || la != 1 || !slices.Equal(heads, []uint16{63}) {
		t.Fatalf("Resume = %d %v %v", la, heads, err)
	}
}
