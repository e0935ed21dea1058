package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
	"vfsd/engine/metrics"
)

// Defaults for Config.
const (
	DefaultMaxRestarts   = 10
	DefaultRestartWindow = 60 * time.Second
	DefaultBackoffMin    = 5 * time.Millisecond
	DefaultBackoffMax    = time.Second
	DefaultStopGrace     = 500 * time.Millisecond
	DefaultReplyTimeout  = 30 * time.Second
	// quitGrace is how long a worker that did not answer in time has to
	// print its goroutines after SIGQUIT before SIGKILL.
	quitGrace = 2 * time.Second
)

// Config configures a Supervisor.
type Config struct {
	// FrontendFD is the accepted vhost-user connection (QEMU). The
	// supervisor takes ownership of it, whatever Run returns.
	FrontendFD int
	// WorkerPath is the worker binary; "" means os.Executable(), resolved
	// once in New (Upgrade re-executes the same path, i.e. the binary now on
	// disk there).
	WorkerPath string
	// WorkerArgs are the worker's arguments (without argv[0]); the
	// supervisor appends "--vhost-fd=N", so they must accept a trailing flag.
	WorkerArgs []string
	// Env is the worker's base environment; nil means os.Environ(). The
	// supervisor's control variables are removed from it and set anew.
	Env []string
	// Stdout and Stderr of the worker; nil means the supervisor's.
	Stdout, Stderr *os.File
	// PrepareWorker, if set, adjusts each worker's command just before it
	// starts (after its args, env, fds and SysProcAttr are set): e.g. the
	// namespaces of engine/sandbox. It may append to ExtraFiles (the
	// user-namespace handshake socket of engine/sandbox/userns.go) but must
	// not change the entries there: their numbers are already in the
	// worker's arguments and environment (LISTEN_FDS, --vhost-fd, the
	// notify fd).
	PrepareWorker func(*exec.Cmd)

	// Inherit are fds every worker receives after the stored ones, named in
	// LISTEN_FDNAMES like them but not in the store (e.g. the listeners of
	// --metrics-addr, opened once by the caller outside any sandbox). They
	// stay the caller's: each worker gets duplicates.
	Inherit []fdstore.NamedFD

	// Crash budget: more than MaxRestarts worker deaths within
	// RestartWindow stop the supervisor.
	MaxRestarts   int
	RestartWindow time.Duration
	// Backoff before a restart: BackoffMin<<(k-1), at most BackoffMax, where
	// k counts the deaths within the window since a worker last lived at
	// least BackoffMax. A worker that served that long was not in a crash
	// loop, so the next restart is quick again (the crash budget still
	// bounds how often).
	BackoffMin, BackoffMax time.Duration
	// StopGrace is how long a worker has to exit after SIGTERM.
	StopGrace time.Duration
	// ReplyTimeout: a worker that does not answer a message within it is
	// killed and replaced (counts as a crash). Negative disables it.
	ReplyTimeout time.Duration

	// MaxStoredFDs caps the fd store (0: fdstore.DefaultMaxFDs).
	MaxStoredFDs int
	// Upstream, if set, is systemd's notify socket (fdstore.FromEnv(true)):
	// stores are mirrored there, READY/STATUS/WATCHDOG are forwarded.
	Upstream *fdstore.Client
	// Restored are fds systemd handed back (fdstore.SplitUpstream of
	// fdstore.ListenFDs); they are put in the store and given to the first
	// worker. The supervisor takes ownership.
	Restored []fdstore.NamedFD

	Logger *slog.Logger
}

// Stats is a snapshot for `vfsd status`.
type Stats struct {
	Restarts     int64         // completed recoveries (a worker took over the session after a death)
	Crashes      int64         // worker deaths (each is charged to the crash budget)
	Upgrades     int64         // completed live upgrades
	StoredFDs    int           // fds in the store
	WorkerPID    int           // current worker, 0 if none
	Uptime       time.Duration // since Run started
	WorkerUptime time.Duration // since the current worker started
	LastStall    time.Duration // last restart/upgrade: stop to first replayed ack
	// Queues is the number of started vrings (SET_VRING_KICK seen, no
	// GET_VRING_BASE since), from the session record.
	Queues int
	// Requests and RequestsPerQueue are the requests answered by every
	// worker of the session, from the workers' request counter memfd
	// (metrics.SharedName in the fd store; counted per ring, hiprio first).
	// RequestsPerQueue is nil before a worker stored it.
	Requests         uint64
	RequestsPerQueue []uint64
}

