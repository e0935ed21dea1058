package maptable

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"
)

// crashOp is one writer operation for the crash tests. It must be
// deterministic given the table contents (a freshly opened table).
type crashOp struct {
	name string
	run  func(*Table) error
}

// randomState builds a table with entries, tombstones and free slots by
// random inserts and deletes, and returns its snapshot.
func randomState(t *testing.T, rng *rand.Rand, slots int) ([]byte, model) {
	tab, err := Create("crash-state", slots, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	var ids []ID
	for range rng.IntN(4 * slots) {
		if len(ids) > 0 && rng.IntN(3) == 0 {
			i := rng.IntN(len(ids))
			if err := tab.Delete(ids[i]); err != nil {
				t.Fatal(err)
			}
			ids = append(ids[:i], ids[i+1:]...)
			continue
		}
		k := Key{}
		if rng.IntN(4) != 0 {
			k = Key{rng.Uint64N(uint64(3*slots)) + 1}
		}
		if id, err := tab.Insert(k, []byte(fmt.Sprint(rng.IntN(1000)))); err == nil {
			ids = append(ids, id)
		}
	}
	return snapshot(t, tab), readModel(t, tab)
}

// opsFor returns the operations to crash, for a state with model m.
func opsFor(rng *rand.Rand, slots int, m model) []crashOp {
	ops := []crashOp{
		{"insert-keyless", func(t *Table) error { _, err := t.Insert(Key{}, []byte("new")); return err }},
	}
	for range 3 {
		k := Key{rng.Uint64N(uint64(3*slots)) + 1}
		ops = append(ops, crashOp{fmt.Sprint("insert-", k[0]), func(t *Table) error {
			_, err := t.Insert(k, []byte("newkey"))
			return err
		}})
	}
	n := 0
	for id := range m {
		if n++; n > 4 {
			break
		}
		ops = append(ops,
			crashOp{fmt.Sprintf("update-%#x", uint64(id)), func(t *Table) error {
				return t.Update(id, UpdateFunc(func(v []byte) { copy(v, "updated!") }))
			}},
			crashOp{fmt.Sprintf("delete-%#x", uint64(id)), func(t *Table) error { return t.Delete(id) }})
	}
	return ops
}

// TestCrash stops every writer operation at every store (by panicking out of
// the test hook, as SIGKILL would stop it), also stops Open's repair at every
// store, and checks that the table Open then returns equals the model either
// before or after the operation: never a mix, and never "before" once a
// crash at an earlier store gave "after".
func TestCrash(t *testing.T) {
	exactTombs = false
	defer func() { exactTombs = true }()
	rng := rand.New(rand.NewPCG(7, 7))
	const slots = 12
	outcomes := map[string]int{}
	for state := range 40 {
		snap, before := randomState(t, rng, slots)
		for _, op := range opsFor(rng, slots, before) {
			// The uncrashed run gives the "after" model.
			fd := newMemfd(t, snap)
			tab, err := Open(fd)
			if err != nil {
				t.Fatal(err)
			}
			opErr := op.run(tab)
			after := readModel(t, tab)
			tab.Close()
			unix.Close(fd)

			sawAfter := false
			for k := 0; ; k++ {
				name := fmt.Sprintf("state %d op %s crash at store %d", state, op.name, k)
				fd := newMemfd(t, snap)
				tab, err := Open(fd)
				if err != nil {
					t.Fatal(err)
				}
				hook, _ := crashAt(k)
				tab.hook = hook
				if !runCrashing(t, func() { op.run(tab) }) {
					tab.Close()
					unix.Close(fd)
					break
				}
				abandon(tab)
				crashRecovery(t, name, fd)
				got := openFD(t, fd)
				m := readModel(t, got)
				switch m.String() {
				case after.String():
					sawAfter = true
					outcomes["after"]++
				case before.String():
					if sawAfter && before.String() != after.String() {
						t.Fatalf("%s: table went back to the state before the operation", name)
					}
					outcomes["before"]++
					// The rolled-back table must run the operation to the same end.
					if err := op.run(got); fmt.Sprint(err) != fmt.Sprint(opErr) {
						t.Fatalf("%s: rerun after rollback: %v, first run %v", name, err, opErr)
					}
					if m2 := readModel(t, got); m2.String() != after.String() {
						t.Fatalf("%s: rerun after rollback gave\n%v\nwant\n%v", name, m2, after)
					}
				default:
					t.Fatalf("%s: recovered table\n%v\nbefore\n%v\nafter\n%v", name, m, before, after)
				}
				got.Close()
				unix.Close(fd)
			}
		}
	}
	if outcomes["before"] == 0 || outcomes["after"] == 0 {
		t.Fatalf("outcomes %v: crash points did not cover both sides of the commit", outcomes)
	}
	t.Logf("outcomes: %v", outcomes)
}

// crashRecovery crashes Open's repair of fd at every store in turn (each
// crash leaves the memfd for the next attempt), until one runs through.
func crashRecovery(t *testing.T, name string, fd int) {
	for j := 0; ; j++ {
		tab, err := mapFD(fd)
		if err != nil {
			t.Fatalf("%s: map: %v", name, err)
		}
		hook, _ := crashAt(j)
		tab.hook = hook
		var rerr error
		crashed := runCrashing(t, func() {
			tab.mu.Lock()
			rerr = tab.recoverLocked()
			tab.mu.Unlock()
		})
		abandon(tab)
		if rerr != nil {
			t.Fatalf("%s: repair crash %d: %v", name, j, rerr)
		}
		if !crashed {
			return
		}
	}
}

// newMemfd returns a sealable memfd holding b; the caller closes it.
func newMemfd(t *testing.T, b []byte) int {
	fd, err := unix.MemfdCreate("maptable-crash", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Pwrite(fd, b, 0); err != nil || n != len(b) {
		t.Fatalf("pwrite: %d, %v", n, err)
	}
	return fd
}
