package maptable

import (
	"fmt"
	"sync/atomic"
)

// recoverLocked validates the mutable header fields and the intent record
// and, if a writer died with an operation in progress, rolls that slot and
// the count back to their state before the operation. Everything is checked
// before anything is written, so a rejected table is left untouched. The
// rollback is idempotent: a crash during it leaves the intent in place and
// the next Open redoes it.
// Precondition: t.mu held, table freshly mapped.
func (t *Table) recoverLocked() error {
	in, err := t.checkIntentLocked()
	if err != nil {
		return err
	}
	if in.op != opNone {
		copy(t.m.record(in.slot), t.m.undo())
		t.step()
		atomic.StoreUint64(t.m.u64(offCount), in.oldCount)
		t.step()
		atomic.StoreUint32(t.m.u32(offIntentOp), opNone)
		t.step()
	}
	count := atomic.LoadUint64(t.m.u64(offCount))
	if count > uint64(t.maxUsed) {
		return fmt.Errorf("%w: count %d above the limit %d of %d slots", ErrCorrupt, count, t.maxUsed, t.n)
	}
	t.count.Store(int64(count))
	// The tombstone count is a hint (it only schedules purges); clamp it.
	t.tombs = min(atomic.LoadUint64(t.m.u64(offTombs)), uint64(t.n)-count)
	t.purgeAt = t.purgeStep()
	return nil
}

type intent struct {
	op, slot uint32
	oldCount uint64
}

// checkIntentLocked validates the intent record against the slot it names.
// An operation writes only these slot fields: Insert seq, gen, key, value,
// state; Update seq, value; Delete seq, state. So the slot's gen and key must
// still equal the undo copy's for Update and Delete, and seq may have moved
// by at most 2 (odd: torn) for all three.
// Precondition: t.mu held.
func (t *Table) checkIntentLocked() (intent, error) {
	in := intent{
		op:       atomic.LoadUint32(t.m.u32(offIntentOp)),
		slot:     *t.m.u32(offIntentSlot),
		oldCount: *t.m.u64(offIntentOldCount),
	}
	if in.op == opNone {
		return in, nil
	}
	bad := func(format string, args ...any) (intent, error) {
		return intent{}, fmt.Errorf("%w: intent (op %d, slot %d): %s", ErrCorrupt, in.op, in.slot,
			fmt.Sprintf(format, args...))
	}
	if in.op > opDelete {
		return bad("unknown op")
	}
	if in.slot >= t.n {
		return bad("slot out of range [0, %d)", t.n)
	}
	undo := t.m.undo()
	if c, want := *t.m.u64(offIntentCheck), intentCheck(in.op, in.slot, in.oldCount, undo); c != want {
		return bad("checksum %#x, computed %#x", c, want)
	}
	old := slotHdrOf(undo)
	cur := t.m.slot(in.slot)
	count := atomic.LoadUint64(t.m.u64(offCount))
	if old.Seq&1 != 0 {
		return bad("undo record has odd sequence %d", old.Seq)
	}
	if d := cur.Seq - old.Seq; d > 2 {
		return bad("slot sequence %d, undo record %d", cur.Seq, old.Seq)
	}
	max := uint64(t.maxUsed)
	switch in.op {
	case opInsert:
		if old.State != stateFree && old.State != stateTomb {
			return bad("insert over a slot in state %d", old.State)
		}
		if in.oldCount >= max {
			return bad("insert with old count %d, limit %d", in.oldCount, max)
		}
		if count != in.oldCount && count != in.oldCount+1 {
			return bad("count %d after insert from %d", count, in.oldCount)
		}
	case opUpdate, opDelete:
		if old.State != stateUsed {
			return bad("undo record in state %d", old.State)
		}
		if cur.Gen != old.Gen || cur.Key != old.Key {
			return bad("slot generation/key differ from the undo record")
		}
		if in.op == opUpdate {
			if cur.State != stateUsed || count != in.oldCount || in.oldCount > max || in.oldCount == 0 {
				return bad("slot state %d, count %d, old count %d", cur.State, count, in.oldCount)
			}
			break
		}
		if cur.State > stateTomb {
			return bad("slot state %d", cur.State)
		}
		if in.oldCount == 0 || in.oldCount > max {
			return bad("delete with old count %d", in.oldCount)
		}
		if count != in.oldCount && count != in.oldCount-1 {
			return bad("count %d after delete from %d", count, in.oldCount)
		}
	}
	return in, nil
}
