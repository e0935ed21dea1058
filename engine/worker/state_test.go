package worker

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vfsd/vring/inflight"
)

type memStore map[string][]int

func (m memStore) Store(name string, fds ...int) error {
	for _, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		m[name] = append(m[name], d)
	}
	return nil
}

func (m memStore) Remove(name string) error {
	for _, fd := range m[name] {
		unix.Close(fd)
	}
	delete(m, name)
	return nil
}

// State created and stored by one worker is taken back by the next; ring
// tracking survives; anything that does not match is refused with ErrState.
func TestStateRoundTrip(t *testing.T) {
	st, err := createState(3)
	if err != nil {
		t.Fatal(err)
	}
	store := memStore{}
	if err := st.store(store); err != nil {
		t.Fatal(err)
	}
	st.SetTracked(1, true)
	st.close()
	if len(store[StateFDName]) != 1 || len(store[InflightFDName]) != 1 {
		t.Fatalf("stored %v", store)
	}
	take := func() (int, int) {
		return dup(t, store[StateFDName][0]), dup(t, store[InflightFDName][0])
	}
	s, i := take()
	st2, err := openState(s, i, 3)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Tracked(0) || !st2.Tracked(1) || st2.Tracked(2) || st2.Tracked(7) {
		t.Fatal("tracked flags not persisted")
	}
	if st2.infl.NumQueues() != 3 || st2.infl.QueueSize() != InflightQueueSize {
		t.Fatalf("inflight region %d x %d", st2.infl.NumQueues(), st2.infl.QueueSize())
	}
	st2.close()

	// Refusals: other ring count, damaged header, damaged region.
	s, i = take()
	if _, err := openState(s, i, 4); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "rings") {
		t.Fatalf("ring count mismatch: %v", err)
	}
	mem, err := unix.Mmap(store[StateFDName][0], 0, StateSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for _, c := range []struct {
		off  int
		val  uint32
		want string
	}{
		{0, 0x41414141, "magic"},
		{8, 2, "version"},
		{16, 128, "queue size"},
		{offTracked + 4, 7, "tracked word"},
	} {
		old := binary.LittleEndian.Uint32(mem[c.off:])
		binary.LittleEndian.PutUint32(mem[c.off:], c.val)
		s, i = take()
		if _, err := openState(s, i, 3); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("damaged %s: %v", c.want, err)
		}
		binary.LittleEndian.PutUint32(mem[c.off:], old)
	}
	imem, err := unix.Mmap(store[InflightFDName][0], 0, inflight.Size(3, InflightQueueSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(imem)
	imem[8] = 9 // queue 0 version 9
	s, i = take()
	if _, err := openState(s, i, 3); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), InflightFDName) {
		t.Errorf("damaged inflight region: %v", err)
	}
	imem[8] = 0
	// A state memfd of the wrong size is refused before mapping.
	s, i = take()
	unix.Close(s)
	bad, _ := newMemfd("bad", 100)
	if _, err := openState(bad, i, 3); !errors.Is(err, ErrState) {
		t.Errorf("short state memfd: %v", err)
	}
	store.Remove(StateFDName)
	store.Remove(InflightFDName)
}

// A resuming worker whose predecessor died before storing both memfds
// starts afresh and stores new ones.
func TestLoadStateFallsBackToFresh(t *testing.T) {
	store := memStore{}
	orphan, err := newMemfd("orphan", 64)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]int{InflightFDName: orphan, "vfsd.inodes": 99}
	st, resume, err := loadState(byName, store, 2, true, quiet())
	if err != nil || resume {
		t.Fatalf("loadState: resume %v, %v", resume, err)
	}
	defer st.close()
	if _, ok := byName[InflightFDName]; ok || byName["vfsd.inodes"] != 99 {
		t.Fatalf("byName after loadState: %v", byName)
	}
	if len(store[StateFDName]) != 1 || len(store[InflightFDName]) != 1 {
		t.Fatalf("stored %v", store)
	}
	store.Remove(StateFDName)
	store.Remove(InflightFDName)
}

func dup(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
