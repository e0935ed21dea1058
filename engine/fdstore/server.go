package fdstore

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// channelSndBuf is the send buffer asked for the worker's end of a
// Channel when reads are coalesced: room for thousands of small datagrams.
const channelSndBuf = 4 << 20

// DefaultMaxFDs is the default cap on stored fds.
const DefaultMaxFDs = 4096

// ErrFull is returned by Add when the cap dropped some of the fds.
var ErrFull = errors.New("fdstore: store full")

// Config configures a Server.
type Config struct {
	// MaxFDs caps the number of stored fds (FileDescriptorStoreMax). A
	// store over the cap closes the extra fds and logs. 0 = DefaultMaxFDs.
	MaxFDs int
	// Logger receives warnings about rejected datagrams; nil = slog.Default().
	Logger *slog.Logger
	// Upstream, if set, receives a copy of every store and remove, with
	// names prefixed by UpstreamPrefix (systemd's own fd store).
	Upstream *Client
	// OnMessage, if set, is called after each accepted datagram has been
	// applied, with a receiver lock held (it must not call Drain or Close).
	OnMessage func(Message)
	// Coalesce, if positive, is how long a receiver waits after emptying
	// its socket before it looks again. Datagrams sent meanwhile stay
	// queued in the socket (already durable for their sender) and are read
	// together, so a busy sender wakes the server once per Coalesce instead
	// of once per datagram. 0: each datagram is read as it arrives.
	Coalesce time.Duration
}

type entry struct {
	name string
	fd   int
	seq  uint64 // store order
}

// receiver is one socket the server reads datagrams from.
//
// It is read by its own goroutine blocked in poll(2), not through the Go
// netpoller: a socket registered with epoll wakes an idle runtime thread on
// every datagram even while nobody reads it, which would defeat
// Config.Coalesce. The socket is non-blocking; only poll blocks.
type receiver struct {
	mu   sync.Mutex // serialises recv+apply on this socket (ordering)
	fd   int        // the socket; closed by close, after the reader ended
	stop int        // eventfd: written by close to end the reader
	done chan struct{}
	desc string
	path string // bound filesystem path to unlink on close, or ""
	buf  []byte // +checklocks:mu
	oob  []byte // +checklocks:mu
	shut bool   // +checklocks:mu; fds closed
}

// Server receives sd_notify(3) datagrams and keeps the stored fds by name.
// All methods are safe for concurrent use.
type Server struct {
	cfg Config
	log *slog.Logger
	max int

	mu      sync.Mutex
	byName  map[string][]entry // +checklocks:mu; each name's fds in store order
	nfds    int                // +checklocks:mu; fds in byName
	seq     uint64             // +checklocks:mu; last entry.seq
	channel *receiver          // +checklocks:mu; current Channel() socket
	listens []*receiver        // +checklocks:mu; Listen() sockets
	closed  bool               // +checklocks:mu
	dropped uint64             // +checklocks:mu; fds closed because of the cap

	wg sync.WaitGroup // reader goroutines
}

// NewServer returns an empty store with no receiving socket yet.
func NewServer(cfg Config) *Server {
	s := &Server{cfg: cfg, log: cfg.Logger, max: cfg.MaxFDs, byName: map[string][]entry{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.max <= 0 {
		s.max = DefaultMaxFDs
	}
	return s
}

// Channel creates a fresh connected datagram socket pair, starts reading
// the server's end, and returns the other end, to be handed to one worker
// (ExtraFiles, announced by VFSD_NOTIFY_FD). The previous channel, if any,
// is drained and closed first: call Channel only after the previous worker
// was reaped. The caller owns the returned file and should close it once the
// child has started.
func (s *Server) Channel() (*os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fdstore: socketpair: %w", err)
	}
	if s.cfg.Coalesce > 0 {
		// Datagrams wait in the socket up to Coalesce; they are charged to
		// the sender's send buffer until read. Make room for a burst
		// (SO_SNDBUFFORCE needs CAP_NET_ADMIN; else the wmem_max cap).
		if unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, channelSndBuf) != nil {
			_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, channelSndBuf)
		}
	}
	rx, err := newReceiver(fds[0], "channel", "")
	if err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		rx.closeSockets()
		unix.Close(fds[1])
		return nil, errors.New("fdstore: server closed")
	}
	old := s.channel
	s.channel = rx
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(rx)
	if old != nil {
		s.drain(old)
		old.close()
	}
	return os.NewFile(uintptr(fds[1]), "fdstore-notify"), nil
}

