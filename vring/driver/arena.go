package driver

import (
	"errors"
	"fmt"
	"sync"
)

// ErrNoSpace means an Arena has no free extent large enough.
var ErrNoSpace = errors.New("driver: arena out of space")

type extent struct{ start, end uint64 } // [start, end)

// Arena allocates buffer space in a range of guest RAM: first fit over a
// sorted free list, coalescing on Free. Safe for concurrent use.
type Arena struct {
	mu    sync.Mutex
	align uint64
	free  []extent          // sorted, disjoint, non-adjacent
	used  map[uint64]uint64 // start -> rounded size
	avail uint64
}

// NewArena manages [base, base+size). Allocations are aligned to align (a power
// of two, at least 1); base is rounded up and the end down to it.
func NewArena(base, size, align uint64) (*Arena, error) {
	if align == 0 || align&(align-1) != 0 {
		return nil, fmt.Errorf("driver: arena alignment %d not a power of two", align)
	}
	end := base + size
	if end < base {
		return nil, fmt.Errorf("driver: arena %#x+%#x overflows", base, size)
	}
	start := (base + align - 1) &^ (align - 1)
	end &^= align - 1
	if start < base || start >= end {
		return nil, fmt.Errorf("driver: arena %#x+%#x empty after alignment", base, size)
	}
	return &Arena{align: align, free: []extent{{start, end}}, used: map[uint64]uint64{}, avail: end - start}, nil
}

// Alloc returns the GPA of n (> 0) free bytes.
func (a *Arena) Alloc(n uint64) (uint64, error) {
	if n == 0 {
		return 0, fmt.Errorf("driver: arena alloc of 0 bytes")
	}
	sz := (n + a.align - 1) &^ (a.align - 1)
	if sz < n {
		return 0, ErrNoSpace
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, e := range a.free {
		if e.end-e.start < sz {
			continue
		}
		gpa := e.start
		if e.end-e.start == sz {
			a.free = append(a.free[:i], a.free[i+1:]...)
		} else {
			a.free[i].start += sz
		}
		a.used[gpa] = sz
		a.avail -= sz
		return gpa, nil
	}
	return 0, ErrNoSpace
}

// Free returns an allocation made by Alloc.
func (a *Arena) Free(gpa uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	sz, ok := a.used[gpa]
	if !ok {
		return fmt.Errorf("driver: arena free of %#x, which is not allocated", gpa)
	}
	delete(a.used, gpa)
	a.avail += sz
	e := extent{gpa, gpa + sz}
	i := 0
	for i < len(a.free) && a.free[i].start < e.start {
		i++
	}
	a.free = append(a.free, extent{})
	copy(a.free[i+1:], a.free[i:])
	a.free[i] = e
	if i+1 < len(a.free) && a.free[i].end == a.free[i+1].start {
		a.free[i].end = a.free[i+1].end
		a.free = append(a.free[:i+1], a.free[i+2:]...)
	}
	if i > 0 && a.free[i-1].end == a.free[i].start {
		a.free[i-1].end = a.free[i].end
		a.free = append(a.free[:i], a.free[i+1:]...)
	}
	return nil
}

// Available returns the number of free bytes (possibly fragmented).
func (a *Arena) Available() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.avail
}
