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
	f, err := os.CreateTemp(t.TempDir(), "io")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
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
	rep.ReadFile(fd, 100, 64)
	if rep.Written() != uint32(OutHeaderSize+len(src)) || !bytes.Equal(out[OutHeaderSize:rep.Written()], src) {
		t.Fatalf("ReadFile wrote %d: %q", rep.Written(), out[OutHeaderSize:rep.Written()])
	}
	allocs := testing.AllocsPerRun(100, func() {
		_, iov, _ = WriteFile(fd, d, 100, iov)
		rep.Reset(o, 7)
		rep.ReadFile(fd, 100, 64)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocs per write+read", allocs)
	}
	// O_APPEND-style write at the current offset.
	if _, _, err := WriteFile(fd, Scatter{[]byte("Z")}, -1, iov); err != nil {
		t.Fatal(err)
	}
}
