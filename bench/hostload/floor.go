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
			ops[i] = floorListing(bigFD, c.Share.DirEntries)
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

// floorListing opens the directory, reads it with getdents64 and stats
// every entry relative to it, the host work behind a READDIRPLUS listing.
func floorListing(dirFD, want int) opFunc {
	buf := make([]byte, 32<<10)
	return func(stop func() bool) (int, int, error) {
		fd, err := unix.Openat(dirFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, 0, err
		}
		defer unix.Close(fd)
		names := 0
		var st unix.Stat_t
		for {
			if stop() {
				return 0, 0, errAborted
			}
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				return 0, names, err
			}
			if n == 0 {
				break
			}
			for b := buf[:n]; len(b) >= 19; {
				reclen := int(b[16]) | int(b[17])<<8
				if reclen < 19 || reclen > len(b) {
					return 0, names, fmt.Errorf("getdents64: bad record length %d", reclen)
				}
				name := b[19:reclen]
				for j, ch := range name {
					if ch == 0 {
						name = name[:j]
						break
					}
				}
				b = b[reclen:]
				if s := string(name); s != "." && s != ".." {
					if err := unix.Fstatat(fd, s, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
						return 0, names, err
					}
					names++
				}
			}
		}
		if names != want {
			return 0, names, fmt.Errorf("getdents64 listed %d entries, the directory has %d", names, want)
		}
		return 0, names, nil
	}
}