// Supervisor keeps one frontend connection across worker deaths.
type Supervisor struct {
	cfg   Config
	path  string
	log   *slog.Logger
	store *fdstore.Server

	front     *msgConn
	frontCh   chan *Msg
	frontErr  error         // valid once frontCh is closed
	frontEOF  chan struct{} // closed when the frontend reader stops reading
	stopFront chan struct{}

	sess      *session
	w         *worker     // main goroutine only
	crashes   []time.Time // deaths within the window
	quick     int         // deaths since a worker last lived BackoffMax (with crashes, sets the backoff)
	upgradeCh chan chan error
	done      chan struct{}

	mu        sync.Mutex // guards the fields below (read by Stats)
	cur       *worker
	startedAt time.Time
	lastStall time.Duration
	reqs      *metrics.Shared // read-only map of the workers' request counters
	reqsIno   uint64          // its inode (a new memfd under the name is mapped anew)

	queues                     atomic.Int32 // s.sess.startedRings(), for Stats
	restarts, upgrades, deaths atomic.Int64
	readySent                  atomic.Bool
}

var (
	errRetired       = errors.New("worker retired")
	errWorkerDied    = errors.New("worker died")
	errFrontendGone  = errors.New("frontend connection closed")
	errShutdown      = errors.New("shutting down")
	ErrNotRunning    = errors.New("supervisor: not running")
	ErrBudgetExhaust = errors.New("supervisor: crash budget exhausted")
)

// New validates cfg and fills in defaults. On error the frontend fd and the
// restored fds are closed.
func New(cfg Config) (*Supervisor, error) {
	fail := func(err error) (*Supervisor, error) {
		closeAll([]int{cfg.FrontendFD})
		for _, f := range cfg.Restored {
			closeAll([]int{f.FD})
		}
		return nil, err
	}
	if cfg.FrontendFD < 0 {
		cfg.FrontendFD = -1
		return fail(errors.New("supervisor: no frontend fd"))
	}
	path := cfg.WorkerPath
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return fail(fmt.Errorf("supervisor: resolve worker binary: %w", err))
		}
		path = exe
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.MaxRestarts <= 0 {
		cfg.MaxRestarts = DefaultMaxRestarts
	}
	if cfg.RestartWindow <= 0 {
		cfg.RestartWindow = DefaultRestartWindow
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.ReplyTimeout == 0 {
		cfg.ReplyTimeout = DefaultReplyTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Supervisor{
		cfg: cfg, path: path, log: cfg.Logger,
		upgradeCh: make(chan chan error),
		done:      make(chan struct{}),
		frontCh:   make(chan *Msg),
		stopFront: make(chan struct{}),
		frontEOF:  make(chan struct{}),
	}
	s.sess = newSession(s.log.Warn)
	s.store = fdstore.NewServer(fdstore.Config{
		MaxFDs: cfg.MaxStoredFDs, Logger: s.log, Upstream: cfg.Upstream,
		OnMessage: s.onWorkerNotify, Coalesce: storeCoalesce,
	})
	if err := s.store.Adopt(cfg.Restored); err != nil {
		s.log.Warn("some restored fds were not adopted", "err", err)
	}
	front, err := newMsgConn(cfg.FrontendFD, "frontend")
	if err != nil {
		s.store.Close()
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	s.front = front
	return s, nil
}

// Run is New followed by Supervisor.Run.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// storeCoalesce is how long the fd store's reader waits between reads of
// the worker's notify socket. A worker stores or removes an fd for every
// CREATE, RELEASE, last-link UNLINK and FORGET of such an inode; read one
// by one, each datagram woke the supervisor, which on a 2-core host cost
// as much CPU as serving the request (create at depth 32: 231 µs/op
// against 71 µs/op without recovery). Stores are durable once sent (they
// sit in the socket, and Drain reads them after a crash), so reading later
// loses nothing; 1 ms keeps the queued datagrams well inside the worker's
// socket send buffer at any request rate seen here.
const storeCoalesce = time.Millisecond

// onWorkerNotify forwards the worker's state notifications upstream.
func (s *Supervisor) onWorkerNotify(m fdstore.Message) {
	up := s.cfg.Upstream
	if m.Ready && !s.readySent.Swap(true) && up != nil {
		if err := up.Ready(); err != nil {
			s.log.Warn("notify READY=1 upstream", "err", err)
		}
	}
	if m.Watchdog && up != nil {
		_ = up.Watchdog()
	}
	if m.HasStatus && up != nil {
		_ = up.Status("worker: " + m.Status)
	}
	if m.Errno != 0 {
		s.log.Warn("worker reported an error", "errno", m.Errno)
	}
}

// Stats returns a snapshot of the metrics. Safe to call from any goroutine.
func (s *Supervisor) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Restarts:  s.restarts.Load(),
		Crashes:   s.deaths.Load(),
		Upgrades:  s.upgrades.Load(),
		StoredFDs: s.store.Len(),
		LastStall: s.lastStall,
		Queues:    int(s.queues.Load()),
	}
	if r := s.requestCountersLocked(); r != nil {
		st.Requests, st.RequestsPerQueue = r.Counts()
	}
	if !s.startedAt.IsZero() {
		st.Uptime = time.Since(s.startedAt)
	}
	if s.cur != nil {
		st.WorkerPID = s.cur.pid
		st.WorkerUptime = time.Since(s.cur.started)
	}
	return st
}