// Listen binds a datagram socket at addr (a path, or '@' + abstract name)
// and starts reading it, for senders that use NOTIFY_SOCKET=addr.
func (s *Server) Listen(addr string) error {
	if addr == "" || (addr[0] != '/' && addr[0] != '@') {
		return fmt.Errorf("fdstore: unsupported listen address %q", addr)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fdstore: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("fdstore: bind %s: %w", addr, err)
	}
	path := ""
	if addr[0] == '/' {
		path = addr
	}
	rx, err := newReceiver(fd, addr, path)
	if err != nil {
		if path != "" {
			os.Remove(path)
		}
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		rx.closeSockets()
		if path != "" {
			os.Remove(path)
		}
		return errors.New("fdstore: server closed")
	}
	s.listens = append(s.listens, rx)
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(rx)
	return nil
}

func newReceiver(fd int, desc, path string) (*receiver, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fdstore: set nonblock: %w", err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fdstore: eventfd: %w", err)
	}
	return &receiver{
		fd: fd, stop: stop, done: make(chan struct{}), desc: desc, path: path,
		buf: make([]byte, maxDatagram),
		oob: make([]byte, unix.CmsgSpace(MaxFDsPerMessage*4)+unix.CmsgSpace(unix.SizeofUcred)),
	}, nil
}

// close ends the reader (waiting for an apply in progress), then closes the
// socket and unlinks its path.
func (rx *receiver) close() {
	var one = [8]byte{1}
	unix.Write(rx.stop, one[:])
	<-rx.done
	rx.mu.Lock() // a concurrent Drain may still hold the socket
	rx.shut = true
	rx.closeSockets()
	rx.mu.Unlock()
	if rx.path != "" {
		os.Remove(rx.path)
	}
}

// closeSockets closes the receiver's socket and eventfd; its reader never ran (or
// has ended).
func (rx *receiver) closeSockets() {
	unix.Close(rx.fd)
	unix.Close(rx.stop)
}

// serve reads rx until it is closed: poll for a datagram, read and apply
// everything queued, then (Coalesce) wait before polling again.
func (s *Server) serve(rx *receiver) {
	defer s.wg.Done()
	defer close(rx.done)
	pfd := []unix.PollFd{{Fd: int32(rx.fd), Events: unix.POLLIN}, {Fd: int32(rx.stop), Events: unix.POLLIN}}
	var pause *unix.Timespec
	if s.cfg.Coalesce > 0 {
		ts := unix.NsecToTimespec(s.cfg.Coalesce.Nanoseconds())
		pause = &ts
	}
	for {
		pfd[0].Revents, pfd[1].Revents = 0, 0
		if _, err := unix.Poll(pfd, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			s.log.Error("fdstore: poll failed; receiver stopped", "socket", rx.desc, "err", err)
			return
		}
		if pfd[1].Revents != 0 {
			return
		}
		rx.mu.Lock()
		s.recvAllLocked(rx, rx.fd)
		rx.mu.Unlock()
		if pause != nil {
			// Sleep on the stop eventfd alone: the socket has no waiter
			// meanwhile, so sends into it wake nobody.
			stopOnly := pfd[1:]
			stopOnly[0].Revents = 0
			if n, _ := unix.Ppoll(stopOnly, pause, nil); n > 0 {
				return
			}
		}
	}
}

// Drain reads and applies every datagram already queued on the server's
// sockets, without blocking. After a sender has died (and been reaped),
// Drain returns only once every store it completed has been applied.
func (s *Server) Drain() {
	s.mu.Lock()
	rxs := append([]*receiver(nil), s.listens...)
	if s.channel != nil {
		rxs = append(rxs, s.channel)
	}
	s.mu.Unlock()
	for _, rx := range rxs {
		s.drain(rx)
	}
}

func (s *Server) drain(rx *receiver) {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	if !rx.shut {
		s.recvAllLocked(rx, rx.fd)
	}
}

