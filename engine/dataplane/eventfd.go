package dataplane

import (
	"golang.org/x/sys/unix"
)

// one is the 8-byte little-endian value 1 written to eventfds. Only read.
var one = [8]byte{1}

// signal adds 1 to eventfd fd. EAGAIN (counter saturated) means the reader
// has a wake-up pending anyway.
func signal(fd int) {
	for {
		_, err := unix.Write(fd, one[:])
		if err != unix.EINTR {
			return
		}
	}
}

// drainEventfd resets a non-blocking eventfd's counter (buf is scratch).
func drainEventfd(fd int, buf []byte) {
	for {
		_, err := unix.Read(fd, buf)
		if err != unix.EINTR {
			return
		}
	}
}

func newEventfd() (int, error) {
	return unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
}