// requestCountersLocked maps the request counter memfd the worker stored
// (read-only; kept across calls while the store holds the same memfd).
// The entry's fd is only used right away: the mapping does not need it, and
// its layout is checked, so a memfd replaced meanwhile is at worst not shown.
func (s *Supervisor) requestCountersLocked() *metrics.Shared {
	fd := -1
	for _, e := range s.store.Entries() {
		if e.Name == metrics.SharedName {
			fd = e.FD // the newest
		}
	}
	if fd < 0 {
		return s.reqs // none (yet, or removed): keep showing the last counts
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return s.reqs
	}
	if s.reqs != nil && st.Ino == s.reqsIno {
		return s.reqs
	}
	r, err := metrics.OpenShared(fd, 0, false)
	if err != nil {
		s.log.Debug("request counters", "err", err)
		return s.reqs
	}
	s.reqs.Close()
	s.reqs, s.reqsIno = r, st.Ino
	return r
}

func (s *Supervisor) setWorker(w *worker) {
	s.w = w
	s.mu.Lock()
	s.cur = w
	s.mu.Unlock()
}

// signalWorker sends sig to the current worker (tests, operators).
func (s *Supervisor) signalWorker(sig os.Signal) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return 0
	}
	s.cur.signal(sig)
	return s.cur.pid
}

// Upgrade replaces the worker with the binary now at the worker path,
// through the crash-recovery hand-over, and returns once the new worker has
// the session (or the attempt failed). Safe to call from any goroutine (e.g.
// on SIGHUP).
func (s *Supervisor) Upgrade() error {
	ch := make(chan error, 1)
	select {
	case s.upgradeCh <- ch:
	case <-s.done:
		return ErrNotRunning
	}
	select {
	case err := <-ch:
		return err
	case <-s.done:
		return ErrNotRunning
	}
}

// Run relays the frontend connection to workers until the frontend closes
// it or ctx is cancelled (nil), the crash budget is exhausted (an error
// wrapping ErrBudgetExhaust), or the frontend breaks the framing (an error). Every fd is closed and the worker reaped
// before it returns. Run may be called once.
func (s *Supervisor) Run(ctx context.Context) (err error) {
	s.mu.Lock()
	s.startedAt = time.Now()
	s.mu.Unlock()
	defer close(s.done)
	defer s.shutdown()
	go s.readFrontend()

	w, err := s.spawn(false)
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	s.setWorker(w)
	for {
		err := s.step(ctx)
		switch {
		case err == nil:
			continue
		case errors.Is(err, errFrontendGone), errors.Is(err, errShutdown):
			return nil
		default:
			s.log.Error("supervisor stopping", "err", err)
			return err
		}
	}
}

