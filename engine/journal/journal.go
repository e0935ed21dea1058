package journal

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// FDName is the fd store name of the journal memfd.
const FDName = "vfsd.journal"

// Geometry and layout constants.
const (
	Magic      = 0x4c4e524a44534656 // "VFSDJRNL" little-endian
	Version    = 1
	HeaderSize = 4096
	EntrySize  = 512
	PreWords   = 8   // op-specific pre-state words in the begin record
	ReplyMax   = 304 // reply payload bytes the done record holds
	SessionMax = 120 // bytes of one session copy

	MaxQueues    = 64
	MaxQueueSize = 32768

	offBegin    = 0
	offProgress = 96
	offRef      = 128
	offDone     = 192
	offReply    = offDone + 16

	offSession0 = 64
	sessionSize = 128
)

// Errors returned by Map.
var (
	ErrCorrupt = errors.New("journal: not a vfsd journal or corrupt header")
	ErrVersion = errors.New("journal: unsupported journal version")
)

// Journal is a mapped request journal.
type Journal struct {
	mem    []byte
	fd     int
	queues int
	size   int
}

// Phase is what an entry says about its request.
type Phase uint8

const (
	Free    Phase = iota // no whole begin record: the request did nothing
	Started              // begun; effects may or may not have happened
	Done                 // finished: replay the stored reply
)

func (p Phase) String() string {
	switch p {
	case Free:
		return "free"
	case Started:
		return "started"
	case Done:
		return "done"
	}
	return "?"
}

// Ref is the ref record: written before a reference count changes, it
// holds what the count was (per-queue counter of inode ID, key Key) and,
// for multi-entry requests, which entry it is about.
type Ref struct {
	ID    uint64    // record ID of the inode (0: not in the table yet)
	Pre   uint64    // the counter's value before the change
	Key   [3]uint64 // the inode's key
	Index uint64    // entry index (BATCH_FORGET), else 0
}

// Entry is a decoded journal entry (Read).
type Entry struct {
	Phase  Phase
	Opcode uint32
	Gen    uint32
	Unique uint64
	Pre    [PreWords]uint64

	RefValid bool // the ref record is whole and of this request
	Ref      Ref

	ProgressValid bool
	Progress      uint32

	Errno int32  // Done: the reply's errno (positive), 0 for success
	Reply []byte // Done: the reply payload (aliases the Entry's buffer)
	buf   [ReplyMax]byte
}

// Size returns the memfd size for a geometry.
func Size(queues, queueSize int) int64 {
	return HeaderSize + int64(queues)*int64(queueSize)*EntrySize
}

func checkGeometry(queues, queueSize int) error {
	if queues < 1 || queues > MaxQueues || queueSize < 1 || queueSize > MaxQueueSize {
		return fmt.Errorf("%w: geometry %d queues x %d heads", ErrCorrupt, queues, queueSize)
	}
	return nil
}

// Create makes a new journal memfd (close-on-exec, sealed against resizing)
// for numQueues queues of queueSize heads and maps it. The memfd is sparse:
// heads never used cost no memory.
func Create(numQueues, queueSize int) (*Journal, error) {
	if err := checkGeometry(numQueues, queueSize); err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("vfsd-journal", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("journal: memfd: %w", err)
	}
	if err := unix.Ftruncate(fd, Size(numQueues, queueSize)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("journal: size: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("journal: seal: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, int(Size(numQueues, queueSize)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("journal: mmap: %w", err)
	}
	le := binary.LittleEndian
	le.PutUint32(mem[8:], Version)
	le.PutUint32(mem[12:], EntrySize)
	le.PutUint32(mem[16:], uint32(numQueues))
	le.PutUint32(mem[20:], uint32(queueSize))
	storeU64(mem[0:], Magic) // last: a header without magic is not a journal
	return &Journal{mem: mem, fd: fd, queues: numQueues, size: queueSize}, nil
}

// Map maps an existing journal memfd, after checking its magic, version
// and geometry against the memfd's size. It does not take ownership of fd
// (the journal keeps a duplicate, closed by Close).
func Map(fd int) (*Journal, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("journal: stat: %w", err)
	}
	if st.Size < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, st.Size)
	}
	var hdr [24]byte
	if n, err := unix.Pread(fd, hdr[:], 0); err != nil || n != len(hdr) {
		return nil, fmt.Errorf("%w: short header", ErrCorrupt)
	}
	le := binary.LittleEndian
	if le.Uint64(hdr[0:]) != Magic {
		return nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	if v := le.Uint32(hdr[8:]); v != Version {
		return nil, fmt.Errorf("%w: version %d", ErrVersion, v)
	}
	if es := le.Uint32(hdr[12:]); es != EntrySize {
		return nil, fmt.Errorf("%w: entry size %d", ErrCorrupt, es)
	}
	q, qs := int(le.Uint32(hdr[16:])), int(le.Uint32(hdr[20:]))
	if err := checkGeometry(q, qs); err != nil {
		return nil, err
	}
	if st.Size != Size(q, qs) {
		return nil, fmt.Errorf("%w: size %d for %d queues x %d heads", ErrCorrupt, st.Size, q, qs)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		// Without the seals a later truncate could make the mapping fault.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
			return nil, fmt.Errorf("%w: cannot seal: %v", ErrCorrupt, err)
		}
	}
	dfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("journal: dup: %w", err)
	}
	mem, err := unix.Mmap(dfd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(dfd)
		return nil, fmt.Errorf("journal: mmap: %w", err)
	}
	return &Journal{mem: mem, fd: dfd, queues: q, size: qs}, nil
}

