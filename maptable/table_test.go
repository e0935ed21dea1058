package maptable

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func val(n int, s string) []byte {
	b := make([]byte, n)
	copy(b, s)
	return b
}

func TestBasic(t *testing.T) {
	tab := mustCreate(t, 16, 8)
	if tab.Cap() != 14 || tab.ValueSize() != 8 || tab.Len() != 0 {
		t.Fatalf("Cap %d ValueSize %d Len %d", tab.Cap(), tab.ValueSize(), tab.Len())
	}
	k := Key{1, 2, 3}
	id, err := tab.Insert(k, []byte("abc"))
	if err != nil {
		t.Fatal(err)
	}
	if id == 0 || id == 1 || id.Gen() == 0 || id.Slot() >= 16 {
		t.Fatalf("bad id %#x", uint64(id))
	}
	if got, ok := tab.Lookup(k); !ok || got != id {
		t.Fatalf("Lookup = %#x, %v", uint64(got), ok)
	}
	if _, ok := tab.Lookup(Key{1, 2, 4}); ok {
		t.Fatal("Lookup of absent key succeeded")
	}
	if _, ok := tab.Lookup(Key{}); ok {
		t.Fatal("Lookup of zero key succeeded")
	}
	if id2, err := tab.Insert(k, nil); !errors.Is(err, ErrExists) || id2 != id {
		t.Fatalf("duplicate Insert = %#x, %v", uint64(id2), err)
	}
	b := make([]byte, 8)
	if err := tab.Get(id, b); err != nil || string(b) != "abc\x00\x00\x00\x00\x00" {
		t.Fatalf("Get = %q, %v", b, err)
	}
	if err := tab.Get(id, b[:7]); !errors.Is(err, ErrValueSize) {
		t.Fatalf("Get short buffer: %v", err)
	}
	if _, err := tab.Insert(Key{9}, make([]byte, 9)); !errors.Is(err, ErrValueSize) {
		t.Fatalf("Insert long value: %v", err)
	}
	if err := tab.Update(id, UpdateFunc(func(v []byte) { copy(v[3:], "defgh") })); err != nil {
		t.Fatal(err)
	}
	if err := tab.Get(id, b); err != nil || string(b) != "abcdefgh" {
		t.Fatalf("Get after Update = %q, %v", b, err)
	}
	// A panicking Update changes nothing and leaves the table usable.
	func() {
		defer func() { recover() }()
		tab.Update(id, UpdateFunc(func(v []byte) { v[0] = 'X'; panic("boom") }))
	}()
	if err := tab.Get(id, b); err != nil || string(b) != "abcdefgh" {
		t.Fatalf("Get after panicking Update = %q, %v", b, err)
	}
	if err := tab.Delete(id); err != nil {
		t.Fatal(err)
	}
	if err := tab.Delete(id); !errors.Is(err, ErrStale) {
		t.Fatalf("second Delete: %v", err)
	}
	if _, ok := tab.Lookup(k); ok || tab.Len() != 0 {
		t.Fatalf("entry survived Delete, Len %d", tab.Len())
	}
	readModel(t, tab)
	if err := tab.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tab.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := tab.Insert(k, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Insert after Close: %v", err)
	}
	if err := tab.Get(id, b); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if tab.FD() != -1 {
		t.Fatal("FD after Close")
	}
}

