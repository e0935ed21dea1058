package hostload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// FloorConfig is one run of a workload as plain syscalls in this process.
type FloorConfig struct {
	Workload Workload
	// Workers is the number of threads running the syscall loop (the
	// daemon runs' depth times queues).
	Workers          int
	Warmup, Duration time.Duration
	Share            *Share
	// ReaddirSize is the READDIRPLUS size the floor's getdents64 buffer
	// matches in entries (default 4096).
	ReaddirSize int
}

// RunFloor runs the workload's syscall loop on Workers locked OS threads and
// reports it like a daemon run, with the threads' own CPU time.
func RunFloor(ctx context.Context, c FloorConfig) (Result, error) {
	if c.Share == nil {
		return Result{}, errors.New("hostload: no share")
	}
	if err := c.Share.CleanNew(); err != nil {
		return Result{}, err
	}
	n := max(c.Workers, 1)
	if c.ReaddirSize <= 0 {
		c.ReaddirSize = 4096
	}
	ops := make([]opFunc, n)
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	open := func(name string, flags int) (int, error) {
		fd, err := unix.Open(filepath.Join(c.Share.Dir, name), flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", name, err)
		}
		fds = append(fds, fd)
		return fd, nil
	}
	rootFD, err := open(".", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return Result{}, err
	}
	bigFD, err := open(BigDirName, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return Result{}, err
	}
	newFD, err := open(NewDirName, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return Result{}, err
	}
	w := c.Workload
	for i := range ops {
		switch w.Name {
		case "getattr":
			fd, err := open(DataName, unix.O_PATH|unix.O_NOFOLLOW)
			if err != nil {
				return Result{}, err
			}
			ops[i] = func(func() bool) (int, int, error) {
				var st unix.Stat_t
				return 0, 0, unix.Fstatat(fd, "", &st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
			}
		case "lookup":
			ops[i] = func(func() bool) (int, int, error) {
				fd, err := unix.Openat(rootFD, DataName, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					return 0, 0, err
				}
				var st unix.Stat_t
				err = unix.Fstatat(fd, "", &st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
				unix.Close(fd)
				return 0, 0, err
			}
		case "create":
			id, seq := i, 0
			ops[i] = func(func() bool) (int, int, error) {
				seq++
				name := fmt.Sprintf("w%d-%d", id, seq)
				fd, err := unix.Openat(newFD, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
				if err != nil {
					return 0, 0, err
				}
				unix.Close(fd)
				return 0, 0, unix.Unlinkat(newFD, name, 0)
			}
		case "readdirplus":
			op, fd, err := floorReaddir(bigFD, c.ReaddirSize)
			if err != nil {
				return Result{}, fmt.Errorf("open %s: %w", BigDirName, err)
			}
			fds = append(fds, fd)
			ops[i] = op
		default:
			if !w.IsIO() {
				return Result{}, fmt.Errorf("hostload: workload %q has no floor", w.Name)
			}
			fd, err := open(DataName, unix.O_RDWR)
			if err != nil {
				return Result{}, err
			}
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			offs := newOffsets(c.Share.FileSize, w.Size, w.Seq, i, n, rng.Int64N)
			buf := make([]byte, w.Size)
			for j := range buf {
				buf[j] = byte(i + j)
			}
			io := unix.Pread
			if w.Write {
				io = unix.Pwrite
			}
			ops[i] = func(func() bool) (int, int, error) {
				got, err := io(fd, buf, offs.next())
				if err == nil && got != len(buf) {
					err = fmt.Errorf("short %s: %d of %d", w.Name, got, len(buf))
				}
				return got, 0, err
			}
		}
	}
	return drive(ctx, ops, driveConfig{Warmup: c.Warmup, Duration: c.Duration})
}

// floorReaddir is the host work behind one READDIRPLUS: getdents64 into
// a buffer that holds as many entries as a READDIRPLUS reply of
// readdirSize bytes does, then fstatat of each entry; at the end of the
// directory it seeks back to the start.
func floorReaddir(dirFD, readdirSize int) (opFunc, int, error) {
	fd, err := unix.Openat(dirFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, -1, err
	}
	name := len(EntryName(0))
	perReply := max(1, readdirSize/align8(direntplusHeader+name))
	buf := make([]byte, perReply*align8(19+name+1))
	var st unix.Stat_t
	op := func(func() bool) (int, int, error) {
		var n int
		for range 2 {
			var err error
			if n, err = unix.Getdents(fd, buf); err != nil {
				return 0, 0, err
			}
			if n > 0 {
				break
			}
			if _, err := unix.Seek(fd, 0, 0); err != nil {
				return 0, 0, err
			}
		}
		names := 0
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(b[16]) | int(b[17])<<8
			if reclen < 19 || reclen > len(b) {
				return 0, names, fmt.Errorf("getdents64: bad record length %d", reclen)
			}
			nm := b[19:reclen]
			for j, ch := range nm {
				if ch == 0 {
					nm = nm[:j]
					break
				}
			}
			b = b[reclen:]
			if s := string(nm); s != "." && s != ".." {
				if err := unix.Fstatat(fd, s, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					return 0, names, err
				}
				names++
			}
		}
		return 0, names, nil
	}
	return op, fd, nil
}

// direntplusHeader is sizeof(struct fuse_entry_out) + sizeof(struct
// fuse_dirent), before the name.
const direntplusHeader = 128 + 24

func align8(n int) int { return (n + 7) &^ 7 }
