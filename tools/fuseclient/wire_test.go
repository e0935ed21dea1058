package fuseclient

import (
	"errors"
	"testing"
)

func dirent(ino, off uint64, typ uint32, name string) []byte {
	e := enc(nil).u64(ino).u64(off).u32(uint32(len(name))).u32(typ)
	e = append(e, name...)
	for len(e)%8 != 0 {
		e = append(e, 0)
	}
	return e
}

func TestParseDirents(t *testing.T) {
	b := append(dirent(5, 1, 4, "."), dirent(9, 2, 8, "a-longer-name")...)
	got, err := ParseDirents(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1] != (Dirent{Ino: 9, Off: 2, Type: 8, Name: "a-longer-name"}) {
		t.Fatalf("parsed %+v", got)
	}
	for _, bad := range [][]byte{b[:len(b)-20], dirent(1, 1, 1, "")[:DirentSize], b[:10]} {
		if _, err := ParseDirents(bad); !errors.Is(err, ErrProtocol) {
			t.Fatalf("bad dirents %v: err %v", bad, err)
		}
	}
}

func TestParseDirentsplus(t *testing.T) {
	entry := make(enc, 0, EntryOutSize)
	entry = entry.u64(77).u64(1).u64(0).u64(0).u32(0).u32(0)
	entry = entry.u64(12) // attr.ino
	entry = append(entry, make([]byte, EntryOutSize-len(entry))...)
	b := append(append([]byte(nil), entry...), dirent(12, 3, 8, "f")...)
	got, err := ParseDirentsplus(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Entry.NodeID != 77 || got[0].Entry.Attr.Ino != 12 || got[0].Name != "f" || got[0].Off != 3 {
		t.Fatalf("parsed %+v", got)
	}
	if _, err := ParseDirentsplus(b[:EntryOutSize+4]); !errors.Is(err, ErrProtocol) {
		t.Fatalf("truncated direntplus: %v", err)
	}
}

func TestEncodeSetattr(t *testing.T) {
	b := encodeSetattr(SetattrIn{Valid: FattrMode | FattrSize, Size: 7, Mode: 0o644, UID: 5, GID: 6, Mtime: 9})
	if len(b) != SetattrInSize {
		t.Fatalf("setattr_in is %d bytes", len(b))
	}
	// Offsets from struct fuse_setattr_in.
	if le.Uint32(b[0:]) != FattrMode|FattrSize || le.Uint64(b[16:]) != 7 || le.Uint64(b[40:]) != 9 ||
		le.Uint32(b[68:]) != 0o644 || le.Uint32(b[76:]) != 5 || le.Uint32(b[80:]) != 6 {
		t.Fatalf("setattr_in %v", b)
	}
}

func TestDecodeAttr(t *testing.T) {
	e := enc(nil)
	for i := 1; i <= 6; i++ {
		e = e.u64(uint64(i))
	}
	for i := 7; i <= 16; i++ {
		e = e.u32(uint32(i))
	}
	if len(e) != AttrSize {
		t.Fatalf("attr is %d bytes", len(e))
	}
	d := dec{b: e}
	a := d.attr()
	if d.err != nil || a.Ino != 1 || a.Ctime != 6 || a.Atimensec != 7 || a.Mode != 10 || a.Rdev != 14 || a.Flags != 16 {
		t.Fatalf("attr %+v err %v", a, d.err)
	}
	d = dec{b: e[:10]}
	d.attr()
	if !errors.Is(d.err, ErrProtocol) {
		t.Fatal("short attr decoded without error")
	}
}

func TestLinux61Flags(t *testing.T) {
	if Linux61Flags&InitInitExt == 0 || Linux61Flags>>32 != 1 || Linux61Flags&InitMapAlignment != 0 {
		t.Fatalf("Linux 6.1 INIT flags %#x", uint64(Linux61Flags))
	}
}