// recvAllLocked receives and applies datagrams until the socket is empty.
// Precondition: rx.mu held.
func (s *Server) recvAllLocked(rx *receiver, fd int) {
	for {
		n, oobn, flags, _, err := unix.Recvmsg(fd, rx.buf, rx.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			s.log.Warn("fdstore: receive failed", "socket", rx.desc, "err", err)
			return
		}
		fds, perr := parseRights(rx.oob[:oobn])
		switch {
		case flags&unix.MSG_CTRUNC != 0:
			s.log.Error("fdstore: control data truncated; datagram dropped", "socket", rx.desc, "fds", len(fds))
			closeFDs(fds)
		case flags&unix.MSG_TRUNC != 0:
			s.log.Warn("fdstore: datagram too long; ignored", "socket", rx.desc, "max", maxDatagram, "fds", len(fds))
			closeFDs(fds)
		case perr != nil:
			s.log.Warn("fdstore: bad control message; datagram ignored", "socket", rx.desc, "err", perr)
			closeFDs(fds)
		default:
			s.apply(rx.buf[:n], fds)
		}
	}
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var firstErr error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		r, err := unix.ParseUnixRights(&msgs[i])
		if err != nil && firstErr == nil {
			firstErr = err
		}
		fds = append(fds, r...)
	}
	return fds, firstErr
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// apply handles one datagram; it owns fds.
func (s *Server) apply(b []byte, fds []int) {
	m, err := ParseMessage(b)
	m.NumFDs = len(fds)
	if err != nil {
		s.log.Warn("fdstore: malformed notify datagram ignored", "err", err, "fds", len(fds))
		closeFDs(fds)
		return
	}
	if m.RemoveNames != nil || m.FDNames != nil {
		s.applyBatch(m, fds)
		return
	}
	name := DefaultName
	if m.HasFDName {
		name = m.FDName
	}
	if (m.Store || m.RemoveFDs) && !ValidName(name) {
		s.log.Warn("fdstore: invalid FDNAME; store/remove ignored", "name", name, "fds", len(fds))
		closeFDs(fds)
		return
	}
	// Remove first, so that one datagram can atomically replace a name.
	if m.RemoveFDs {
		if !m.HasFDName {
			s.log.Warn("fdstore: FDSTOREREMOVE=1 without FDNAME; ignored")
		} else {
			s.remove(name, true)
		}
	}
	if len(fds) > 0 {
		if m.Store {
			_ = s.add(name, fds, true)
		} else {
			s.log.Warn("fdstore: fds sent without FDSTORE=1; closed", "fds", len(fds))
			closeFDs(fds)
		}
	}
	if s.cfg.OnMessage != nil {
		s.cfg.OnMessage(m)
	}
}

// applyBatch handles a datagram of Client.SendBatch; it owns fds. A batch
// is all or nothing: any invalid name, or names that do not match the fds
// one to one, reject the whole datagram (fds closed).
func (s *Server) applyBatch(m Message, fds []int) {
	bad := m.FDNames != nil && (!m.Store || len(m.FDNames) != len(fds)) ||
		m.FDNames == nil && len(fds) > 0 || m.RemoveFDs || m.HasFDName
	for _, n := range m.RemoveNames {
		bad = bad || !ValidName(n)
	}
	for _, n := range m.FDNames {
		bad = bad || !ValidName(n)
	}
	if bad {
		s.log.Warn("fdstore: malformed batch datagram ignored", "removes", len(m.RemoveNames), "names", len(m.FDNames), "fds", len(fds))
		closeFDs(fds)
		return
	}
	for _, n := range m.RemoveNames {
		s.remove(n, true)
	}
	for i, n := range m.FDNames {
		_ = s.add(n, fds[i:i+1], true)
	}
	if s.cfg.OnMessage != nil {
		s.cfg.OnMessage(m)
	}
}

// Add stores fds under name, taking ownership of them in every case (on an
// error they are closed). fds already stored under the same name (the same
// open file) are closed rather than stored twice. If the cap is reached, the
// remaining fds are closed and ErrFull is returned. Stores are forwarded
// upstream.
func (s *Server) Add(name string, fds ...int) error {
	if err := checkName(name); err != nil {
		closeFDs(fds)
		return err
	}
	return s.add(name, fds, true)
}

