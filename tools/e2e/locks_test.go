package e2e

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/fuseclient"
)

const ownerA, ownerB = 0xa11ce, 0xb0b

// hostGetlk asks, from a host open file description of path, which lock
// would conflict with an l.Type lock on [start, start+len).
func hostGetlk(t testing.TB, path string, typ int16, start, length int64) unix.Flock_t {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	must(t, "host open", err)
	defer unix.Close(fd)
	l := unix.Flock_t{Type: typ, Whence: unix.SEEK_SET, Start: start, Len: length}
	must(t, "host F_OFD_GETLK", unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &l))
	return l
}

// hostLock takes an OFD lock from the host; the returned func drops it.
func hostLock(t testing.TB, path string, typ int16, start, length int64) func() {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	must(t, "host open", err)
	l := unix.Flock_t{Type: typ, Whence: unix.SEEK_SET, Start: start, Len: length}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &l); err != nil {
		unix.Close(fd)
		t.Fatalf("host F_OFD_SETLK: %v", err)
	}
	return func() { unix.Close(fd) }
}

func TestPosixLocks(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", make([]byte, 1000), unix.O_RDWR)
	wr := fuseclient.FileLock{Start: 0, End: 99, Type: unix.F_WRLCK, PID: 42}
	must(t, "SETLK A write [0,99]", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerA, wr, 0))
	if l := hostGetlk(t, e.Path("f"), unix.F_RDLCK, 50, 1); l.Type != unix.F_WRLCK || l.Start != 0 || l.Len != 100 {
		t.Fatalf("host sees %+v, want a write lock on [0,100)", l)
	}
	// Linux sends GETLK with pid 0 (fuse_getlk), SETLK with the caller's tgid.
	got, err := e.C.Getlk(e.Ctx, ent.NodeID, fh, ownerB, fuseclient.FileLock{Start: 50, End: 60, Type: unix.F_RDLCK}, 0)
	must(t, "GETLK B", err)
	if got.Type != unix.F_WRLCK || got.Start != 0 || got.End != 99 {
		t.Fatalf("GETLK B: %+v, want the write lock [0,99]", got)
	}
	got, err = e.C.Getlk(e.Ctx, ent.NodeID, fh, ownerB, fuseclient.FileLock{Start: 100, End: 200, Type: unix.F_WRLCK}, 0)
	must(t, "GETLK B free range", err)
	if got.Type != unix.F_UNLCK {
		t.Fatalf("GETLK on a free range: %+v", got)
	}
	wantErrno(t, "SETLK B read [0,10]", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerB, fuseclient.FileLock{Start: 0, End: 10, Type: unix.F_RDLCK, PID: 43}, 0), unix.EAGAIN)
	must(t, "SETLK A unlock", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerA, fuseclient.FileLock{Start: 0, End: fuseclient.OffsetMax, Type: unix.F_UNLCK}, 0))
	if l := hostGetlk(t, e.Path("f"), unix.F_WRLCK, 0, 0); l.Type != unix.F_UNLCK {
		t.Fatalf("host sees %+v after unlock", l)
	}
	drop := hostLock(t, e.Path("f"), unix.F_WRLCK, 200, 100)
	defer drop()
	wantErrno(t, "SETLK A over a host lock", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerA, fuseclient.FileLock{Start: 250, End: 260, Type: unix.F_WRLCK, PID: 42}, 0), unix.EAGAIN)
	got, err = e.C.Getlk(e.Ctx, ent.NodeID, fh, ownerA, fuseclient.FileLock{Start: 0, End: fuseclient.OffsetMax, Type: unix.F_WRLCK}, 0)
	must(t, "GETLK over a host lock", err)
	if got.Type != unix.F_WRLCK || got.Start != 200 || got.End != 299 {
		t.Fatalf("GETLK over a host lock: %+v", got)
	}
}

func TestSetlkw(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", make([]byte, 100), unix.O_RDWR)
	drop := hostLock(t, e.Path("f"), unix.F_WRLCK, 0, 10)
	done := make(chan error, 1)
	go func() {
		done <- e.C.Setlkw(e.Ctx, ent.NodeID, fh, ownerA, fuseclient.FileLock{Start: 0, End: 9, Type: unix.F_WRLCK, PID: 42}, 0, 0)
	}()
	select {
	case err := <-done:
		drop()
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			e.SkipForReference("blocking POSIX locks (SETLKW) not supported: " + err.Error())
		}
		t.Fatalf("SETLKW returned %v while the host holds the lock", err)
	case <-time.After(200 * time.Millisecond):
	}
	// Other requests go on meanwhile.
	if _, err := e.C.Getattr(e.Ctx, ent.NodeID, nil); err != nil {
		t.Fatalf("GETATTR while SETLKW waits: %v", err)
	}
	drop()
	select {
	case err := <-done:
		must(t, "SETLKW", err)
	case <-time.After(10 * time.Second):
		t.Fatal("SETLKW still blocked 10s after the host released the lock")
	}
	if l := hostGetlk(t, e.Path("f"), unix.F_RDLCK, 0, 1); l.Type != unix.F_WRLCK {
		t.Fatalf("host sees %+v after SETLKW, want a write lock", l)
	}
}

