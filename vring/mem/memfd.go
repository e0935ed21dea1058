package mem

import (
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// NewMemfd creates a memfd of size bytes (MFD_CLOEXEC), as a frontend or a test
// does to provide guest RAM. The caller owns the returned fd.
func NewMemfd(name string, size uint64) (int, error) {
	if size > math.MaxInt64 {
		return -1, fmt.Errorf("mem: memfd size %#x too large", size)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("mem: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mem: ftruncate memfd to %d: %w", size, err)
	}
	return fd, nil
}
