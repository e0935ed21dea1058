package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"vfsd/engine/crashpoint"
	"vfsd/engine/metrics"
	"vfsd/vring/inflight"
)

// Fd store names of the worker's own state memfds (the passthrough
// filesystem stores its own under its names).
const (
	StateFDName    = "state.worker"   // ring state (which rings resume from the inflight region)
	InflightFDName = "state.inflight" // inflight region of every ring (vring/inflight layout)
)

// InflightQueueSize is the number of descriptors per ring in the worker's
// inflight region: the largest split ring, so that any queue size the
// driver picks fits (vring accepts a region larger than the ring). The
// memfd is sparse; a ring touches 16 bytes per descriptor of the region at
// start.
const InflightQueueSize = inflight.MaxQueueSize

// Layout of the state memfd (little-endian), StateSize bytes:
//
//	 0  magic    [8]byte  "VFSDWST1"
//	 8  version  u32  stateVersion
//	12  rings    u32  number of virtqueues (hiprio + request queues)
//	16  qsize    u32  descriptors per ring in the inflight region
//	20  size     u32  StateSize
//	64  tracked  [rings]u32  1: the ring's position lives in the inflight
//	                         region (running, or died running); 0: used.idx
//
// The header is written once, before the memfd is stored; tracked words
// are single aligned atomic stores, so a crash never tears one.
const (
	StateSize    = 4096
	stateMagic   = "VFSDWST1"
	stateVersion = 1
	offTracked   = 64
	maxRings     = (StateSize - offTracked) / 4
)

// ErrState marks state handed back by the fd store that this worker cannot
// use (wrong magic, version or layout): it refuses to run on it.
var ErrState = errors.New("worker: persisted state unusable")

// state is the worker's persistent state: the ring-state memfd and the
// inflight region. It implements vhostuser.RingState.
type state struct {
	fd    int    // state memfd (owned)
	mem   []byte // its mapping
	rings int
	infl  *inflight.Region
	ifd   int // inflight memfd (owned; infl does not own it after Map)

	stored *storeCounter   // the fd store, counted (metrics); set by runSupervised
	reqs   *metrics.Shared // request counters (metrics.SharedName); set by runSupervised
}

// newMemfd makes a sealed-size memfd of size bytes.
func newMemfd(name string, size int) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create %s: %w", name, err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate %s: %w", name, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seal %s: %w", name, err)
	}
	return fd, nil
}

// createState makes fresh state for rings virtqueues (nothing stored yet).
func createState(rings int) (*state, error) {
	if rings < 1 || rings > maxRings {
		return nil, fmt.Errorf("worker: %d rings, want 1..%d", rings, maxRings)
	}
	s := &state{fd: -1, ifd: -1, rings: rings}
	var err error
	if s.fd, err = newMemfd("vfsd-worker-state", StateSize); err != nil {
		return nil, err
	}
	if s.mem, err = unix.Mmap(s.fd, 0, StateSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		s.close()
		return nil, fmt.Errorf("mmap state: %w", err)
	}
	le := binary.LittleEndian
	copy(s.mem[0:8], stateMagic)
	le.PutUint32(s.mem[12:], uint32(rings))
	le.PutUint32(s.mem[16:], InflightQueueSize)
	le.PutUint32(s.mem[20:], StateSize)
	le.PutUint32(s.mem[8:], stateVersion)
	r, err := inflight.Create(rings, InflightQueueSize)
	if err != nil {
		s.close()
		return nil, err
	}
	// Keep our own fd to the region: Create's Region owns its fd, and the
	// resume path (Map) does not, so the state closes both the same way.
	if s.ifd, err = unix.FcntlInt(uintptr(r.FD()), unix.F_DUPFD_CLOEXEC, 0); err != nil {
		r.Close()
		s.close()
		return nil, fmt.Errorf("dup inflight memfd: %w", err)
	}
	s.infl = r
	return s, nil
}