// FD returns the journal's memfd (owned by the Journal).
func (j *Journal) FD() int { return j.fd }

// Queues returns the number of queues the journal has entries for.
func (j *Journal) Queues() int { return j.queues }

// QueueSize returns the number of heads per queue.
func (j *Journal) QueueSize() int { return j.size }

// Close unmaps the journal and closes its fd. No Slot may be used after.
func (j *Journal) Close() error {
	if j == nil || j.mem == nil {
		return nil
	}
	err := unix.Munmap(j.mem)
	j.mem = nil
	if e := unix.Close(j.fd); err == nil {
		err = e
	}
	j.fd = -1
	return err
}

// Slot is one entry of the journal, written only by the owner of its head.
// The zero Slot is invalid (Valid false) and its methods are no-ops.
type Slot struct{ b []byte }

// Slot returns the entry of (queue, head); ok false when the journal has no
// entry for it.
func (j *Journal) Slot(queue int, head uint16) (Slot, bool) {
	if j == nil || queue < 0 || queue >= j.queues || int(head) >= j.size {
		return Slot{}, false
	}
	off := HeaderSize + (queue*j.size+int(head))*EntrySize
	return Slot{j.mem[off : off+EntrySize : off+EntrySize]}, true
}

// Valid reports whether s names an entry.
func (s Slot) Valid() bool { return len(s.b) == EntrySize }

// beginWrite makes a record's sequence word odd and returns it.
func beginWrite(b []byte) uint32 {
	q := loadU32(b)
	if q&1 == 0 {
		q++
	} else {
		q += 2
	}
	if q == ^uint32(0) {
		// endWrite's q+1 would wrap to 0, which reads as never written
		// (after 2^31 writes to one record, or a stray value in a mapped
		// memfd: found by FuzzJournalMap).
		q = 1
	}
	storeU32(b, q)
	return q
}

func endWrite(b []byte, q uint32) { storeU32(b, q+1) }

// Begin starts a new request at this head: it bumps the entry's generation
// (invalidating the ref, progress and done records of the previous
// request), records opcode, unique and the pre-state, and returns the new
// generation. The request's effects must happen only after Begin returns.
func (s Slot) Begin(opcode uint32, unique uint64, pre *[PreWords]uint64) uint32 {
	if !s.Valid() {
		return 0
	}
	le := binary.LittleEndian
	r := s.b[offBegin:offProgress]
	gen := le.Uint32(r[8:]) + 1
	if gen == 0 {
		gen = 1
	}
	q := beginWrite(r)
	le.PutUint32(r[4:], opcode)
	le.PutUint32(r[8:], gen)
	le.PutUint64(r[16:], unique)
	for i, v := range pre {
		le.PutUint64(r[24+8*i:], v)
	}
	endWrite(r, q)
	return gen
}

// SetRef writes the ref record of generation gen (before the count it
// describes changes).
func (s Slot) SetRef(gen uint32, ref *Ref) {
	if !s.Valid() {
		return
	}
	le := binary.LittleEndian
	r := s.b[offRef:offDone]
	q := beginWrite(r)
	le.PutUint32(r[4:], gen)
	le.PutUint64(r[8:], ref.ID)
	le.PutUint64(r[16:], ref.Pre)
	le.PutUint64(r[24:], ref.Key[0])
	le.PutUint64(r[32:], ref.Key[1])
	le.PutUint64(r[40:], ref.Key[2])
	le.PutUint64(r[48:], ref.Index)
	endWrite(r, q)
}

// SetProgress records, with one atomic store, that the entries of a
// multi-entry request before index are applied.
func (s Slot) SetProgress(gen uint32, index uint32) {
	if !s.Valid() {
		return
	}
	storeU64(s.b[offProgress:], uint64(gen)<<32|uint64(index))
}

