package uring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func newRing(t *testing.T, entries int) *Ring {
	t.Helper()
	runtime.LockOSThread() // SINGLE_ISSUER: this goroutine's thread owns it
	t.Cleanup(runtime.UnlockOSThread)
	r, err := New(entries)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no io_uring here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func iov(b []byte) []unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return []unix.Iovec{v}
}

func TestReadBatch(t *testing.T) {
	r := newRing(t, 8)
	data := make([]byte, 1<<16)
	for i := range data {
		data[i] = byte(i * 7)
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())

	for round := 0; round < 3; round++ { // the ring is reused across batches
		bufs := make([][]byte, r.Entries())
		iovs := make([][]unix.Iovec, len(bufs))
		for i := range bufs {
			bufs[i] = make([]byte, 4096)
			a, b := bufs[i][:1000], bufs[i][1000:] // two segments per read
			iovs[i] = append(iov(a), iov(b)...)
			off := int64((i*5000 + round*333) % (len(data) - 4096))
			if !r.ReadV(fd, iovs[i], off, uint64(i)|uint64(off)<<32) {
				t.Fatalf("round %d: ReadV %d refused with %d queued", round, i, r.queued)
			}
		}
		if r.ReadV(fd, iovs[0], 0, 99) {
			t.Fatal("ReadV accepted more reads than the ring has entries")
		}
		if err := r.Wait(); err != nil {
			t.Fatal(err)
		}
		seen := 0
		for {
			user, res, ok := r.Next()
			if !ok {
				break
			}
			i, off := int(user&0xffffffff), int64(user>>32)
			if res != 4096 {
				t.Fatalf("read %d: result %d", i, res)
			}
			if !bytes.Equal(bufs[i], data[off:off+4096]) {
				t.Fatalf("read %d at %d: wrong bytes", i, off)
			}
			seen++
		}
		if seen != len(bufs) {
			t.Fatalf("round %d: %d completions, want %d", round, seen, len(bufs))
		}
	}

	// Failures come back as results: a bad fd, and a short read at EOF.
	buf := make([]byte, 4096)
	r.ReadV(-1, iov(buf), 0, 1)
	r.ReadV(fd, iov(buf), int64(len(data)-100), 2)
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]int32{}
	for {
		user, res, ok := r.Next()
		if !ok {
			break
		}
		got[user] = res
	}
	if got[1] != -int32(unix.EBADF) || got[2] != 100 {
		t.Fatalf("results %v: want bad fd -EBADF, short read 100", got)
	}
}

// TestRestricted checks that the ring refuses anything but READV: an SQE
// written with another opcode (here WRITEV, which would write the file)
// fails with EACCES and the file is unchanged.
func TestRestricted(t *testing.T) {
	r := newRing(t, 4)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	evil := []byte("evil")
	v := iov(evil)
	tail := *r.sq.tail
	r.sq.sqes[tail&r.sq.mask] = sqe{opcode: 2 /* IORING_OP_WRITEV */, fd: int32(f.Fd()),
		addr: uint64(uintptr(unsafe.Pointer(&v[0]))), len: 1, userData: 7}
	*r.sq.tail = tail + 1
	r.queued++
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	user, res, ok := r.Next()
	if !ok || user != 7 || res != -int32(unix.EACCES) {
		t.Fatalf("WRITEV on the restricted ring: user %d res %d ok %v, want EACCES", user, res, ok)
	}
	runtime.KeepAlive(v)
	if b, _ := os.ReadFile(p); string(b) != "keep" {
		t.Fatalf("file now %q", b)
	}
}