// step handles one event of the main loop.
func (s *Supervisor) step(ctx context.Context) error {
	select {
	case <-ctx.Done():
		s.log.Info("supervisor stopping: context cancelled")
		return errShutdown
	case m, ok := <-s.frontCh:
		if !ok {
			switch {
			case s.frontErr == io.EOF, errors.Is(s.frontErr, syscall.ECONNRESET):
				s.log.Info("frontend closed the connection")
				return errFrontendGone
			default:
				return fmt.Errorf("supervisor: frontend: %w", s.frontErr)
			}
		}
		return s.relay(ctx, m)
	case m, ok := <-s.w.replies:
		var reason string
		if ok {
			reason = "unsolicited message " + m.String()
			closeAll(m.FDs)
		} else {
			reason = fmt.Sprintf("vhost-user connection ended: %v", s.w.readErr)
		}
		return s.recover(ctx, reason)
	case <-s.w.exited:
		return s.recover(ctx, "process exited")
	case ch := <-s.upgradeCh:
		err := s.upgrade(ctx)
		ch <- err
		if errors.Is(err, ErrBudgetExhaust) || errors.Is(err, errShutdown) || errors.Is(err, errFrontendGone) {
			return err
		}
		return nil
	}
}

func (s *Supervisor) readFrontend() {
	defer close(s.frontCh)
	defer close(s.frontEOF)
	for {
		m, err := s.front.ReadMsg()
		if err != nil {
			s.frontErr = err
			return
		}
		select {
		case s.frontCh <- m:
		case <-s.stopFront:
			closeAll(m.FDs)
			s.frontErr = errShutdown
			return
		}
	}
}

// relay forwards one frontend message and, when one is due, its reply.
// A message with a reply is kept (fds included) until the reply arrives, and
// re-sent to the next worker if the current one dies first. The session
// records a request when it is sent (no reply due) or when it is
// acknowledged, so a replay never includes an unanswered request.
func (s *Supervisor) relay(ctx context.Context, m *Msg) error {
	defer func() { closeAll(m.FDs) }()
	if !s.sess.expectsReply(m) {
		// Send before recording: applyRequest takes the fds it keeps out of
		// m.FDs, and WriteMsg skips taken entries.
		if err := s.w.conn.WriteMsg(m); err != nil {
			// Recorded state is replayed; the death is handled by step.
			s.log.Debug("write to worker failed", "msg", m.String(), "err", err)
		}
		s.sess.applyRequest(m)
		s.queues.Store(int32(s.sess.startedRings()))
		return nil
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.log.Info("re-sending the message the dead worker had not answered", "msg", m.String(), "pid", s.w.pid)
		}
		if err := s.w.conn.WriteMsg(m); err == nil {
			rep, err := s.awaitReply(ctx, s.w, m)
			if err == nil {
				return s.forwardReply(m, rep)
			}
			if !errors.Is(err, errWorkerDied) {
				return err
			}
		}
		if err := s.recover(ctx, "died with "+m.String()+" in flight"); err != nil {
			return err
		}
	}
}

func (s *Supervisor) forwardReply(req, rep *Msg) error {
	maskReply(rep)
	err := s.front.WriteMsg(rep)
	s.sess.applyReply(req, rep)
	s.queues.Store(int32(s.sess.startedRings()))
	closeAll(rep.FDs)
	if err != nil {
		s.log.Info("frontend write failed", "err", err)
		return errFrontendGone
	}
	return nil
}

