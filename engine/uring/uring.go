package uring

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Constants from include/uapi/linux/io_uring.h.
const (
	setupRDisabled    = 1 << 6
	setupSubmitAll    = 1 << 7
	setupCoopTaskrun  = 1 << 8
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13

	featSingleMmap = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	enterGetEvents = 1 << 0

	registerRestrictions = 11
	registerEnableRings  = 12
	restrictionSQEOp     = 1

	opReadv = 1
)

// ErrUnavailable wraps the reasons a ring cannot be had here (no io_uring in
// the kernel, io_uring_disabled, a seccomp or LSM denial, too old a kernel
// for the flags): callers fall back to plain syscalls.
var ErrUnavailable = errors.New("io_uring unavailable")

// Ring is an io_uring instance that reads files into caller-owned buffers.
// Every method must be called by the thread that called New.
type Ring struct {
	fd      int
	maps    [][]byte // the mmapped rings and SQE array, for Close
	entries uint32

	sq sqRing
	cq cqRing

	queued   uint32 // SQEs written since the last enter
	inflight uint32 // submitted, completion not yet taken by Next
}

// New sets up a ring of entries submission slots (a power of two up to 4096)
// for reads only. It must run on the thread that will use the ring.
func New(entries int) (*Ring, error) {
	if entries < 1 || entries > 4096 || entries&(entries-1) != 0 {
		return nil, fmt.Errorf("uring: %d entries: want a power of two in 1..4096", entries)
	}
	var p params
	p.flags = setupRDisabled | setupSubmitAll | setupCoopTaskrun | setupSingleIssuer | setupDeferTaskrun
	fd, err := setup(uint32(entries), &p)
	if err == unix.EINVAL {
		// Kernels before 6.1 lack DEFER_TASKRUN (completions then run as
		// task work on any syscall, which is only slower).
		p = params{flags: setupRDisabled | setupSubmitAll}
		fd, err = setup(uint32(entries), &p)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: io_uring_setup: %w", ErrUnavailable, err)
	}
	r := &Ring{fd: fd, entries: p.sqEntries}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	// Only READV, with no SQE flags (fixed files, links, buffer selection
	// are all refused), from here on; then the ring may run.
	res := restriction{opcode: restrictionSQEOp, op: opReadv}
	if err := register(fd, registerRestrictions, &res, 1); err != nil {
		r.Close()
		return nil, fmt.Errorf("%w: register restrictions: %w", ErrUnavailable, err)
	}
	if err := register(fd, registerEnableRings, nil, 0); err != nil {
		r.Close()
		return nil, fmt.Errorf("%w: enable ring: %w", ErrUnavailable, err)
	}
	return r, nil
}

func (r *Ring) mapRings(p *params) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*cqeSize
	single := p.features&featSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	mp := func(off int64, size int) ([]byte, error) {
		b, err := unix.Mmap(r.fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("uring: mmap ring (offset %#x, %d bytes): %w", off, size, err)
		}
		r.maps = append(r.maps, b)
		return b, nil
	}
	sqMap, err := mp(offSQRing, sqSize)
	if err != nil {
		return err
	}
	cqMap := sqMap
	if !single {
		if cqMap, err = mp(offCQRing, cqSize); err != nil {
			return err
		}
	}
	sqeMap, err := mp(offSQEs, int(p.sqEntries)*sqeSize)
	if err != nil {
		return err
	}
	r.bind(p, sqMap, cqMap, sqeMap)
	return nil
}

// Entries is the number of reads one batch can hold.
func (r *Ring) Entries() int { return int(r.entries) }

// ReadV queues preadv(fd, iov, off) tagged with user, and reports false when
// the batch is full. iov and the memory it names must stay valid until the
// read's completion was taken with Next.
func (r *Ring) ReadV(fd int, iov []unix.Iovec, off int64, user uint64) bool {
	if r.queued+r.inflight >= r.entries || len(iov) == 0 {
		return false
	}
	r.putReadv(fd, iov, off, user)
	r.queued++
	return true
}

// Wait submits the queued reads and waits until every submitted read has
// completed; their results are then taken with Next. An error means the
// kernel refused the submission itself (not a read's failure, which is in
// its result): the reads it did not take were never started.
func (r *Ring) Wait() error {
	for r.queued > 0 || r.ready() < r.inflight {
		n, err := r.enter(r.queued, r.queued+r.inflight, enterGetEvents)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			r.settle()
			return fmt.Errorf("uring: io_uring_enter: %w", err)
		}
		if n == 0 && r.queued > 0 {
			r.settle()
			return errors.New("uring: io_uring_enter took none of the queued reads")
		}
		r.queued -= uint32(n)
		r.inflight += uint32(n)
	}
	return nil
}

// settle waits, as far as the kernel lets it, for the reads it took: after a
// failed Wait the caller must not reuse their buffers while one may still
// write them.
func (r *Ring) settle() {
	for r.ready() < r.inflight {
		if _, err := r.enter(0, r.inflight, enterGetEvents); err != nil && err != unix.EINTR {
			return
		}
	}
}

// Next takes one completion: the read's user tag and its result (bytes read,
// or -errno).
func (r *Ring) Next() (user uint64, res int32, ok bool) {
	user, res, ok = r.pop()
	if ok {
		r.inflight--
	}
	return user, res, ok
}

// Close unmaps the rings and closes the ring fd. Reads still in flight are
// cancelled by the kernel; callers Wait first.
func (r *Ring) Close() {
	for _, b := range r.maps {
		unix.Munmap(b)
	}
	r.maps = nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}
