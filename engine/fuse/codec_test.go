package fuse

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestParse(t *testing.T) {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint64(b[0:], 7)
	binary.LittleEndian.PutUint32(b[8:], 3)
	binary.LittleEndian.PutUint32(b[12:], 0x1234)
	v := GetattrIn{GetattrFlags: 99}
	if _, ok := Parse(b[:15], &v); ok || v.GetattrFlags != 99 {
		t.Fatal("short Parse succeeded or touched v")
	}
	rest, ok := Parse(b, &v)
	if !ok || len(rest) != 4 || v.GetattrFlags != 7 || v.Fh != 0x1234<<32|3 {
		t.Fatalf("Parse: %+v %d", v, len(rest))
	}
	var in InitIn
	in.Unused[3] = 5
	if !ParsePrefix(b[:16], &in, InitInCompatSize) || in.Major != 7 || in.Flags2 != 0 || in.Unused[3] != 0 {
		t.Fatalf("ParsePrefix: %+v", in)
	}
	if ParsePrefix(b[:15], &in, InitInCompatSize) {
		t.Fatal("ParsePrefix below min")
	}
	if !bytes.Equal(Bytes(&v), b[:16]) {
		t.Fatal("Bytes is not the inverse of Parse")
	}
}

func TestCString(t *testing.T) {
	s, rest, ok := CString([]byte("ab\x00cd\x00"))
	if !ok || string(s) != "ab" || string(rest) != "cd\x00" || cap(s) < 3 || s[:3][2] != 0 {
		t.Fatalf("CString: %q %q %v", s, rest, ok)
	}
	if _, _, ok := CString([]byte("abc")); ok {
		t.Fatal("CString without NUL")
	}
	if s, _, ok := CString([]byte{0}); !ok || len(s) != 0 {
		t.Fatal("empty CString")
	}
	if _, _, ok := CString(nil); ok {
		t.Fatal("nil CString")
	}
}

func TestDirents(t *testing.T) {
	buf := bytes.Repeat([]byte{0xee}, 64)
	n := PutDirent(buf, 42, 1000, 8, []byte("hello"))
	if n != 32 || DirentLen(5) != 32 || DirentLen(8) != 32 || DirentLen(9) != 40 {
		t.Fatalf("dirent len %d", n)
	}
	var d Dirent
	Parse(buf, &d)
	if d.Ino != 42 || d.Off != 1000 || d.Namelen != 5 || d.Type != 8 || string(buf[24:29]) != "hello" ||
		!bytes.Equal(buf[29:32], []byte{0, 0, 0}) || buf[32] != 0xee {
		t.Fatalf("dirent %+v % x", d, buf[:33])
	}
	if PutDirent(buf[:31], 1, 1, 1, []byte("hello")) != 0 {
		t.Fatal("PutDirent overflowed")
	}
	e := EntryOut{NodeID: 5, Generation: 6, EntryValid: 7, AttrValid: 8, Attr: Attr{Ino: 9, Mode: 0o100644, Rdev: 3, Flags: 1}}
	buf = make([]byte, 256)
	n = PutDirentplus(buf, &e, 77, 8, []byte("x"))
	if n != DirentplusLen(1) || n != 160 {
		t.Fatalf("direntplus len %d", n)
	}
	if !bytes.Equal(buf[:EntryOutSize], Bytes(&e)) {
		t.Fatal("PutEntryOut differs from the wire struct bytes")
	}
	Parse(buf[EntryOutSize:], &d)
	if d.Ino != 9 || d.Off != 77 || d.Namelen != 1 {
		t.Fatalf("direntplus dirent %+v", d)
	}
	if PutDirentplus(buf[:159], &e, 1, 1, []byte("x")) != 0 {
		t.Fatal("PutDirentplus overflowed")
	}
	var a [AttrSize]byte
	PutAttr(a[:], &e.Attr)
	if !bytes.Equal(a[:], Bytes(&e.Attr)) {
		t.Fatal("PutAttr differs")
	}
}

func TestDevEncoding(t *testing.T) {
	// new_encode_dev(MKDEV(8, 1)) == 0x801; MKDEV(259, 70000).
	if EncodeDev(8, 1) != 0x801 {
		t.Fatalf("EncodeDev(8,1) = %#x", EncodeDev(8, 1))
	}
	for _, d := range [][2]uint32{{0, 0}, {1, 3}, {259, 70000}, {4095, 1<<20 - 1}} {
		if ma, mi := DecodeDev(EncodeDev(d[0], d[1])); ma != d[0] || mi != d[1] {
			t.Errorf("dev %v round trip: %d:%d", d, ma, mi)
		}
	}
}

func TestSession(t *testing.T) {
	s := Session{Flags: FlagAsyncRead | FlagSecurityCtx}
	if !s.Has(FlagSecurityCtx) || s.Has(FlagAsyncRead|FlagPosixLocks) {
		t.Fatal("Session.Has")
	}
}

// FuzzDecode feeds arbitrary bytes, split into two guest segments, to
// Request.Decode and then to every length-checked decoder: nothing panics,
// and what Decode accepts is consistent with its header.
func FuzzDecode(f *testing.F) {
	hdr := func(op uint32, n int) []byte {
		b := make([]byte, InHeaderSize+n)
		binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
		binary.LittleEndian.PutUint32(b[4:], op)
		return b
	}
	f.Add(hdr(OpLookup, 4), 10)
	f.Add(hdr(OpWrite, WriteInSize+100), 50)
	f.Add(hdr(OpWrite, 3), 0)
	f.Add(hdr(OpInit, InitInSize), 40)
	f.Add([]byte{1, 2, 3}, 1)
	f.Add(hdr(OpSetxattr, ArgLimit+10), 100)
	f.Fuzz(func(t *testing.T, data []byte, cut int) {
		if cut < 0 {
			cut = -cut
		}
		cut %= len(data) + 1
		var r Request
		err := r.Decode(Scatter{data[:cut], data[cut:]})
		if err != nil {
			return
		}
		if int(r.Len) > len(data) || len(r.Arg) > ArgLimit || InHeaderSize+len(r.Arg)+r.Data.Len() != int(r.Len) {
			t.Fatalf("Decode accepted inconsistent lengths: len %d arg %d data %d", r.Len, len(r.Arg), r.Data.Len())
		}
		a := r.Arg
		var (
			e   EntryOut
			s   SetattrIn
			in  InitIn
			lk  LkIn
			w   WriteIn
			sx  StatxOut
			cfr CopyFileRangeIn
		)
		Parse(a, &e)
		Parse(a, &s)
		ParsePrefix(a, &in, InitInCompatSize)
		Parse(a, &lk)
		Parse(a, &w)
		Parse(a, &sx)
		Parse(a, &cfr)
		for rest := a; len(rest) > 0; {
			_, next, ok := CString(rest)
			if !ok {
				break
			}
			rest = next
		}
		c := r.Clone()
		if c.InHeader != r.InHeader || !bytes.Equal(c.Arg, r.Arg) {
			t.Fatal("Clone differs")
		}
	})
}