// Adopt stores fds handed back by systemd (see SplitUpstream); they are not
// forwarded upstream again, since systemd still holds them. Ownership as Add.
func (s *Server) Adopt(fds []NamedFD) error {
	var firstErr error
	for _, f := range fds {
		var err error
		if !ValidName(f.Name) {
			unix.Close(f.FD)
			err = fmt.Errorf("%w: %q", ErrBadName, f.Name)
		} else {
			err = s.add(f.Name, []int{f.FD}, false)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func (s *Server) add(name string, fds []int, forward bool) error {
	kept := make([]int, 0, len(fds))
	full := 0
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closeFDs(fds)
		return errors.New("fdstore: server closed")
	}
	for _, fd := range fds {
		if s.hasSameLocked(name, fd) {
			unix.Close(fd)
			continue
		}
		if s.nfds >= s.max {
			unix.Close(fd)
			s.dropped++
			full++
			continue
		}
		s.seq++
		s.byName[name] = append(s.byName[name], entry{name: name, fd: fd, seq: s.seq})
		s.nfds++
		kept = append(kept, fd)
	}
	s.mu.Unlock()
	if full > 0 {
		s.log.Warn("fdstore: store full; fds closed", "name", name, "closed", full, "max", s.max)
	}
	if forward && s.cfg.Upstream != nil && len(kept) > 0 {
		up := UpstreamPrefix + name
		if !ValidName(up) {
			s.log.Warn("fdstore: name too long to forward upstream", "name", name)
		} else if err := s.cfg.Upstream.Notify("FDSTORE=1\nFDPOLL=0\nFDNAME="+up, kept...); err != nil {
			s.log.Warn("fdstore: forwarding store upstream failed", "name", name, "err", err)
		}
	}
	if full > 0 {
		return fmt.Errorf("%w: %d fds for %q closed (max %d)", ErrFull, full, name, s.max)
	}
	return nil
}

// hasSameLocked reports whether the open file behind fd is already stored
// under name (kcmp KCMP_FILE: the same open file description). Only the
// name's own fds are compared, so a store under a new name costs no
// syscall. Precondition: s.mu held.
func (s *Server) hasSameLocked(name string, fd int) bool {
	same := s.byName[name]
	if len(same) == 0 {
		return false
	}
	pid := uintptr(os.Getpid())
	for _, e := range same {
		r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, 0 /* KCMP_FILE */, uintptr(e.fd), uintptr(fd), 0)
		if errno == 0 && r == 0 {
			return true
		}
	}
	return false
}

// orderedLocked returns every entry in store order. Precondition: s.mu held.
func (s *Server) orderedLocked() []entry {
	out := make([]entry, 0, s.nfds)
	for _, es := range s.byName {
		out = append(out, es...)
	}
	slices.SortFunc(out, func(a, b entry) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// Remove closes and forgets every fd stored under name and forwards the
// removal upstream. It returns how many fds were removed.
func (s *Server) Remove(name string) int { return s.remove(name, true) }

func (s *Server) remove(name string, forward bool) int {
	s.mu.Lock()
	es := s.byName[name]
	for _, e := range es {
		unix.Close(e.fd)
	}
	n := len(es)
	delete(s.byName, name)
	s.nfds -= n
	s.mu.Unlock()
	if forward && s.cfg.Upstream != nil && ValidName(UpstreamPrefix+name) {
		if err := s.cfg.Upstream.Notify("FDSTOREREMOVE=1\nFDNAME=" + UpstreamPrefix + name); err != nil {
			s.log.Warn("fdstore: forwarding remove upstream failed", "name", name, "err", err)
		}
	}
	return n
}

// RemoveAll removes every stored fd, forwarding each removal upstream (an
// orderly shutdown, after which nothing should be handed to a successor).
func (s *Server) RemoveAll() {
	for _, name := range s.Names() {
		s.remove(name, true)
	}
}

// Len returns the number of stored fds.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nfds
}

// Dropped returns how many fds were closed because the store was full.
func (s *Server) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Names returns the distinct stored names in first-stored order.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	seen := map[string]bool{}
	for _, e := range s.orderedLocked() {
		if !seen[e.name] {
			seen[e.name] = true
			names = append(names, e.name)
		}
	}
	return names
}

// Entries returns the stored fds in store order. The fds remain owned by the
// server and are valid only until the next Remove, Drain or Close.
func (s *Server) Entries() []NamedFD {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := s.orderedLocked()
	out := make([]NamedFD, len(all))
	for i, e := range all {
		out[i] = NamedFD{Name: e.name, FD: e.fd}
	}
	return out
}

// ChildFiles returns what a child needs to receive every stored fd: the
// environment (LISTEN_FDS, LISTEN_FDNAMES, VFSD_LISTEN_FDS_CHILD=1; no
// LISTEN_PID, see the package doc) and duplicates of the fds, in order, to be
// put first in exec.Cmd.ExtraFiles (so they land at fd 3, 4, ...). The caller
// closes the files once the child has started. With no stored fds, both are
// empty.
func (s *Server) ChildFiles() (env []string, files []*os.File, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nfds == 0 {
		return nil, nil, nil
	}
	names := make([]string, 0, s.nfds)
	for _, e := range s.orderedLocked() {
		nfd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, fmt.Errorf("fdstore: dup %q: %w", e.name, err)
		}
		files = append(files, os.NewFile(uintptr(nfd), e.name))
		names = append(names, e.name)
	}
	env = []string{
		EnvListenFDs + "=" + strconv.Itoa(len(files)),
		EnvListenFDNames + "=" + strings.Join(names, ":"),
		EnvListenChild + "=1",
	}
	return env, files, nil
}

// Close stops reading, closes the sockets and every stored fd. Stored fds are
// not removed upstream (call RemoveAll first for that).
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	rxs := s.listens
	if s.channel != nil {
		rxs = append(rxs, s.channel)
	}
	s.listens, s.channel = nil, nil
	s.mu.Unlock()
	for _, rx := range rxs {
		rx.close()
	}
	s.wg.Wait()
	s.mu.Lock()
	for _, es := range s.byName {
		for _, e := range es {
			unix.Close(e.fd)
		}
	}
	clear(s.byName)
	s.nfds = 0
	s.mu.Unlock()
	return nil
}
