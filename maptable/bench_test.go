package maptable

import (
	"fmt"
	"testing"
)

const benchValue = 96 // a typical inode record

func benchKey(i int) Key { return Key{0x803, uint64(i)*2654435761 + 1, 42} }

// filled returns a table of slots slots holding n keyed entries, and their IDs.
func filled(b *testing.B, slots, n int) (*Table, []ID) {
	b.Helper()
	tab := mustCreate(b, slots, benchValue)
	ids := make([]ID, n)
	v := make([]byte, benchValue)
	for i := range n {
		id, err := tab.Insert(benchKey(i), v)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
	}
	return tab, ids
}

func BenchmarkInsert(b *testing.B) {
	const slots, fill = 1 << 18, 1 << 17 // refilled at 50% load
	tab := mustCreate(b, slots, benchValue)
	v := make([]byte, benchValue)
	var ids []ID
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n == fill {
			b.StopTimer()
			for _, id := range ids {
				tab.Delete(id)
			}
			ids, n = ids[:0], 0
			b.StartTimer()
		}
		id, err := tab.Insert(benchKey(n), v)
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
		n++
	}
}

func BenchmarkLookup(b *testing.B) {
	const n = 1 << 17
	tab, ids := filled(b, 1<<18, n)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if id, ok := tab.Lookup(benchKey(i)); !ok || id != ids[i] {
			b.Fatal("lookup")
		}
		i = (i + 1) & (n - 1)
	}
}

func BenchmarkLookupMiss(b *testing.B) {
	const n = 1 << 17
	tab, _ := filled(b, 1<<18, n)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := tab.Lookup(benchKey(n + i)); ok {
			b.Fatal("lookup")
		}
		i = (i + 1) & (n - 1)
	}
}

func BenchmarkGet(b *testing.B) {
	const n = 1 << 17
	tab, ids := filled(b, 1<<18, n)
	v := make([]byte, benchValue)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := tab.Get(ids[i], v); err != nil {
			b.Fatal(err)
		}
		i = (i + 1) & (n - 1)
	}
}

func BenchmarkGetParallel(b *testing.B) {
	const n = 1 << 17
	tab, ids := filled(b, 1<<18, n)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		v := make([]byte, benchValue)
		i := 0
		for pb.Next() {
			if err := tab.Get(ids[i], v); err != nil {
				b.Error(err)
				return
			}
			i = (i + 7) & (n - 1)
		}
	})
}

func BenchmarkUpdate(b *testing.B) {
	const n = 1 << 17
	tab, ids := filled(b, 1<<18, n)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := tab.Update(ids[i], UpdateFunc(func(v []byte) { v[0]++ })); err != nil {
			b.Fatal(err)
		}
		i = (i + 1) & (n - 1)
	}
}

func BenchmarkDeleteInsert(b *testing.B) {
	const n = 1 << 17
	tab, ids := filled(b, 1<<18, n)
	v := make([]byte, benchValue)
	b.ReportAllocs()
	i, next := 0, n
	for b.Loop() {
		if err := tab.Delete(ids[i]); err != nil {
			b.Fatal(err)
		}
		id, err := tab.Insert(benchKey(next), v)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
		i, next = (i+1)&(n-1), next+1
	}
}

// BenchmarkOpen shows that Open (with a torn Update to roll back on the first
// iteration) costs the same for 1 and 1,000,000 entries in a table of the same
// slot count; what remains is the kernel's mmap/munmap cost, which grows a
// little with the size of the mapping, not with what it holds.
func BenchmarkOpen(b *testing.B) {
	const big = 1_000_000 + 1_000_000/8 + 16
	for _, c := range []struct{ slots, n int }{{16, 1}, {big, 1}, {big, 1_000_000}} {
		b.Run(fmt.Sprintf("slots=%d/entries=%d", c.slots, c.n), func(b *testing.B) {
			tab, ids := filled(b, c.slots, c.n)
			hook, _ := crashAt(5)
			tab.hook = hook
			if !runCrashing(b, func() { tab.Update(ids[c.n/2], UpdateFunc(func(v []byte) { v[1] = 1 })) }) {
				b.Fatal("no crash")
			}
			tab.hook = nil
			fd := tab.FD()
			b.ReportAllocs()
			for b.Loop() {
				t2, err := Open(fd)
				if err != nil {
					b.Fatal(err)
				}
				if t2.Len() != c.n {
					b.Fatalf("Len %d", t2.Len())
				}
				t2.Close()
			}
		})
	}
}