func TestFlock(t *testing.T) {
	e := Start(t, Options{})
	ent, fh := openFile(t, e, "f", nil, unix.O_RDWR)
	whole := fuseclient.FileLock{Start: 0, End: fuseclient.OffsetMax, Type: unix.F_WRLCK, PID: 42}
	must(t, "SETLK flock exclusive", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerA, whole, fuseclient.LkFlock))
	fd, err := unix.Open(e.Path("f"), unix.O_RDONLY, 0)
	must(t, "host open", err)
	defer unix.Close(fd)
	wantErrno(t, "host flock -n while the guest holds it", unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB), unix.EWOULDBLOCK)
	whole.Type = unix.F_UNLCK
	must(t, "SETLK flock unlock", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerA, whole, fuseclient.LkFlock))
	must(t, "host flock after unlock", unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB))
	whole.Type = unix.F_RDLCK
	wantErrno(t, "SETLK flock shared while the host holds it", e.C.Setlk(e.Ctx, ent.NodeID, fh, ownerA, whole, fuseclient.LkFlock), unix.EAGAIN)
	must(t, "host unlock", unix.Flock(fd, unix.LOCK_UN))
	err = e.C.Setlkw(e.Ctx, ent.NodeID, fh, ownerA, whole, fuseclient.LkFlock, 0)
	if errors.Is(err, unix.EOPNOTSUPP) {
		e.SkipForReference("SETLKW with FUSE_LK_FLOCK answers EOPNOTSUPP")
	}
	must(t, "SETLKW flock shared", err)
	wantErrno(t, "host flock -n exclusive against a shared guest lock", unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK)
}

func TestInterrupt(t *testing.T) {
	e := Start(t, Options{})
	// Linux's virtio_fs never sends FUSE_INTERRUPT; QEMU 7.2's virtiofsd
	// exits when it gets one.
	e.SkipForReference("exits on FUSE_INTERRUPT, which Linux's virtiofs never sends")
	// An interrupt for a request that is not outstanding: the backend may
	// answer it (EAGAIN) or just return the chain; it must go on serving.
	replied, err := e.C.Interrupt(e.Ctx, 1000002)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("INTERRUPT of an unknown request: %v", err)
	}
	t.Logf("INTERRUPT of an unknown request: replied %v err %v", replied, err)
	if _, err := e.C.Getattr(e.Ctx, root, nil); err != nil {
		t.Fatalf("GETATTR after INTERRUPT: %v", err)
	}
	// Interrupting a waiting SETLKW: it either ends with EINTR or goes on
	// waiting until the lock is free; either way it completes exactly once.
	ent, fh := openFile(t, e, "f", nil, unix.O_RDWR)
	drop := hostLock(t, e.Path("f"), unix.F_WRLCK, 0, 10)
	unique := e.C.NextUnique()
	done := make(chan error, 1)
	go func() {
		done <- e.C.Setlkw(e.Ctx, ent.NodeID, fh, ownerA, fuseclient.FileLock{Start: 0, End: 9, Type: unix.F_WRLCK, PID: 42}, 0, unique)
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := e.C.Interrupt(e.Ctx, unique); err != nil && !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("INTERRUPT of SETLKW: %v", err)
	}
	select {
	case err := <-done:
		drop()
		t.Logf("SETLKW after INTERRUPT: %v", err)
		if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			t.Fatalf("SETLKW after INTERRUPT: %v, want EINTR", err)
		}
	case <-time.After(500 * time.Millisecond):
		drop()
		select {
		case err := <-done:
			must(t, "SETLKW (interrupt ignored)", err)
			t.Log("backend ignored the INTERRUPT; SETLKW completed once the lock was free")
		case <-time.After(10 * time.Second):
			t.Fatal("SETLKW never completed")
		}
	}
}

func TestDestroy(t *testing.T) {
	e := Start(t, Options{})
	writeHost(t, e.Path("f"), nil, 0o644)
	lookup(t, e, root, "f")
	must(t, "DESTROY", e.C.Destroy(e.Ctx))
	// DESTROY ends the session: the backend drops every inode reference.
	n, err := e.Daemon.FDsTo(e.Path("f"))
	must(t, "count fds", err)
	if n != 0 {
		t.Fatalf("daemon still holds %d fds on a looked-up file after DESTROY", n)
	}
}
