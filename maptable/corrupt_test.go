package maptable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// goodSnapshot returns a small table with entries; crashedSnapshot the same
// table with an Update stopped half-way (intent recorded, slot odd).
func goodSnapshot(t testing.TB) (good, crashed []byte) {
	tab, err := Create("corrupt", 8, 8)
	if err != nil {
		t.Fatal(err)
	}
	var ids []ID
	for i := range 5 {
		k := Key{}
		if i%2 == 0 {
			k = Key{uint64(i) + 1, 2, 3}
		}
		id, err := tab.Insert(k, []byte(fmt.Sprint("v", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	tab.Delete(ids[1])
	good = snapshot(t, tab)
	hook, _ := crashAt(5) // after the slot went odd and the value was written
	tab.hook = hook
	if !runCrashing(t, func() { tab.Update(ids[2], UpdateFunc(func(v []byte) { copy(v, "XXXXXXXX") })) }) {
		t.Fatal("update did not crash")
	}
	crashed = snapshot(t, tab)
	abandon(tab)
	if binary.NativeEndian.Uint32(crashed[offIntentOp:]) != opUpdate {
		t.Fatal("crashed snapshot has no intent")
	}
	return good, crashed
}

// tryOpen opens a memfd holding b and, if that works, exercises the table;
// it returns Open's error. It must never panic.
func tryOpen(t testing.TB, b []byte) error {
	fd := newMemfdTB(t, b)
	defer unix.Close(fd)
	tab, err := Open(fd)
	if err != nil {
		return err
	}
	defer tab.Close()
	exercise(tab)
	return nil
}

// exercise runs every operation once on a table of unknown content.
func exercise(tab *Table) {
	val := make([]byte, tab.ValueSize())
	var ids []ID
	tab.Range(func(id ID, k Key, v []byte) bool {
		ids = append(ids, id)
		tab.home(k) // exercise the hash on stored keys
		return true
	})
	_ = tab.Len()
	tab.Lookup(Key{1, 2, 3})
	if id, err := tab.Insert(Key{7, 7, 7}, []byte("x")); err == nil {
		ids = append(ids, id)
	}
	if id, err := tab.Insert(Key{}, nil); err == nil {
		ids = append(ids, id)
	}
	for _, id := range ids {
		tab.Get(id, val)
		tab.Update(id, UpdateFunc(func(v []byte) { clear(v) }))
		tab.Delete(id)
	}
}

func newMemfdTB(t testing.TB, b []byte) int {
	fd, err := unix.MemfdCreate("maptable-corrupt", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 {
		if _, err := unix.Pwrite(fd, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func TestOpenCorruptHeader(t *testing.T) {
	good, _ := goodSnapshot(t)
	if err := tryOpen(t, good); err != nil {
		t.Fatal(err)
	}
	// Every bit of the immutable header and its reserved tail is checked.
	for off := range offCount {
		for bit := range 8 {
			b := append([]byte(nil), good...)
			b[off] ^= 1 << bit
			err := tryOpen(t, b)
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("flip byte %d bit %d: Open error %v", off, bit, err)
			}
		}
	}
	// An impossible count.
	b := append([]byte(nil), good...)
	binary.NativeEndian.PutUint64(b[offCount:], 8)
	if err := tryOpen(t, b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("count 8 of 8 slots: %v", err)
	}
	// A tombstone hint beyond reason is clamped, not trusted.
	b = append([]byte(nil), good...)
	binary.NativeEndian.PutUint64(b[offTombs:], ^uint64(0))
	if err := tryOpen(t, b); err != nil {
		t.Fatalf("huge tombstone hint: %v", err)
	}
	// Size mismatches.
	for _, b := range [][]byte{good[:len(good)-8], append(good, make([]byte, 4096)...), good[:100], nil} {
		if err := tryOpen(t, b); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("memfd of %d bytes: %v", len(b), err)
		}
	}
	// Random bytes anywhere in the header page: an error or a working table.
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		b := append([]byte(nil), good...)
		for range 1 + rng.IntN(8) {
			b[rng.IntN(pageSize)] = byte(rng.Uint32())
		}
		tryOpen(t, b)
	}
}

func TestOpenCorruptIntent(t *testing.T) {
	_, crashed := goodSnapshot(t)
	if err := tryOpen(t, crashed); err != nil {
		t.Fatal(err)
	}
	rsz := int((slotHdrLen + 8 + 7) &^ 7)
	for off := offIntent; off < offUndo+rsz; off++ {
		if off >= offIntentCheck+8 && off < offUndo {
			continue // reserved, not covered
		}
		for bit := range 8 {
			b := append([]byte(nil), crashed...)
			b[off] ^= 1 << bit
			err := tryOpen(t, b)
			if binary.NativeEndian.Uint32(b[offIntentOp:]) == opNone {
				continue // the flip erased the intent: a valid (if wrong) table
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip intent byte %d bit %d: Open error %v", off, bit, err)
			}
		}
	}
	// Valid checksums over inconsistent content: every field combination the
	// writer cannot produce is refused.
	l, _ := computeLayout(8, 8)
	slotOf := func(b []byte) int { return int(binary.NativeEndian.Uint32(b[offIntentSlot:])) }
	reseal := func(b []byte) {
		binary.NativeEndian.PutUint64(b[offIntentCheck:], intentCheck(
			binary.NativeEndian.Uint32(b[offIntentOp:]), binary.NativeEndian.Uint32(b[offIntentSlot:]),
			binary.NativeEndian.Uint64(b[offIntentOldCount:]), b[offUndo:offUndo+rsz]))
	}
	cases := map[string]func(b []byte){
		"op 4":         func(b []byte) { binary.NativeEndian.PutUint32(b[offIntentOp:], 4) },
		"slot 8":       func(b []byte) { binary.NativeEndian.PutUint32(b[offIntentSlot:], 8) },
		"slot huge":    func(b []byte) { binary.NativeEndian.PutUint32(b[offIntentSlot:], ^uint32(0)) },
		"old count 9":  func(b []byte) { binary.NativeEndian.PutUint64(b[offIntentOldCount:], 9) },
		"old count 0":  func(b []byte) { binary.NativeEndian.PutUint64(b[offIntentOldCount:], 0) },
		"undo odd seq": func(b []byte) { b[offUndo] |= 1 },
		"undo free":    func(b []byte) { binary.NativeEndian.PutUint32(b[offUndo+8:], stateFree) },
		"undo gen":     func(b []byte) { b[offUndo+4]++ },
		"undo key":     func(b []byte) { b[offUndo+16]++ },
		"slot seq far": func(b []byte) {
			b[int(l.headerSize)+slotOf(b)*rsz] += 4
		},
		"as insert": func(b []byte) { binary.NativeEndian.PutUint32(b[offIntentOp:], opInsert) },
		"as delete, count": func(b []byte) {
			binary.NativeEndian.PutUint32(b[offIntentOp:], opDelete)
			binary.NativeEndian.PutUint64(b[offCount:], 1)
		},
	}
	for name, mutate := range cases {
		b := append([]byte(nil), crashed...)
		mutate(b)
		reseal(b)
		if err := tryOpen(t, b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Open error %v", name, err)
		}
	}
}

func TestOpenNotMemfd(t *testing.T) {
	good, _ := goodSnapshot(t)
	// A memfd that does not allow sealing.
	fd, err := unix.MemfdCreate("noseal", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Pwrite(fd, good, 0)
	if tab, err := Open(fd); err == nil {
		tab.Close()
		t.Fatal("Open of an unsealable memfd succeeded")
	}
	// A regular file.
	path := filepath.Join(t.TempDir(), "table")
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if tab, err := Open(int(f.Fd())); err == nil {
		tab.Close()
		t.Fatal("Open of a regular file succeeded")
	}
	if _, err := Open(-1); err == nil {
		t.Fatal("Open(-1) succeeded")
	}
}

// fixChecks recomputes the header and intent checksums of b in place (when b
// is long enough), so that the fuzzer gets past them to the layout and
// intent validation.
func fixChecks(b []byte) {
	if len(b) < offCount {
		return
	}
	binary.NativeEndian.PutUint64(b[offCheck:], headerCheck(b))
	rsz := int(binary.NativeEndian.Uint32(b[offRecordSize:]))
	if rsz%8 != 0 || offUndo+rsz > len(b) {
		return
	}
	binary.NativeEndian.PutUint64(b[offIntentCheck:], intentCheck(
		binary.NativeEndian.Uint32(b[offIntentOp:]), binary.NativeEndian.Uint32(b[offIntentSlot:]),
		binary.NativeEndian.Uint64(b[offIntentOldCount:]), b[offUndo:offUndo+rsz]))
}

// FuzzOpen feeds arbitrary memfd contents to Open, optionally with valid
// checksums, and exercises any table it accepts. It must never panic.
func FuzzOpen(f *testing.F) {
	good, crashed := goodSnapshot(f)
	f.Add(good, false)
	f.Add(crashed, false)
	f.Add(crashed, true)
	f.Add([]byte("VFSDMAPT"), true)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if len(data) > 1<<20 {
			return
		}
		b := append([]byte(nil), data...)
		if fix {
			fixChecks(b)
		}
		tryOpen(t, b)
	})
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzOpen when
// MAPTABLE_WRITE_SEEDS=1 (the committed files are what go test replays).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("MAPTABLE_WRITE_SEEDS") != "1" {
		t.Skip("set MAPTABLE_WRITE_SEEDS=1 to regenerate the seed corpus")
	}
	good, crashed := goodSnapshot(t)
	torn := append([]byte(nil), crashed...)
	binary.NativeEndian.PutUint32(torn[offIntentSlot:], 77)
	seeds := map[string]struct {
		b   []byte
		fix bool
	}{
		"good":            {good, false},
		"crashed-update":  {crashed, false},
		"bad-intent-slot": {torn, true},
		"short":           {good[:200], false},
		"header-only":     {good[:pageSize], true},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(%v)\n", s.b, s.fix)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