func TestCreateArgs(t *testing.T) {
	for _, c := range []struct{ slots, vsize int }{{0, 8}, {1, 8}, {-1, 8}, {MaxSlots + 1, 8}, {16, -1}, {16, MaxValueSize + 1}} {
		if tab, err := Create("x", c.slots, c.vsize); err == nil {
			tab.Close()
			t.Errorf("Create(%d, %d) succeeded", c.slots, c.vsize)
		}
	}
	tab := mustCreate(t, 2, 0)
	if _, err := tab.Insert(Key{1}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Insert(Key{2}, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("Insert into full 2-slot table: %v", err)
	}
	seals, err := unix.FcntlInt(uintptr(tab.FD()), unix.F_GET_SEALS, 0)
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL; err != nil || seals&want != want {
		t.Fatalf("seals %#x, %v", seals, err)
	}
}

func TestStaleIDs(t *testing.T) {
	tab := mustCreate(t, 2, 4)
	b := make([]byte, 4)
	for _, id := range []ID{0, 1, 2, 1 << 32, 1<<32 | 2, 1<<32 | 0xffffffff, ^ID(0)} {
		if err := tab.Get(id, b); !errors.Is(err, ErrStale) {
			t.Errorf("Get(%#x) on empty table: %v", uint64(id), err)
		}
		if err := tab.Delete(id); !errors.Is(err, ErrStale) {
			t.Errorf("Delete(%#x) on empty table: %v", uint64(id), err)
		}
		if err := tab.Update(id, UpdateFunc(func([]byte) {})); !errors.Is(err, ErrStale) {
			t.Errorf("Update(%#x) on empty table: %v", uint64(id), err)
		}
	}
	// A 2-slot table holds one entry: every Insert reuses a slot, so
	// stale IDs of the same slot pile up.
	var old []ID
	for i := range 10 {
		id, err := tab.Insert(Key{}, []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		if id == 1 || id < 1<<32 {
			t.Fatalf("id %#x", uint64(id))
		}
		for _, o := range old {
			if o == id {
				t.Fatalf("id %#x reissued", uint64(id))
			}
			if err := tab.Get(o, b); !errors.Is(err, ErrStale) {
				t.Fatalf("Get(stale %#x): %v", uint64(o), err)
			}
			if err := tab.Update(o, UpdateFunc(func([]byte) {})); !errors.Is(err, ErrStale) {
				t.Fatalf("Update(stale %#x): %v", uint64(o), err)
			}
		}
		if err := tab.Get(id, b); err != nil || b[0] != byte('0'+i) {
			t.Fatalf("Get = %q, %v", b, err)
		}
		if err := tab.Delete(id); err != nil {
			t.Fatal(err)
		}
		old = append(old, id)
	}
}

func TestGenerationWrap(t *testing.T) {
	tab := mustCreate(t, 4, 0)
	id, err := tab.Insert(Key{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tab.Delete(id)
	tab.m.slot(id.Slot()).Gen = ^uint32(0)
	tab.cursor = id.Slot()
	id2, err := tab.Insert(Key{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id2.Slot() != id.Slot() || id2.Gen() != 1 {
		t.Fatalf("after wrap: %#x", uint64(id2))
	}
}

// TestModel runs random operations against a Go map model, with a small
// key space so that the table fills up, probes collide and tombstones and
// purges happen; it reopens the memfd now and then.
func TestModel(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			slots := []int{2, 3, 16, 64, 200, 1024}[seed]
			runModel(t, rng, slots, 20000)
		})
	}
}

func runModel(t *testing.T, rng *rand.Rand, slots, ops int) {
	const vsize = 12
	tab := mustCreate(t, slots, vsize)
	m := model{}
	byKey := map[Key]ID{}
	var stale []ID
	keySpace := uint64(slots + slots/4 + 2)
	randKey := func() Key { return Key{rng.Uint64N(keySpace) + 1, 7, rng.Uint64N(2)} }
	randLive := func() (ID, bool) {
		if len(m) == 0 {
			return 0, false
		}
		n := rng.IntN(len(m))
		for id := range m {
			if n == 0 {
				return id, true
			}
			n--
		}
		panic("unreachable")
	}
	b := make([]byte, vsize)
	for i := range ops {
		switch op := rng.IntN(100); {
		case op < 30: // keyed insert
			k := randKey()
			v := fmt.Sprintf("v%d", i)
			id, err := tab.Insert(k, []byte(v))
			switch old, exists := byKey[k]; {
			case exists:
				if !errors.Is(err, ErrExists) || id != old {
					t.Fatalf("op %d: Insert(existing %v) = %#x, %v; want %#x", i, k, uint64(id), err, uint64(old))
				}
			case len(m) >= tab.Cap():
				if !errors.Is(err, ErrFull) {
					t.Fatalf("op %d: Insert into full table: %v", i, err)
				}
			default:
				if err != nil {
					t.Fatalf("op %d: Insert(%v): %v (len %d)", i, k, err, len(m))
				}
				if _, dup := m[id]; dup {
					t.Fatalf("op %d: Insert returned live id %#x", i, uint64(id))
				}
				m[id] = entry{k, string(val(vsize, v))}
				byKey[k] = id
			}
		case op < 40: // keyless insert
			id, err := tab.Insert(Key{}, []byte("h"))
			if len(m) >= tab.Cap() {
				if !errors.Is(err, ErrFull) {
					t.Fatalf("op %d: keyless Insert into full table: %v", i, err)
				}
				break
			}
			if err != nil {
				t.Fatalf("op %d: keyless Insert: %v", i, err)
			}
			if _, dup := m[id]; dup {
				t.Fatalf("op %d: Insert returned live id %#x", i, uint64(id))
			}
			m[id] = entry{Key{}, string(val(vsize, "h"))}
		case op < 70: // delete
			id, ok := randLive()
			if !ok {
				break
			}
			if err := tab.Delete(id); err != nil {
				t.Fatalf("op %d: Delete(%#x): %v", i, uint64(id), err)
			}
			delete(byKey, m[id].k)
			delete(m, id)
			stale = append(stale, id)
		case op < 80: // update
			id, ok := randLive()
			if !ok {
				break
			}
			v := fmt.Sprintf("u%d", i)
			if err := tab.Update(id, UpdateFunc(func(b []byte) { clear(b); copy(b, v) })); err != nil {
				t.Fatalf("op %d: Update(%#x): %v", i, uint64(id), err)
			}
			e := m[id]
			e.v = string(val(vsize, v))
			m[id] = e
		case op < 85: // stale ids
			if len(stale) == 0 {
				break
			}
			id := stale[rng.IntN(len(stale))]
			if _, live := m[id]; live {
				t.Fatalf("op %d: stale id %#x reissued", i, uint64(id))
			}
			if err := tab.Get(id, b); !errors.Is(err, ErrStale) {
				t.Fatalf("op %d: Get(stale %#x): %v", i, uint64(id), err)
			}
			if err := tab.Delete(id); !errors.Is(err, ErrStale) {
				t.Fatalf("op %d: Delete(stale %#x): %v", i, uint64(id), err)
			}
		case op < 99: // lookups and gets
			k := randKey()
			id, ok := tab.Lookup(k)
			if want, exists := byKey[k]; ok != exists || id != want {
				t.Fatalf("op %d: Lookup(%v) = %#x, %v; want %#x, %v", i, k, uint64(id), ok, uint64(want), exists)
			}
			if id, ok := randLive(); ok {
				if err := tab.Get(id, b); err != nil || string(b) != m[id].v {
					t.Fatalf("op %d: Get(%#x) = %q, %v; want %q", i, uint64(id), b, err, m[id].v)
				}
			}
		default: // reopen
			fd := tab.FD()
			tab2 := openFD(t, fd)
			tab.Close()
			tab = tab2
		}
		if tab.Len() != len(m) {
			t.Fatalf("op %d: Len %d, model %d", i, tab.Len(), len(m))
		}
		if i%500 == 0 || i == ops-1 {
			if got := readModel(t, tab); got.String() != m.String() {
				t.Fatalf("op %d: table\n%v\nmodel\n%v", i, got, m)
			}
		}
	}
}

// TestPurge fills a table, deletes most of it in an order that leaves
// tombstones, and checks that tombstones are bounded and the table works.
func TestPurge(t *testing.T) {
	const slots = 1000
	tab := mustCreate(t, slots, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	live := map[Key]ID{}
	for round := range 50 {
		for len(live) < tab.Cap() {
			k := Key{rng.Uint64(), uint64(round)}
			id, err := tab.Insert(k, nil)
			if err != nil {
				t.Fatalf("round %d: Insert with %d live: %v", round, len(live), err)
			}
			live[k] = id
		}
		n := 0
		for k, id := range live {
			if n++; n > tab.Cap()*9/10 {
				break
			}
			if err := tab.Delete(id); err != nil {
				t.Fatal(err)
			}
			delete(live, k)
		}
		checkInvariants(t, tab)
		if tab.tombs >= tab.purgeAt {
			t.Fatalf("round %d: %d tombstones, purge due at %d", round, tab.tombs, tab.purgeAt)
		}
		// After a purge, every tombstone left is on some entry's probe path.
		tab.mu.Lock()
		tab.purgeLocked()
		for s := range tab.n {
			if tab.m.slot(s).State != stateTomb {
				continue
			}
			needed := false
			for q := range tab.n {
				sh := tab.m.slot(q)
				if sh.State != stateUsed {
					continue
				}
				for p := tab.home(sh.Key); p != q; p = tab.next(p) {
					needed = needed || p == s
				}
			}
			if !needed {
				t.Fatalf("round %d: purge kept unneeded tombstone %d", round, s)
			}
		}
		tab.mu.Unlock()
		checkInvariants(t, tab)
	}
	for k, id := range live {
		if got, ok := tab.Lookup(k); !ok || got != id {
			t.Fatalf("Lookup(%v) = %#x, %v", k, uint64(got), ok)
		}
	}
}

// TestPurgeNoFree forces a ring with no free slot at all (only used and
// tombstones) and checks that Insert purges and lookups still work.
func TestPurgeNoFree(t *testing.T) {
	tab := mustCreate(t, 20, 0)
	var ids []ID
	for i := range tab.Cap() {
		id, err := tab.Insert(Key{uint64(i) + 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// Turn every free slot into a tombstone behind the table's back.
	tab.mu.Lock()
	for s := range tab.n {
		if tab.m.slot(s).State == stateFree {
			tab.m.slot(s).State = stateTomb
			tab.tombs++
		}
	}
	tab.purgeAt = 1 << 60
	tab.mu.Unlock()
	if _, ok := tab.Lookup(Key{999}); ok {
		t.Fatal("found absent key")
	}
	if err := tab.Delete(ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Insert(Key{1000}, nil); err != nil {
		t.Fatal(err)
	}
	free := 0
	for s := range tab.n {
		if tab.m.slot(s).State == stateFree {
			free++
		}
	}
	if free == 0 {
		t.Fatal("purge freed nothing")
	}
	readModel(t, tab)
	for i, id := range ids[1:] {
		if got, ok := tab.Lookup(Key{uint64(i) + 2}); !ok || got != id {
			t.Fatalf("Lookup %d = %#x, %v", i+2, uint64(got), ok)
		}
	}
}

func TestConcurrent(t *testing.T) {
	tab := mustCreate(t, 1<<14, 16)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			b := make([]byte, 16)
			for i := range 2000 {
				k := Key{uint64(g) + 1, uint64(i) + 1}
				id, err := tab.Insert(k, []byte(fmt.Sprint(g, i)))
				if err != nil {
					errs <- err
					return
				}
				if got, ok := tab.Lookup(k); !ok || got != id {
					errs <- fmt.Errorf("lookup %v", k)
					return
				}
				if err := tab.Update(id, UpdateFunc(func(v []byte) { v[15] = byte(g) })); err != nil {
					errs <- err
					return
				}
				if err := tab.Get(id, b); err != nil || b[15] != byte(g) || !strings.HasPrefix(string(b), fmt.Sprint(g, i)) {
					errs <- fmt.Errorf("get %v: %q %v", k, b, err)
					return
				}
				if i%2 == 0 {
					if err := tab.Delete(id); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if tab.Len() != 8*1000 {
		t.Fatalf("Len %d", tab.Len())
	}
	readModel(t, tab)
}

// shmemBlocks is the memfd's allocated size in 512-byte blocks.
func shmemBlocks(t *testing.T, fd int) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

// TestRangeSparse: Range over a large, nearly empty table finds every entry
// (also after deletes and a reopen) without faulting in the memfd's holes.
func TestRangeSparse(t *testing.T) {
	tb, err := Create("range-sparse", 1<<20, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	want := map[ID]Key{}
	for i := range 200 {
		k := Key{uint64(i) + 1, 7, 9}
		id, err := tb.Insert(k, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		want[id] = k
	}
	for i := range 20 { // handles: no key, any free slot
		id, err := tb.Insert(Key{}, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		want[id] = Key{}
	}
	n := 0
	for id := range want {
		if n%3 == 0 {
			if err := tb.Delete(id); err != nil {
				t.Fatal(err)
			}
			delete(want, id)
		}
		n++
	}
	check := func(tb *Table) {
		t.Helper()
		before := shmemBlocks(t, tb.FD())
		got := map[ID]Key{}
		tb.Range(func(id ID, k Key, val []byte) bool {
			got[id] = k
			return true
		})
		if len(got) != len(want) {
			t.Errorf("Range saw %d entries, want %d", len(got), len(want))
		}
		for id, k := range want {
			if g, ok := got[id]; !ok || g != k {
				t.Errorf("Range missed %v (%v)", id, k)
			}
		}
		if after := shmemBlocks(t, tb.FD()); after != before {
			t.Errorf("Range faulted in %d KiB of the sparse memfd", (after-before)/2)
		}
		// Early stop.
		calls := 0
		tb.Range(func(ID, Key, []byte) bool { calls++; return calls < 3 })
		if calls != 3 {
			t.Errorf("Range went on after false: %d calls", calls)
		}
	}
	check(tb)
	tb2, err := Open(tb.FD())
	if err != nil {
		t.Fatal(err)
	}
	check(tb2)
	tb2.Close()
}
