package maptable

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// entry is one entry of the Go-map model of a table.
type entry struct {
	k Key
	v string
}

type model map[ID]entry

func (m model) String() string {
	ids := slices.Sorted(maps.Keys(m))
	var b bytes.Buffer
	for _, id := range ids {
		fmt.Fprintf(&b, "%#x:%v:%q ", uint64(id), m[id].k, m[id].v)
	}
	return b.String()
}

// readModel returns the table's contents through its public API and checks
// the structural invariants through its internals.
func readModel(tb testing.TB, t *Table) model {
	tb.Helper()
	m := model{}
	t.Range(func(id ID, k Key, val []byte) bool {
		m[id] = entry{k, string(val)}
		return true
	})
	if t.Len() != len(m) {
		tb.Fatalf("Len %d, Range found %d", t.Len(), len(m))
	}
	val := make([]byte, t.ValueSize())
	for id, e := range m {
		if err := t.Get(id, val); err != nil || string(val) != e.v {
			tb.Fatalf("Get(%#x) = %q, %v; want %q", uint64(id), val, err, e.v)
		}
		if e.k != (Key{}) {
			if got, ok := t.Lookup(e.k); !ok || got != id {
				tb.Fatalf("Lookup(%v) = %#x, %v; want %#x", e.k, uint64(got), ok, uint64(id))
			}
		}
	}
	checkInvariants(tb, t)
	return m
}

// checkInvariants checks what the package doc promises about slots: no odd
// sequence, no intent recorded, a matching count, and no free slot between
// any keyed entry's home and its slot; a tombstone count that is not too
// low (exact unless a crash happened since the last purge: exactTombs).
func checkInvariants(tb testing.TB, t *Table) {
	tb.Helper()
	t.mu.Lock()
	defer t.mu.Unlock()
	if op := atomic.LoadUint32(t.m.u32(offIntentOp)); op != opNone {
		tb.Fatalf("intent op %d left recorded", op)
	}
	used, tombs := 0, 0
	for s := range t.n {
		sh := t.m.slot(s)
		if sh.Seq&1 != 0 {
			tb.Fatalf("slot %d: odd sequence %d", s, sh.Seq)
		}
		switch sh.State {
		case stateTomb:
			tombs++
		case stateUsed:
			used++
			if sh.Gen == 0 {
				tb.Fatalf("slot %d: used with generation 0", s)
			}
			if sh.Key == (Key{}) {
				continue
			}
			for p := t.home(sh.Key); p != s; p = t.next(p) {
				if t.m.slot(p).State == stateFree {
					tb.Fatalf("slot %d (key %v): free slot %d on its probe path", s, sh.Key, p)
				}
			}
		case stateFree:
		default:
			tb.Fatalf("slot %d: state %d", s, sh.State)
		}
	}
	if c := *t.m.u64(offCount); c != uint64(used) || t.count.Load() != int64(used) {
		tb.Fatalf("count %d/%d, %d used slots", c, t.count.Load(), used)
	}
	if t.tombs < uint64(tombs) || exactTombs && t.tombs != uint64(tombs) {
		tb.Fatalf("tombstone count %d, %d tombstones", t.tombs, tombs)
	}
}

// snapshot returns the whole memfd content of t.
func snapshot(tb testing.TB, t *Table) []byte {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(t.fd, &st); err != nil {
		tb.Fatal(err)
	}
	b := make([]byte, st.Size)
	if n, err := unix.Pread(t.fd, b, 0); err != nil || n != len(b) {
		tb.Fatalf("pread: %d, %v", n, err)
	}
	return b
}

// memfdWith returns a new sealable memfd holding b; closed at test end.
func memfdWith(tb testing.TB, b []byte) int {
	tb.Helper()
	fd, err := unix.MemfdCreate("maptable-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(len(b))); err != nil {
		tb.Fatal(err)
	}
	if len(b) > 0 {
		if n, err := unix.Pwrite(fd, b, 0); err != nil || n != len(b) {
			tb.Fatalf("pwrite: %d, %v", n, err)
		}
	}
	return fd
}

// abandon drops a table the way a dying process does: the mapping and the
// descriptor go, nothing is written.
func abandon(t *Table) {
	t.m.unmap()
	unix.Close(t.fd)
	t.fd = -1
}

// exactTombs makes checkInvariants demand an exact tombstone count; tests
// that crash tables clear it.
var exactTombs = true

// crash is the panic value of a simulated SIGKILL.
type crash struct{}

// crashAt returns a hook that panics at its k-th call (k from 0), and a
// pointer to the number of calls made.
func crashAt(k int) (func(), *int) {
	n := new(int)
	return func() {
		if *n == k {
			panic(crash{})
		}
		*n++
	}, n
}

// runCrashing runs fn and reports whether it was stopped by a crash hook.
func runCrashing(tb testing.TB, fn func()) (crashed bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(crash); !ok {
				panic(r)
			}
			crashed = true
		}
	}()
	fn()
	return false
}

func mustCreate(tb testing.TB, slots, valueSize int) *Table {
	tb.Helper()
	t, err := Create("maptable-test", slots, valueSize)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.Close() })
	return t
}

func openFD(tb testing.TB, fd int) *Table {
	tb.Helper()
	t, err := Open(fd)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.Close() })
	return t
}

func TestMain(m *testing.M) {
	// Let the runtime open its poller descriptors before counting.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := countFDs()
	code := m.Run()
	if after := countFDs(); code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "leaked %d file descriptors\n", after-before)
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			l, _ := os.Readlink("/proc/self/fd/" + e.Name())
			fmt.Fprintln(os.Stderr, e.Name(), l)
		}
		code = 1
	}
	os.Exit(code)
}

func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}