// openState validates and maps state handed back by the fd store. It takes
// ownership of both fds, whatever it returns. Everything in them is
// untrusted: any mismatch is an ErrState error.
func openState(fd, ifd, rings int) (*state, error) {
	s := &state{fd: fd, ifd: ifd, rings: rings}
	fail := func(f string, a ...any) (*state, error) {
		s.close()
		return nil, fmt.Errorf("%w: %s", ErrState, fmt.Sprintf(f, a...))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("%s: fstat: %v", StateFDName, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != StateSize {
		return fail("%s: mode %#o size %d, want a regular file of %d bytes", StateFDName, st.Mode, st.Size, StateSize)
	}
	var err error
	if s.mem, err = unix.Mmap(fd, 0, StateSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fail("%s: mmap: %v", StateFDName, err)
	}
	le := binary.LittleEndian
	if m := string(s.mem[0:8]); m != stateMagic {
		return fail("%s: magic %q, want %q", StateFDName, m, stateMagic)
	}
	if v := le.Uint32(s.mem[8:]); v != stateVersion {
		return fail("%s: version %d, this worker reads version %d", StateFDName, v, stateVersion)
	}
	if n := le.Uint32(s.mem[12:]); int(n) != rings {
		return fail("%s: %d rings, this worker serves %d (was --num-request-queues changed?)", StateFDName, n, rings)
	}
	if q := le.Uint32(s.mem[16:]); q != InflightQueueSize {
		return fail("%s: inflight queue size %d, want %d", StateFDName, q, InflightQueueSize)
	}
	if z := le.Uint32(s.mem[20:]); z != StateSize {
		return fail("%s: size field %d, want %d", StateFDName, z, StateSize)
	}
	for i := 0; i < rings; i++ {
		if w := le.Uint32(s.mem[offTracked+4*i:]); w > 1 {
			return fail("%s: ring %d tracked word %#x", StateFDName, i, w)
		}
	}
	if err := unix.Fstat(ifd, &st); err != nil {
		return fail("%s: fstat: %v", InflightFDName, err)
	}
	if want := int64(inflight.Size(rings, InflightQueueSize)); st.Size != want {
		return fail("%s: %d bytes, want %d for %d rings", InflightFDName, st.Size, want, rings)
	}
	if s.infl, err = inflight.Map(ifd, rings, InflightQueueSize); err != nil {
		return fail("%s: %v", InflightFDName, err)
	}
	return s, nil
}

// Tracked implements vhostuser.RingState.
func (s *state) Tracked(i int) bool {
	return i >= 0 && i < s.rings && load32(s.mem, offTracked+4*i) == 1
}

// SetTracked implements vhostuser.RingState.
func (s *state) SetTracked(i int, on bool) {
	if i < 0 || i >= s.rings {
		return
	}
	v := uint32(0)
	if on {
		v = 1
	}
	store32(s.mem, offTracked+4*i, v)
}

// store hands both memfds to the fd store: the inflight region first, so
// that a stored state memfd always has its region. Any older entries under
// these names are removed first (a predecessor that died half-way).
func (s *state) store(st fdStore) error {
	for _, name := range []string{StateFDName, InflightFDName} {
		if err := st.Remove(name); err != nil {
			return fmt.Errorf("fd store: remove %s: %w", name, err)
		}
	}
	if err := st.Store(InflightFDName, s.ifd); err != nil {
		return fmt.Errorf("fd store: %s: %w", InflightFDName, err)
	}
	crashpoint.Hit(crashpoint.MidFDHandover)
	if err := st.Store(StateFDName, s.fd); err != nil {
		return fmt.Errorf("fd store: %s: %w", StateFDName, err)
	}
	return nil
}

func (s *state) close() {
	if s.reqs != nil {
		s.reqs.Close()
		s.reqs = nil
	}
	if s.infl != nil {
		s.infl.Close()
		s.infl = nil
	}
	if s.mem != nil {
		unix.Munmap(s.mem)
		s.mem = nil
	}
	for _, fd := range []*int{&s.fd, &s.ifd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// fdStore is the part of *fdstore.Client the worker uses.
type fdStore interface {
	Store(name string, fds ...int) error
	Remove(name string) error
}

// loadRequestCounters maps the request counter memfd a predecessor stored
// (metrics.SharedName; fd taken, whatever it returns) so that the counts go
// on across workers, or creates and stores a fresh one when there is none
// or it does not fit (fd < 0: none). The counters are informational: the
// caller logs an error and serves without them.
func loadRequestCounters(fd int, store fdStore, rings int, log *slog.Logger) (*metrics.Shared, error) {
	if fd >= 0 {
		sh, err := metrics.OpenShared(fd, rings, true)
		unix.Close(fd)
		if err == nil {
			return sh, nil
		}
		log.Warn("request counters from the fd store unusable; starting them afresh", "err", err)
	}
	nfd, sh, err := metrics.CreateShared(rings)
	if err != nil {
		return nil, err
	}
	defer unix.Close(nfd) // the store keeps its own copy
	if err := store.Remove(metrics.SharedName); err != nil {
		sh.Close()
		return nil, fmt.Errorf("fd store: remove %s: %w", metrics.SharedName, err)
	}
	if err := store.Store(metrics.SharedName, nfd); err != nil {
		sh.Close()
		return nil, fmt.Errorf("fd store: %s: %w", metrics.SharedName, err)
	}
	return sh, nil
}