// awaitReply waits for w's reply to req. It returns errWorkerDied if w died
// (or misbehaved and was killed) without a reply.
func (s *Supervisor) awaitReply(ctx context.Context, w *worker, req *Msg) (*Msg, error) {
	var timeout <-chan time.Time
	if s.cfg.ReplyTimeout > 0 {
		t := time.NewTimer(s.cfg.ReplyTimeout)
		defer t.Stop()
		timeout = t.C
	}
	check := func(rep *Msg, ok bool) (*Msg, error) {
		if !ok {
			return nil, errWorkerDied
		}
		if rep.Req != req.Req || rep.Flags&flagReply == 0 {
			s.log.Error("worker sent a wrong reply; killing it", "pid", w.pid, "want", reqName(req.Req), "got", rep.String())
			closeAll(rep.FDs)
			w.signal(os.Kill)
			return nil, errWorkerDied
		}
		return rep, nil
	}
	select {
	case rep, ok := <-w.replies:
		return check(rep, ok)
	case <-w.exited:
		// The reply may have been written just before the death: the
		// socket still holds it, and the reader reaches EOF right after.
		t := time.NewTimer(200 * time.Millisecond)
		defer t.Stop()
		select {
		case rep, ok := <-w.replies:
			return check(rep, ok)
		case <-t.C:
			return nil, errWorkerDied
		}
	case <-timeout:
		s.log.Error("worker did not answer in time; killing it (SIGQUIT first: its goroutines go to the log)",
			"pid", w.pid, "msg", req.String(), "timeout", s.cfg.ReplyTimeout)
		// A hung worker is a bug to find: the Go runtime answers SIGQUIT
		// with every goroutine's stack on stderr, then exits.
		w.signalWait(syscall.SIGQUIT, quitGrace)
		w.signal(os.Kill)
		return nil, errWorkerDied
	case <-ctx.Done():
		return nil, errShutdown
	}
}

// recover replaces a dead (or misbehaving) worker: it reaps it, drains the
// fd store, charges the crash budget, backs off, starts a worker in resume
// mode and replays the session to it, until one takes it.
func (s *Supervisor) recover(ctx context.Context, reason string) error {
	if time.Since(s.w.started) >= s.cfg.BackoffMax {
		s.quick = 0
	}
	for {
		old := s.w
		stopped := time.Now()
		if old.alive() {
			// The connection ended or misbehaved first; a dying worker is
			// usually reaped a moment later.
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-old.exited:
			case <-t.C:
				s.log.Warn("killing a worker whose connection failed", "pid", old.pid, "reason", reason)
			}
			t.Stop()
		}
		s.retire(old, false)
		s.store.Drain()
		now := time.Now()
		keep := s.crashes[:0]
		for _, t := range s.crashes {
			if now.Sub(t) < s.cfg.RestartWindow {
				keep = append(keep, t)
			}
		}
		s.crashes = append(keep, now)
		s.quick++
		backoff := s.cfg.BackoffMin
		for i := 1; i < min(s.quick, len(s.crashes)) && backoff < s.cfg.BackoffMax; i++ {
			backoff *= 2
		}
		backoff = min(backoff, s.cfg.BackoffMax)
		s.log.Warn("worker died", "pid", old.pid, "how", old.exitDesc(), "reason", reason,
			"lived", stopped.Sub(old.started).Round(time.Millisecond), "backoff", backoff)
		s.deaths.Add(1)
		if n := len(s.crashes); n > s.cfg.MaxRestarts {
			msg := fmt.Sprintf("worker crashed %d times in %v; giving up", n, s.cfg.RestartWindow)
			s.log.Error(msg)
			if s.cfg.Upstream != nil {
				_ = s.cfg.Upstream.Status(msg)
			}
			return fmt.Errorf("%w: %s", ErrBudgetExhaust, msg)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return errShutdown
		case <-s.frontEOF:
			t.Stop()
			s.log.Info("frontend closed the connection during a worker restart")
			return errFrontendGone
		}
		w, err := s.spawn(true)
		if err != nil {
			s.log.Error("restarting worker failed", "err", err)
			reason = err.Error()
			continue // old is retired; the loop charges the budget again
		}
		s.setWorker(w)
		ack, err := s.replayTo(ctx, w)
		if err != nil {
			if errors.Is(err, errShutdown) {
				return err
			}
			reason = "replay: " + err.Error()
			continue
		}
		s.restarts.Add(1)
		s.mu.Lock()
		s.lastStall = ack.Sub(stopped)
		s.mu.Unlock()
		s.log.Info("worker restarted", "pid", w.pid, "restarts", s.restarts.Load(),
			"stall", ack.Sub(stopped).Round(time.Microsecond), "stored_fds", s.store.Len())
		if s.cfg.Upstream != nil {
			_ = s.cfg.Upstream.Status(fmt.Sprintf("worker restarted (pid %d, %d restarts)", w.pid, s.restarts.Load()))
		}
		return nil
	}
}

