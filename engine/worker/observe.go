package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
	"vfsd/engine/metrics"
	"vfsd/engine/passthrough"
)

// Environment the supervisor gives a worker for its metrics.
const (
	// EnvRestarts: the crash restarts the supervisor had completed when it
	// started this worker (set by engine/supervisor).
	EnvRestarts = "VFSD_RESTARTS"
)

// CheckAddr validates a --pprof-addr/--metrics-addr value: "unix:/path" or
// a loopback TCP address, host:port with host an IP literal that is
// loopback (127.0.0.0/8, ::1) or "localhost". The endpoints have no
// authentication: anything else is refused.
func CheckAddr(addr string) error {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if p == "" || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%q: want unix:/absolute/path", addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want 127.0.0.1:PORT, [::1]:PORT or unix:/path", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: not a loopback address (the endpoint has no authentication)", addr)
	}
	return nil
}

// Names under which the supervisor hands a supervised worker the listening
// sockets of --metrics-addr and --pprof-addr (LISTEN_FDNAMES; not in the fd
// store). The supervisor opens them once, outside any sandbox: a worker in
// its own mount and net namespaces could neither create the unix socket at
// the host's path nor listen on the host's loopback. When both addresses
// are the same, only MetricsListenerName is handed over.
const (
	MetricsListenerName = "listen.metrics"
	PprofListenerName   = "listen.pprof"
)

// ListenAddr opens a listener on a CheckAddr-valid address (see listenAddr).
func ListenAddr(addr string) (net.Listener, error) { return listenAddr(addr) }

// IsListenerName reports whether name is one of the handed-over listeners.
func IsListenerName(name string) bool {
	return name == MetricsListenerName || name == PprofListenerName
}

// listener returns the listener for addr: the one the supervisor handed
// over for it, else a new one (unsupervised, or an older supervisor).
func (o *Options) listener(addr string) (net.Listener, error) {
	name := PprofListenerName
	if addr == o.MetricsAddr {
		name = MetricsListenerName
	}
	fd, ok := o.listeners[name]
	if !ok {
		return listenAddr(addr)
	}
	delete(o.listeners, name)
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileListener dups it
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listener %s handed over for %s: %w", name, addr, err)
	}
	return l, nil
}

