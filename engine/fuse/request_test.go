package fuse

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFileIOScratchReuse: ReadFile and WriteFile move data between a file
// and scattered guest buffers, and keep their iovec scratch whole, so that a
// steady stream of requests allocates nothing.
func TestFileIOScratchReuse(t *testing.T) {
	fd := tempFD(t, nil)
	src := []byte("0123456789abcdefghij")
	d := Scatter{src[:3], src[3:3], src[3:11], src[11:]}
	var iov []unix.Iovec
	n, iov, err := WriteFile(fd, d, 100, iov)
	if err != nil || n != len(src) {
		t.Fatalf("WriteFile %d %v", n, err)
	}
	out := make([]byte, OutHeaderSize+64)
	var rep Reply
	o := Scatter{out[:5], out[5:20], out[20:]}
	rep.Reset(o, 7)
	rep.ReadFile(fd, 100, 64, nil)
	if rep.Written() != uint32(OutHeaderSize+len(src)) || !bytes.Equal(out[OutHeaderSize:rep.Written()], src) {
		t.Fatalf("ReadFile wrote %d: %q", rep.Written(), out[OutHeaderSize:rep.Written()])
	}
	allocs := testing.AllocsPerRun(100, func() {
		_, iov, _ = WriteFile(fd, d, 100, iov)
		rep.Reset(o, 7)
		rep.ReadFile(fd, 100, 64, nil)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocs per write+read", allocs)
	}
	// O_APPEND-style write at the current offset.
	if _, _, err := WriteFile(fd, Scatter{[]byte("Z")}, -1, iov); err != nil {
		t.Fatal(err)
	}
}

// tempFD is an fd of a new temporary file holding data, closed at cleanup.
func tempFD(t *testing.T, data []byte) int {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "io")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	return int(f.Fd())
}

type takeAll struct{ got *Reply }

func (b *takeAll) Defer(r *Reply) bool { b.got = r; return true }

type countPin struct{ n int }

func (p *countPin) Unpin() { p.n++ }

// TestDeferredRead: a READ a Batcher takes is answered only by FinishRead,
// which continues a short read, writes the header into the reply's own copy
// of the chain's segment list (the queue reuses the chain's), and releases
// the pin once.
func TestDeferredRead(t *testing.T) {
	src := []byte("0123456789abcdefghij")
	fd := tempFD(t, src)
	out := make([]byte, OutHeaderSize+64)
	o := Scatter{out[:5], out[5:20], out[20:]}
	var b takeAll
	var pin countPin
	var rep Reply
	rep.SetBatcher(&b)
	rep.Reset(o, 9)
	rep.ReadFile(fd, 2, 64, &pin)
	if b.got != &rep || !rep.Deferred() || !rep.Done() || rep.Written() != 0 || pin.n != 0 {
		t.Fatalf("not deferred: batcher got %p, deferred %v, written %d, unpinned %d", b.got, rep.Deferred(), rep.Written(), pin.n)
	}
	gfd, goff, iov := rep.ReadTarget()
	if gfd != fd || goff != 2 || len(iov) != 2 {
		t.Fatalf("ReadTarget %d %d %d iovecs", gfd, goff, len(iov))
	}
	o[0], o[1], o[2] = nil, nil, nil // the queue's next pop rewrites the chain's list
	// The batcher read the first 5 bytes only; FinishRead reads the rest.
	copy(out[OutHeaderSize:], src[2:7])
	rep.FinishRead(5, 0)
	want := src[2:]
	if rep.Deferred() || rep.Written() != uint32(OutHeaderSize+len(want)) || pin.n != 1 ||
		!bytes.Equal(out[OutHeaderSize:rep.Written()], want) {
		t.Fatalf("FinishRead: written %d, unpinned %d, %q", rep.Written(), pin.n, out[OutHeaderSize:rep.Written()])
	}
	var h OutHeader
	Parse(out, &h)
	if h.Len != rep.Written() || h.Error != 0 || h.Unique != 9 {
		t.Fatalf("header %+v", h)
	}

	// A failed read answers its errno.
	rep.Reset(Scatter{out}, 10)
	rep.ReadFile(fd, 0, 8, &pin)
	rep.FinishRead(0, unix.EBADF)
	Parse(out, &h)
	if rep.Written() != OutHeaderSize || h.Error != -int32(unix.EBADF) || pin.n != 2 {
		t.Fatalf("failed read: written %d, header %+v, unpinned %d", rep.Written(), h, pin.n)
	}
}

// TestDecodeScattered: a request whose argument spans several segments
// (the header, the fixed argument and the name each in its own, split at
// odd places) decodes to the same bytes as a contiguous one, and decoding
// it again allocates nothing.
func TestDecodeScattered(t *testing.T) {
	arg := append(Bytes(&CreateIn{Flags: 2, Mode: 0o644}), "name\x00"...)
	msg := make([]byte, InHeaderSize+len(arg))
	h := InHeader{Len: uint32(len(msg)), Opcode: OpCreate, Unique: 9, NodeID: 1}
	copy(msg, Bytes(&h))
	copy(msg[InHeaderSize:], arg)
	in := Scatter{msg[:InHeaderSize-3], msg[InHeaderSize-3 : InHeaderSize+5], msg[InHeaderSize+5 : InHeaderSize+5], msg[InHeaderSize+5 : len(msg)-2], msg[len(msg)-2:]}
	var r Request
	if err := r.Decode(in); err != nil {
		t.Fatal(err)
	}
	if r.Opcode != OpCreate || r.Unique != 9 || !bytes.Equal(r.Arg, arg) {
		t.Fatalf("decoded %+v arg %q", r.InHeader, r.Arg)
	}
	if n := testing.AllocsPerRun(100, func() { r.Decode(in) }); n != 0 {
		t.Fatalf("Decode allocates %.1f times", n)
	}
	// CopyOutAt from every offset matches the flat bytes.
	for off := 0; off <= len(msg); off++ {
		got := make([]byte, len(msg))
		n := in.CopyOutAt(off, got)
		if n != len(msg)-off || !bytes.Equal(got[:n], msg[off:]) {
			t.Fatalf("CopyOutAt(%d) = %d %q", off, n, got[:n])
		}
	}
}