// upgrade replaces a healthy worker (no message in flight: the main loop is
// between messages) with a fresh start of the worker binary.
func (s *Supervisor) upgrade(ctx context.Context) error {
	old := s.w
	stopped := time.Now()
	s.log.Info("upgrade: stopping worker", "pid", old.pid)
	s.retire(old, true)
	s.store.Drain()
	s.log.Info("upgrade: worker stopped", "pid", old.pid, "how", old.exitDesc())
	w, err := s.spawn(true)
	if err != nil {
		s.log.Error("upgrade: starting the new worker failed", "err", err)
		if rerr := s.recover(ctx, "upgrade start failed"); rerr != nil {
			return rerr
		}
		return fmt.Errorf("upgrade: %w (recovered by a restart)", err)
	}
	s.setWorker(w)
	ack, err := s.replayTo(ctx, w)
	if err != nil {
		if errors.Is(err, errShutdown) {
			return err
		}
		if rerr := s.recover(ctx, "upgrade replay: "+err.Error()); rerr != nil {
			return rerr
		}
		return fmt.Errorf("upgrade: replay: %w (recovered by a restart)", err)
	}
	s.upgrades.Add(1)
	s.mu.Lock()
	s.lastStall = ack.Sub(stopped)
	s.mu.Unlock()
	s.log.Info("upgrade complete", "old_pid", old.pid, "pid", w.pid,
		"stall", ack.Sub(stopped).Round(time.Microsecond),
		"total", time.Since(stopped).Round(time.Microsecond))
	return nil
}

// replayTo sends the session record to a fresh worker, consuming the
// replies itself. It returns when the first replayed message was
// acknowledged.
func (s *Supervisor) replayTo(ctx context.Context, w *worker) (firstAck time.Time, err error) {
	msgs := s.sess.replay()
	for _, m := range msgs {
		if err := w.conn.WriteMsg(m); err != nil {
			return firstAck, fmt.Errorf("%w: write %s: %v", errWorkerDied, m, err)
		}
		if !alwaysReplies(m.Req) && m.Flags&flagNeedReply == 0 {
			continue
		}
		rep, err := s.awaitReply(ctx, w, m)
		if err != nil {
			return firstAck, err
		}
		if firstAck.IsZero() {
			firstAck = time.Now()
		}
		switch m.Req {
		case reqGetFeatures, reqGetProtocolFeatures:
			maskReply(rep)
			if miss := s.sess.checkOffer(rep); miss != "" {
				s.log.Error("new worker does not offer what the frontend negotiated", "pid", w.pid, "problem", miss)
			}
		default:
			if v, ok := rep.u64(); !ok || v != 0 {
				s.log.Error("new worker rejected a replayed message", "pid", w.pid, "msg", m.String(), "status", v)
			}
		}
		closeAll(rep.FDs)
	}
	s.log.Debug("session replayed", "pid", w.pid, "messages", len(msgs))
	return firstAck, nil
}

// shutdown stops the worker, closes every fd and clears the store.
func (s *Supervisor) shutdown() {
	s.retire(s.w, true)
	s.setWorker(nil)
	close(s.stopFront)
	s.front.Close()
	for m := range s.frontCh {
		closeAll(m.FDs)
	}
	s.store.RemoveAll()
	s.store.Close()
	s.sess.close()
	s.queues.Store(0)
	s.mu.Lock()
	s.reqs.Close()
	s.reqs = nil
	s.mu.Unlock()
}
