package passthrough

// slotTable maps maptable slot indexes to in-memory objects (inodes,
// handles): a two-level page table, so that memory and the cost of an
// install follow the slots in use, not the highest slot index. (Slots are
// hash positions spread over the whole table: a flat slice grown to the
// first slot a resumed worker loads cost ~1M pointers, 8 MiB zeroed on the
// queue thread, for its first request.)
//
// Not synchronised: callers hold the owning lock (FS.imu, FS.hmu), for
// reading around get and for writing around set and clear.
type slotTable[T any] struct {
	pages []*[slotPage]*T
	n     int // non-nil entries
}

const (
	slotShift = 9 // 512 pointers: one 4 KiB page per slotPage slots
	slotPage  = 1 << slotShift
)

// init sizes the directory for slots slots (a hint: set grows it), so
// that installs allocate at most one page.
func (t *slotTable[T]) init(slots int) {
	t.pages = make([]*[slotPage]*T, (slots+slotPage-1)/slotPage)
	t.n = 0
}

// get returns the object in slot, or nil.
func (t *slotTable[T]) get(slot uint32) *T {
	i := int(slot >> slotShift)
	if i >= len(t.pages) {
		return nil
	}
	p := t.pages[i]
	if p == nil {
		return nil
	}
	return p[slot&(slotPage-1)]
}

// set puts v in slot (allocating its page).
func (t *slotTable[T]) set(slot uint32, v *T) {
	i := int(slot >> slotShift)
	if i >= len(t.pages) {
		// The directory: 8 bytes per 512 slots (16 KiB for 1<<30 slots).
		t.pages = append(t.pages, make([]*[slotPage]*T, i+1-len(t.pages))...)
	}
	p := t.pages[i]
	if p == nil {
		p = new([slotPage]*T)
		t.pages[i] = p
	}
	e := &p[slot&(slotPage-1)]
	if *e == nil && v != nil {
		t.n++
	} else if *e != nil && v == nil {
		t.n--
	}
	*e = v
}

// clear empties slot.
func (t *slotTable[T]) clear(slot uint32) { t.set(slot, nil) }

// len returns the number of occupied slots.
func (t *slotTable[T]) len() int { return t.n }

// each calls fn for every occupied slot, in slot order; fn may clear the
// slot it is given.
func (t *slotTable[T]) each(fn func(slot uint32, v *T)) {
	for i, p := range t.pages {
		if p == nil {
			continue
		}
		for j, v := range p {
			if v != nil {
				fn(uint32(i<<slotShift|j), v)
			}
		}
	}
}

// reset empties the table and frees its pages (the directory stays).
func (t *slotTable[T]) reset() {
	clear(t.pages)
	t.n = 0
}