// Finish writes the done record of generation gen: the reply's errno
// (positive; 0 for success) and its payload, the concatenation of a and b.
// It reports false, writing nothing, when the payload exceeds ReplyMax.
func (s Slot) Finish(gen uint32, errno int32, a, b []byte) bool {
	if !s.Valid() || len(a)+len(b) > ReplyMax {
		return false
	}
	le := binary.LittleEndian
	r := s.b[offDone:]
	q := beginWrite(r)
	le.PutUint32(r[4:], gen)
	le.PutUint32(r[8:], uint32(errno))
	le.PutUint32(r[12:], uint32(len(a)+len(b)))
	n := copy(r[16:], a)
	copy(r[16+n:], b)
	endWrite(r, q)
	return true
}

// Read decodes the entry into e. It never panics, whatever the bytes.
func (s Slot) Read(e *Entry) Phase {
	*e = Entry{}
	if !s.Valid() {
		return Free
	}
	le := binary.LittleEndian
	r := s.b[offBegin:offProgress]
	q := loadU32(r)
	if q == 0 || q&1 != 0 {
		return Free
	}
	e.Opcode = le.Uint32(r[4:])
	e.Gen = le.Uint32(r[8:])
	e.Unique = le.Uint64(r[16:])
	for i := range e.Pre {
		e.Pre[i] = le.Uint64(r[24+8*i:])
	}
	if loadU32(r) != q || e.Gen == 0 {
		return Free
	}
	e.Phase = Started

	if p := loadU64(s.b[offProgress:]); uint32(p>>32) == e.Gen {
		e.ProgressValid, e.Progress = true, uint32(p)
	}

	r = s.b[offRef:offDone]
	if q := loadU32(r); q != 0 && q&1 == 0 && le.Uint32(r[4:]) == e.Gen {
		e.RefValid = true
		e.Ref = Ref{ID: le.Uint64(r[8:]), Pre: le.Uint64(r[16:]),
			Key:   [3]uint64{le.Uint64(r[24:]), le.Uint64(r[32:]), le.Uint64(r[40:])},
			Index: le.Uint64(r[48:])}
	}

	r = s.b[offDone:]
	if q := loadU32(r); q != 0 && q&1 == 0 && le.Uint32(r[4:]) == e.Gen {
		n := le.Uint32(r[12:])
		errno := int32(le.Uint32(r[8:]))
		if n <= ReplyMax && errno >= 0 && errno < 4096 && (errno == 0 || n == 0) {
			e.Phase = Done
			e.Errno = errno
			e.Reply = e.buf[:copy(e.buf[:n], r[16:16+n])]
		}
	}
	return e.Phase
}

// SetSession stores the negotiated session (opaque to the journal, at most
// SessionMax bytes) torn-write safely: it writes the older of two copies
// and the newer whole copy wins in Session. Callers serialise SetSession.
func (j *Journal) SetSession(b []byte) error {
	if len(b) > SessionMax {
		return fmt.Errorf("journal: session record of %d bytes", len(b))
	}
	c0, c1 := j.mem[offSession0:offSession0+sessionSize], j.mem[offSession0+sessionSize:offSession0+2*sessionSize]
	q0, q1 := loadU32(c0), loadU32(c1)
	dst := c0 // overwrite the copy that is not the newest whole one
	if cur, ok := newest(q0, q1); ok && cur == 0 {
		dst = c1
	}
	top := max(q0, q1)
	if top&1 != 0 {
		top++
	}
	q := top + 1 // odd, above both copies
	storeU32(dst, q)
	binary.LittleEndian.PutUint32(dst[4:], uint32(len(b)))
	copy(dst[8:], b)
	clear(dst[8+len(b):])
	storeU32(dst, q+1)
	return nil
}

// newest returns which whole copy (even, non-zero sequence) is newer.
func newest(q0, q1 uint32) (int, bool) {
	ok0, ok1 := q0 != 0 && q0&1 == 0, q1 != 0 && q1&1 == 0
	switch {
	case ok0 && ok1:
		if q1 > q0 {
			return 1, true
		}
		return 0, true
	case ok0:
		return 0, true
	case ok1:
		return 1, true
	}
	return 0, false
}

// Session returns a copy of the newest whole session record; ok false when
// none was ever stored.
func (j *Journal) Session() ([]byte, bool) {
	c0, c1 := j.mem[offSession0:offSession0+sessionSize], j.mem[offSession0+sessionSize:offSession0+2*sessionSize]
	i, ok := newest(loadU32(c0), loadU32(c1))
	if !ok {
		return nil, false
	}
	c := c0
	if i == 1 {
		c = c1
	}
	n := binary.LittleEndian.Uint32(c[4:])
	if n > SessionMax {
		return nil, false
	}
	return append([]byte(nil), c[8:8+n]...), true
}