// listenAddr opens a listener on a CheckAddr-valid address. A unix socket
// replaces a stale socket file (never another kind of file) and is made
// 0600 before it listens: the filesystem set the umask to 0.
func listenAddr(addr string) (net.Listener, error) {
	p, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		if strings.HasPrefix(addr, "localhost:") {
			addr = "127.0.0.1" + strings.TrimPrefix(addr, "localhost")
		}
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(p); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", p)
		}
		os.Remove(p)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close() // FileListener dups it
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: p}); err != nil {
		return nil, fmt.Errorf("bind %s: %w", p, err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		os.Remove(p)
		return nil, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		os.Remove(p)
		return nil, fmt.Errorf("listen %s: %w", p, err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		os.Remove(p)
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	return l, nil
}

// observer serves the worker's pprof and metrics endpoints.
type observer struct {
	reg       *metrics.Registry // nil without --metrics-addr
	listeners []net.Listener
	wg        sync.WaitGroup
}

// enabled reports whether o asks for an HTTP endpoint (the seccomp filter
// then allows what the server needs).
func (o *Options) observing() bool { return o.PprofAddr != "" || o.MetricsAddr != "" }

// newObserver makes the metrics registry (rings queues) when o asks for
// metrics. Listeners are opened by start.
func newObserver(o Options, rings int) *observer {
	ob := &observer{}
	if o.MetricsAddr != "" {
		ob.reg = metrics.New(rings, nil)
		restarts, _ := strconv.Atoi(os.Getenv(EnvRestarts)) // engine/supervisor.EnvRestarts
		ob.reg.Counter("vfsd_restarts_total", "Crash restarts the supervisor had completed when it started this worker.",
			func() float64 { return float64(restarts) })
		started := time.Now()
		ob.reg.Gauge("vfsd_worker_start_time_seconds", "When this worker started, in seconds since the epoch.",
			func() float64 { return float64(started.UnixNano()) / 1e9 })
		resumed := 0.0
		if o.Resume {
			resumed = 1
		}
		ob.reg.Gauge("vfsd_worker_resumed", "1 when this worker resumed from a predecessor's state.",
			func() float64 { return resumed })
	}
	return ob
}

// start opens the listeners and serves them (before the seccomp filter:
// socket, bind and listen are not in it). The same address for both serves
// one mux.
func (ob *observer) start(o Options, log *slog.Logger) error {
	muxes := map[string]*http.ServeMux{}
	mux := func(addr string) *http.ServeMux {
		if m, ok := muxes[addr]; ok {
			return m
		}
		m := http.NewServeMux()
		muxes[addr] = m
		return m
	}
	if o.PprofAddr != "" {
		m := mux(o.PprofAddr)
		m.HandleFunc("/debug/pprof/", pprof.Index)
		m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		m.HandleFunc("/debug/pprof/profile", pprof.Profile)
		m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if o.MetricsAddr != "" {
		mux(o.MetricsAddr).Handle("/metrics", ob.reg)
	}
	for addr, m := range muxes {
		l, err := o.listener(addr)
		if err != nil {
			ob.close()
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		ob.listeners = append(ob.listeners, l)
		srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		ob.wg.Add(1)
		go func() {
			defer ob.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Warn("pprof/metrics server stopped", "addr", addr, "err", err)
			}
		}()
		log.Info("serving pprof/metrics", "addr", l.Addr().String(), "pprof", addr == o.PprofAddr,
			"metrics", addr == o.MetricsAddr)
	}
	return nil
}

// close stops accepting (connections being served end with the process).
func (ob *observer) close() {
	for _, l := range ob.listeners {
		l.Close()
	}
	ob.wg.Wait()
	ob.listeners = nil
}

// storeCounter is the worker's fd-store client counting what the store
// holds for it: the fds handed over at start plus those stored since,
// minus those removed (names are unique in what a worker stores; Remove
// drops every fd of a name).
type storeCounter struct {
	s fdStore

	mu     sync.Mutex
	byName map[string]int // +checklocks:mu
	n      int            // +checklocks:mu
}

func newStoreCounter(s fdStore, handed []fdstore.NamedFD) *storeCounter {
	c := &storeCounter{s: s, byName: make(map[string]int, len(handed))}
	for _, f := range handed {
		c.byName[f.Name]++
	}
	c.n = len(handed)
	return c
}

func (c *storeCounter) Store(name string, fds ...int) error {
	err := c.s.Store(name, fds...)
	if err == nil {
		c.count(nil, []string{name}, len(fds))
	}
	return err
}

func (c *storeCounter) Remove(name string) error {
	err := c.s.Remove(name)
	if err == nil {
		c.count([]string{name}, nil, 0)
	}
	return err
}

// count applies what the store did: the names removed, then each fds
// stored under every name of stored.
func (c *storeCounter) count(removed, stored []string, each int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range removed {
		c.n -= c.byName[r]
		delete(c.byName, r)
	}
	for _, name := range stored {
		c.byName[name] += each
		c.n += each
	}
}

// batchCounter is a storeCounter that also sends batches, for a worker
// whose supervisor applies them (fdstore.EnvBatch); the passthrough queues
// its fd-store traffic only through one (passthrough.BatchStore).
type batchCounter struct{ *storeCounter }

// SendBatch forwards a batch (fdstore.Client.SendBatch) and counts it.
func (c batchCounter) SendBatch(removes, names []string, fds []int) error {
	b, ok := c.s.(passthrough.BatchStore)
	if !ok {
		return errors.New("fd store: batches not supported")
	}
	err := b.SendBatch(removes, names, fds)
	if err == nil {
		c.count(removes, names, 1)
	}
	return err
}

// Len is the number of fds in the store for this worker.
func (c *storeCounter) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// tableStats is implemented by a filesystem that reports its map tables'
// occupancy (engine/passthrough: inode and handle maptables, Len and Cap).
type tableStats interface {
	TableStats() (inodes, inodesCap, handles, handlesCap int)
}

// register adds the values only the worker knows: the fd store (st.stored,
// supervised only), store errors and the filesystem's map tables.
func (ob *observer) register(fs any, st *state) {
	r := ob.reg
	if r == nil {
		return
	}
	if st != nil && st.stored != nil {
		r.Gauge("vfsd_stored_fds", "Fds this worker keeps in the supervisor's fd store.",
			func() float64 { return float64(st.stored.Len()) })
	}
	if e, ok := fs.(interface{ StoreErrors() uint64 }); ok {
		r.Counter("vfsd_fdstore_errors_total", "Fd store calls that failed (those fds would not survive a restart).",
			func() float64 { return float64(e.StoreErrors()) })
	}
	if t, ok := fs.(tableStats); ok {
		get := func(i int) func() float64 {
			return func() float64 {
				v := [4]int{}
				v[0], v[1], v[2], v[3] = t.TableStats()
				return float64(v[i])
			}
		}
		r.Gauge("vfsd_inode_table_entries", "Entries in the inode map table.", get(0))
		r.Gauge("vfsd_inode_table_capacity", "Capacity of the inode map table.", get(1))
		r.Gauge("vfsd_handle_table_entries", "Entries in the handle map table.", get(2))
		r.Gauge("vfsd_handle_table_capacity", "Capacity of the handle map table.", get(3))
	}
}
