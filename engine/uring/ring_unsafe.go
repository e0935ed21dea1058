package uring

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI structs (include/uapi/linux/io_uring.h).

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqOffsets
	cqOff                                                                  cqOffsets
}

type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	rwFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

type restriction struct {
	opcode uint16
	op     uint8
	resv   uint8
	resv2  [3]uint32
}

const (
	sqeSize = int(unsafe.Sizeof(sqe{}))
	cqeSize = int(unsafe.Sizeof(cqe{}))
)

// Compile-time checks of the ABI sizes.
var (
	_ [120 - unsafe.Sizeof(params{})]byte
	_ [unsafe.Sizeof(params{}) - 120]byte
	_ [64 - sqeSize]byte
	_ [sqeSize - 64]byte
	_ [16 - cqeSize]byte
	_ [cqeSize - 16]byte
	_ [16 - unsafe.Sizeof(restriction{})]byte
)

// sqRing and cqRing point into the shared mappings. The kernel writes the
// SQ head and the CQ tail; we write the SQ tail and the CQ head. Indices
// run freely and are masked on use.
type sqRing struct {
	head, tail *uint32
	mask       uint32
	sqes       []sqe
}

type cqRing struct {
	head, tail *uint32
	mask       uint32
	cqes       []cqe
}

func (r *Ring) bind(p *params, sqMap, cqMap, sqeMap []byte) {
	at := func(b []byte, off uint32) unsafe.Pointer { return unsafe.Pointer(&b[off]) }
	r.sq.head = (*uint32)(at(sqMap, p.sqOff.head))
	r.sq.tail = (*uint32)(at(sqMap, p.sqOff.tail))
	r.sq.mask = *(*uint32)(at(sqMap, p.sqOff.ringMask))
	r.sq.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&sqeMap[0])), p.sqEntries)
	// SQ slot i always names SQE i: the indirection array is set once.
	array := unsafe.Slice((*uint32)(at(sqMap, p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.cq.head = (*uint32)(at(cqMap, p.cqOff.head))
	r.cq.tail = (*uint32)(at(cqMap, p.cqOff.tail))
	r.cq.mask = *(*uint32)(at(cqMap, p.cqOff.ringMask))
	r.cq.cqes = unsafe.Slice((*cqe)(at(cqMap, p.cqOff.cqes)), p.cqEntries)
}

// putReadv writes one READV SQE and publishes it by moving the SQ tail.
func (r *Ring) putReadv(fd int, iov []unix.Iovec, off int64, user uint64) {
	tail := *r.sq.tail // only we write it
	r.sq.sqes[tail&r.sq.mask] = sqe{
		opcode:   opReadv,
		fd:       int32(fd),
		off:      uint64(off),
		addr:     uint64(uintptr(unsafe.Pointer(&iov[0]))),
		len:      uint32(len(iov)),
		userData: user,
	}
	atomic.StoreUint32(r.sq.tail, tail+1) // after the SQE: the kernel reads it once it sees the tail
}

// ready is the number of completions waiting in the CQ ring.
func (r *Ring) ready() uint32 {
	return atomic.LoadUint32(r.cq.tail) - *r.cq.head
}

func (r *Ring) pop() (uint64, int32, bool) {
	head := *r.cq.head // only we write it
	if head == atomic.LoadUint32(r.cq.tail) {
		return 0, 0, false
	}
	c := r.cq.cqes[head&r.cq.mask]
	atomic.StoreUint32(r.cq.head, head+1) // after reading the entry: the kernel may reuse it
	return c.userData, c.res, true
}

func setup(entries uint32, p *params) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

func register(fd int, op uintptr, arg *restriction, n uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(fd), op, uintptr(unsafe.Pointer(arg)), n, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func (r *Ring) enter(toSubmit, minComplete uint32, flags uintptr) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), flags, 0, 0)
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}
