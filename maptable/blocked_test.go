package maptable

import (
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBlockedHomes: in a new table, keys with consecutive Key[1] (inode
// numbers) of one device land in consecutive slots, so they share pages.
func TestBlockedHomes(t *testing.T) {
	tab, err := Create("blocked", 1<<16, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	if !tab.blocked {
		t.Fatal("a new table does not use blocked homes")
	}
	adjacent := 0
	var prev uint32
	for ino := uint64(4096); ino < 4096+640; ino++ {
		id, err := tab.Insert(Key{2049, ino, 7}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ino > 4096 && id.Slot() == prev+1 {
			adjacent++
		}
		prev = id.Slot()
	}
	// 640 keys in 10 blocks: all but the first of each block (and a rare
	// collision) follow their predecessor.
	if adjacent < 600 {
		t.Errorf("%d of 639 consecutive inodes in adjacent slots", adjacent)
	}
	for ino := uint64(4096); ino < 4096+640; ino++ {
		if _, ok := tab.Lookup(Key{2049, ino, 7}); !ok {
			t.Fatalf("inode %d not found", ino)
		}
	}
}

// TestOpenUnblockedTable: a table written by a build before flagBlocked
// (header flags 0, one hash per key) opens and is probed the old way.
func TestOpenUnblockedTable(t *testing.T) {
	tab, err := Create("old", 1<<12, 8)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.FcntlInt(uintptr(tab.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tab.Close()
	defer unix.Close(fd)
	// Rewrite the header as an old build did (flags 0), then fill it the
	// old way.
	var hdr [offCount]byte
	if _, err := unix.Pread(fd, hdr[:], 0); err != nil {
		t.Fatal(err)
	}
	binary.NativeEndian.PutUint32(hdr[offFlags:], 0)
	binary.NativeEndian.PutUint64(hdr[offCheck:], headerCheck(hdr[:]))
	if _, err := unix.Pwrite(fd, hdr[:], 0); err != nil {
		t.Fatal(err)
	}
	old, err := Open(fd)
	if err != nil {
		t.Fatal(err)
	}
	if old.blocked {
		t.Fatal("flags 0 opened as blocked")
	}
	ids := map[Key]ID{}
	for i := range uint64(500) {
		k := Key{1, 100 + i, 2}
		id, err := old.Insert(k, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[k] = id
	}
	old.Close()
	again, err := Open(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	for k, id := range ids {
		if got, ok := again.Lookup(k); !ok || got != id {
			t.Fatalf("key %v: %v %v, want %v", k, got, ok, id)
		}
	}
	// Unknown flags are refused.
	binary.NativeEndian.PutUint32(hdr[offFlags:], 1<<7)
	binary.NativeEndian.PutUint64(hdr[offCheck:], headerCheck(hdr[:]))
	if _, _, err := parseHeader(hdr[:], 0); err == nil || !strings.Contains(err.Error(), "unknown header flags") {
		t.Fatalf("unknown header flag: %v", err)
	}
}
