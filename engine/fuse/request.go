package fuse

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// Scatter is a list of byte segments, normally slices of guest RAM. The
// segments are owned by whoever built the list (the queue thread); a Scatter
// must not be retained past the request it belongs to.
type Scatter [][]byte

// Len returns the total number of bytes in s.
func (s Scatter) Len() int {
	n := 0
	for _, b := range s {
		n += len(b)
	}
	return n
}

// CopyOut copies up to len(dst) bytes from the start of s into dst and
// returns the number of bytes copied.
func (s Scatter) CopyOut(dst []byte) int { return s.CopyOutAt(0, dst) }

// CopyOutAt copies up to len(dst) bytes of s starting at byte offset off
// into dst and returns the number of bytes copied.
func (s Scatter) CopyOutAt(off int, dst []byte) int {
	n := 0
	for _, b := range s {
		if n == len(dst) {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// CopyIn copies src into s starting at byte offset off and returns the number
// of bytes copied (short when s is too small).
func (s Scatter) CopyIn(off int, src []byte) int {
	n := 0
	for _, b := range s {
		if len(src) == n {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(b[off:], src[n:])
		off = 0
	}
	return n
}

// Slice appends to dst the segments covering bytes [off, off+n) of s
// (clamped to s's length) and returns dst. No bytes are copied.
func (s Scatter) Slice(dst Scatter, off, n int) Scatter {
	for _, b := range s {
		if n <= 0 {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > n {
			b = b[:n]
		}
		dst = append(dst, b)
		n -= len(b)
	}
	return dst
}

// Iovecs fills iov (reusing its backing array) with one iovec per non-empty
// segment of s, for preadv/pwritev straight to and from guest RAM.
func (s Scatter) Iovecs(iov []unix.Iovec) []unix.Iovec {
	iov = iov[:0]
	for _, b := range s {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	return iov
}

// ArgLimit is the most request bytes (after the in header) copied out of guest
// RAM into Request.Arg. It covers the largest non-bulk request: SETXATTR with
// a 64 KiB value plus its name, RENAME2 with two NAME_MAX names. WRITE
// payloads never count against it: they stay in guest RAM (Request.Data).
const ArgLimit = 64*1024 + 4096

// Errors returned by Decode. The request is answered with EINVAL when its
// header could be read (ErrTruncated on the args, ErrTooBig), or dropped
// (pushed with zero length) when not even the header is there.
var (
	ErrShortHeader = errors.New("fuse: request shorter than its in header")
	ErrBadLength   = errors.New("fuse: in header length disagrees with the buffer")
	ErrTooBig      = errors.New("fuse: request arguments exceed ArgLimit")
)

// Request is one decoded FUSE request. Everything but Data is a copy, safe
// against the guest changing its buffers under us; Data aliases guest RAM and
// is only read once, by the syscall that consumes it.
//
// A Request is reused by its queue thread: handlers must not keep it (or Arg)
// after Handle returns, except for opcodes marked Blocking, which the
// dataplane hands over in a request of their own.
type Request struct {
	InHeader
	Arg   []byte  // op-specific bytes after the in header (copy)
	Data  Scatter // WRITE payload, still in guest RAM (nil for other opcodes)
	Queue int     // index of the virtqueue the request came from
	// Head is the descriptor head of the request's chain. Together with
	// Queue it names the request's slot in the request journal
	// (engine/journal): the dataplane sets it for every request, and a head
	// is owned by its request until the reply is pushed.
	Head uint16
	// Resumed marks a resubmission after a worker restart: the request was
	// in flight (popped, not answered) when the previous worker died, so its
	// effects may have happened. The filesystem consults the journal slot
	// (Queue, Head) and replays or resolves instead of executing twice.
	Resumed bool

	argBuf  []byte
	dataBuf Scatter
}

// Decode reads a request from the device-readable segments in, reusing r's
// scratch space (grown to at most ArgLimit).
func (r *Request) Decode(in Scatter) error {
	var hb [InHeaderSize]byte
	if in.CopyOut(hb[:]) < InHeaderSize {
		return ErrShortHeader
	}
	Parse(hb[:], &r.InHeader)
	total := in.Len()
	if r.Len < InHeaderSize || int(r.Len) > total {
		return ErrBadLength
	}
	body := int(r.Len) - InHeaderSize
	fixed := body
	r.Data = r.dataBuf[:0]
	if r.Opcode == OpWrite && body >= WriteInSize {
		fixed = WriteInSize
		r.Data = in.Slice(r.Data, InHeaderSize+WriteInSize, body-WriteInSize)
		r.dataBuf = r.Data[:0]
	}
	if fixed > ArgLimit {
		return ErrTooBig
	}
	if cap(r.argBuf) < fixed {
		r.argBuf = make([]byte, fixed, max(fixed, 4096))
	}
	r.Arg = r.argBuf[:fixed]
	in.CopyOutAt(InHeaderSize, r.Arg)
	return nil
}

// Clone returns a copy of r that owns its Arg, for handing a Blocking request
// to another goroutine. Data still aliases guest RAM.
func (r *Request) Clone() *Request {
	c := &Request{InHeader: r.InHeader, Queue: r.Queue, Head: r.Head, Resumed: r.Resumed}
	c.Arg = append([]byte(nil), r.Arg...)
	c.Data = append(Scatter(nil), r.Data...)
	return c
}

// Reply builds the answer to one request directly in the device-writable
// segments of its descriptor chain.
type Reply struct {
	out     Scatter
	unique  uint64
	written uint32 // bytes written to out; 0 with noReply
	noReply bool
	done    bool
	iov     []unix.Iovec
	tail    Scatter

	// A READ handed to batcher (ReadFile) keeps what FinishRead needs.
	batcher  Batcher
	deferred bool
	fd       int
	off      int64
	pin      Pin
	outOwn   Scatter // r.out's segments, owned: the chain's list is reused by the next pop
}

// Pin keeps a file descriptor open until Unpin.
type Pin interface{ Unpin() }

// Batcher takes READs whose preadv may wait until the end of the queue's
// batch, to be submitted together (engine/dataplane, with io_uring).
// Defer is called on the queue's thread from Reply.ReadFile; when it
// returns true the batcher later calls r.FinishRead, on the same thread,
// before the chain's used element is pushed.
type Batcher interface {
	Defer(r *Reply) bool
}

// SetBatcher makes r offer its READs to b (nil: read at once).
func (r *Reply) SetBatcher(b Batcher) { r.batcher = b }

// Deferred reports whether the answer waits for FinishRead.
func (r *Reply) Deferred() bool { return r.deferred }

// ReadTarget is the deferred read: the fd, the offset and the iovecs over
// the guest's buffers, valid until FinishRead.
func (r *Reply) ReadTarget() (fd int, off int64, iov []unix.Iovec) { return r.fd, r.off, r.iov }

// Out is the chain's writable segments the reply writes into.
func (r *Reply) Out() Scatter { return r.out }

// Reset prepares r to answer the request with the given unique id into out.
func (r *Reply) Reset(out Scatter, unique uint64) {
	r.out, r.unique, r.written, r.noReply, r.done = out, unique, 0, false, false
}

// Written is the number of bytes the reply wrote into guest RAM, the value
// for the used-ring element.
func (r *Reply) Written() uint32 { return r.written }

// Done reports whether an answer (or NoReply) was given.
func (r *Reply) Done() bool { return r.done }

// NoReply marks a request that gets no answer (FORGET, BATCH_FORGET,
// INTERRUPT): its chain is returned to the guest with zero bytes written.
func (r *Reply) NoReply() { r.noReply, r.done, r.written = true, true, 0 }

func (r *Reply) header(errno int32, payload int) bool {
	var hb [OutHeaderSize]byte
	binary.LittleEndian.PutUint32(hb[0:], uint32(OutHeaderSize+payload))
	binary.LittleEndian.PutUint32(hb[4:], uint32(errno))
	binary.LittleEndian.PutUint64(hb[8:], r.unique)
	return r.out.CopyIn(0, hb[:]) == OutHeaderSize
}

// Error answers with a negated errno. Errno 0 is a success with no payload.
func (r *Reply) Error(e unix.Errno) {
	r.done = true
	if !r.header(-int32(e), 0) {
		r.written = 0
		return
	}
	r.written = OutHeaderSize
}

// Ok answers success with the concatenation of args as payload. If the guest
// gave too little writable space, the answer is EINVAL... unless even the
// header does not fit, in which case nothing is written.
func (r *Reply) Ok(args ...[]byte) {
	n := 0
	for _, a := range args {
		n += len(a)
	}
	if OutHeaderSize+n > r.out.Len() {
		r.Error(unix.EINVAL)
		return
	}
	r.done = true
	r.header(0, n)
	off := OutHeaderSize
	for _, a := range args {
		off += r.out.CopyIn(off, a)
	}
	r.written = uint32(off)
}

// PayloadRoom is how many payload bytes fit after the out header.
func (r *Reply) PayloadRoom() int {
	n := r.out.Len() - OutHeaderSize
	if n < 0 {
		return 0
	}
	return n
}

// ReadFile answers a READ by preadv(2) from fd at off straight into guest RAM
// (no bounce buffer), reading at most size bytes. Short reads are fine (EOF).
// pin (nil: none) keeps fd open; it is released when the read is done,
// which is later, in FinishRead, when the batcher took the read.
func (r *Reply) ReadFile(fd int, off int64, size int, pin Pin) {
	if size > r.PayloadRoom() {
		size = r.PayloadRoom()
	}
	r.tail = r.out.Slice(r.tail[:0], OutHeaderSize, size)
	r.iov = r.tail.Iovecs(r.iov)
	r.fd, r.off, r.pin = fd, off, pin
	if r.batcher != nil && len(r.iov) > 0 && r.batcher.Defer(r) {
		r.outOwn = append(r.outOwn[:0], r.out...)
		r.out = r.outOwn
		r.deferred, r.done = true, true
		return
	}
	r.FinishRead(0, 0)
}

// FinishRead completes the READ that ReadFile prepared, of which n bytes
// were already read into the iovecs (eno: the read failed with n == 0). A
// short read is continued with preadv(2) until EOF or an error, as the
// kernel may stop a read early; then the header is written and the pin
// released.
func (r *Reply) FinishRead(n int, eno unix.Errno) {
	iov := advance(r.iov, n) // r.iov keeps the scratch's full capacity
	for eno == 0 && len(iov) > 0 {
		m, err := preadv(r.fd, iov, r.off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if n == 0 {
				eno = err.(unix.Errno)
			}
			break
		}
		if m == 0 {
			break
		}
		n += m
		iov = advance(iov, m)
	}
	if r.pin != nil {
		r.pin.Unpin()
		r.pin = nil
	}
	r.deferred, r.done = false, true
	if eno != 0 {
		r.Error(eno)
		return
	}
	r.header(0, n)
	r.written = uint32(OutHeaderSize + n)
}

// WriteFile performs pwritev(2) of d (guest RAM) to fd at off (off < 0 means
// the file's current offset, for O_APPEND) and returns bytes written. iov is
// the caller's reusable scratch.
func WriteFile(fd int, d Scatter, off int64, iov []unix.Iovec) (int, []unix.Iovec, error) {
	scratch := d.Iovecs(iov)
	iov = scratch // advanced below; scratch is returned whole for reuse
	n := 0
	for len(iov) > 0 {
		m, err := pwritev(fd, iov, off, n)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if n == 0 {
				return 0, scratch, err
			}
			break
		}
		if m == 0 {
			break
		}
		n += m
		iov = advance(iov, m)
	}
	return n, scratch, nil
}

// Handler serves decoded FUSE requests; engine/passthrough implements it.
//
// Handle is called on a queue's locked OS thread, except for requests whose
// opcode is Blocking: those run on a helper goroutine (with a cloned Request)
// and complete out of order. Handle must always leave rep Done (answer, error
// or NoReply) and must never panic on guest input; the dataplane still
// recovers a panic and answers EIO.
type Handler interface {
	Handle(req *Request, rep *Reply)
}

// Request extensions (FUSE 7.38): TotalExtlen 8-byte units at the end of
// the arguments, each a fuse_ext_header {size, type} (size counts the
// header and is a multiple of 8) and its payload.
const (
	ExtSecurityCtx = 1 // FUSE_EXT_SECURITY_CTX
	ExtGroups      = 2 // FUSE_EXT_GROUPS: fuse_supp_groups {nr_groups, groups[]}
)

// SuppGroup returns the first group of a FUSE_EXT_GROUPS extension (the
// creator's supplementary group that matches the parent directory's, sent
// with MKNOD/MKDIR/SYMLINK/CREATE/TMPFILE when FUSE_CREATE_SUPP_GROUP was
// negotiated). ok is false when there is none or the area is malformed.
func (r *Request) SuppGroup() (gid uint32, ok bool) {
	n := int(r.TotalExtlen) * 8
	if n == 0 || n > len(r.Arg) {
		return 0, false
	}
	ext := r.Arg[len(r.Arg)-n:]
	for len(ext) >= 8 {
		size := int(binary.LittleEndian.Uint32(ext))
		typ := binary.LittleEndian.Uint32(ext[4:])
		if size < 8 || size%8 != 0 || size > len(ext) {
			return 0, false
		}
		if typ == ExtGroups && size >= 12 {
			nr := binary.LittleEndian.Uint32(ext[8:])
			if nr >= 1 && size >= 16 {
				return binary.LittleEndian.Uint32(ext[12:]), true
			}
			return 0, false
		}
		ext = ext[size:]
	}
	return 0, false
}
