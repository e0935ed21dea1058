package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/engine/fdstore"
)

// Environment and flags a worker receives (see the package doc).
const (
	EnvResume = "VFSD_RESUME"
	// EnvRestarts: the crash restarts the supervisor completed before
	// starting this worker (engine/worker's vfsd_restarts_total).
	EnvRestarts = "VFSD_RESTARTS"
	VhostFDArg  = "--vhost-fd"
)

// worker is one running worker process and the supervisor's end of its
// vhost-user socketpair.
type worker struct {
	cmd     *exec.Cmd
	pid     int
	conn    *msgConn
	started time.Time

	replies    chan *Msg     // messages from the worker; closed when the reader stops
	readErr    error         // why the reader stopped; valid once replies is closed
	exited     chan struct{} // closed once the process was reaped
	waitErr    error         // valid once exited is closed
	stop       chan struct{} // closed by retire: the reader drops what it reads
	readerDone chan struct{}
	retired    bool
}

// controlEnv lists the variables the supervisor sets for the worker; any
// inherited value is removed first.
var controlEnv = []string{
	fdstore.EnvNotifySocket, fdstore.EnvNotifyFD, fdstore.EnvListenFDs,
	fdstore.EnvListenPID, fdstore.EnvListenFDNames, fdstore.EnvListenChild, EnvResume, EnvRestarts,
	fdstore.EnvBatch,
}

func workerEnv(base []string) []string {
	out := make([]string, 0, len(base)+6)
next:
	for _, kv := range base {
		for _, k := range controlEnv {
			if strings.HasPrefix(kv, k+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// inherit adds duplicates of the Config.Inherit fds after the stored fds
// files and rewrites the LISTEN_FDS environment (fdstore.ChildFiles) to
// name them all. On error the files are the caller's to close.
func inherit(env []string, files []*os.File, extra []fdstore.NamedFD) ([]string, []*os.File, error) {
	if len(extra) == 0 {
		return env, files, nil
	}
	var names []string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, fdstore.EnvListenFDNames+"="); ok && v != "" {
			names = strings.Split(v, ":")
		}
	}
	if len(names) != len(files) {
		return env, files, fmt.Errorf("worker fds: %d stored fds, %d names", len(files), len(names))
	}
	for _, e := range extra {
		nfd, err := unix.FcntlInt(uintptr(e.FD), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return env, files, fmt.Errorf("worker fds: dup %q: %w", e.Name, err)
		}
		files = append(files, os.NewFile(uintptr(nfd), e.Name))
		names = append(names, e.Name)
	}
	return []string{
		fdstore.EnvListenFDs + "=" + strconv.Itoa(len(files)),
		fdstore.EnvListenFDNames + "=" + strings.Join(names, ":"),
		fdstore.EnvListenChild + "=1",
	}, files, nil
}

// spawn starts a worker. Its fds: 3.. the stored fds (LISTEN_FDS) and the
// Config.Inherit fds, then the
// vhost-user socket (--vhost-fd=N), then the notify socket (VFSD_NOTIFY_FD).
func (s *Supervisor) spawn(resume bool) (*worker, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("worker socketpair: %w", err)
	}
	peer := os.NewFile(uintptr(sp[1]), "vhost-user")
	defer peer.Close()
	conn, err := newMsgConn(sp[0], "worker-vhost-user")
	if err != nil {
		return nil, err
	}
	notify, err := s.store.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer notify.Close()
	listenEnv, files, err := s.store.ChildFiles()
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if listenEnv, files, err = inherit(listenEnv, files, s.cfg.Inherit); err != nil {
		conn.Close()
		return nil, err
	}
	vhostFD := fdstore.ListenFDsStart + len(files)
	args := append(append([]string(nil), s.cfg.WorkerArgs...), VhostFDArg+"="+strconv.Itoa(vhostFD))
	cmd := exec.Command(s.path, args...)
	cmd.Env = append(workerEnv(s.cfg.Env), listenEnv...)
	cmd.Env = append(cmd.Env, fdstore.EnvNotifyFD+"="+strconv.Itoa(vhostFD+1), fdstore.EnvBatch+"=1")
	if resume {
		cmd.Env = append(cmd.Env, EnvResume+"=1")
	}
	// For the worker's metrics: crash restarts completed before this start.
	cmd.Env = append(cmd.Env, EnvRestarts+"="+strconv.FormatInt(s.restarts.Load(), 10))
	cmd.ExtraFiles = append(append(files, peer), notify)
	cmd.Stdout, cmd.Stderr = s.cfg.Stdout, s.cfg.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if s.cfg.PrepareWorker != nil {
		s.cfg.PrepareWorker(cmd)
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start worker %s: %w", s.path, err)
	}
	w := &worker{
		cmd: cmd, pid: cmd.Process.Pid, conn: conn, started: time.Now(),
		replies: make(chan *Msg, 4), exited: make(chan struct{}),
		stop: make(chan struct{}), readerDone: make(chan struct{}),
	}
	go func() {
		w.waitErr = cmd.Wait()
		close(w.exited)
	}()
	go w.read()
	s.log.Info("worker started", "pid", w.pid, "resume", resume, "stored_fds", len(files), "vhost_fd", vhostFD)
	return w, nil
}

func (w *worker) read() {
	defer close(w.readerDone)
	defer close(w.replies)
	for {
		m, err := w.conn.ReadMsg()
		if err != nil {
			w.readErr = err
			return
		}
		select {
		case w.replies <- m:
		case <-w.stop:
			closeAll(m.FDs)
			w.readErr = errRetired
			return
		}
	}
}

func (w *worker) signal(sig os.Signal) { _ = w.cmd.Process.Signal(sig) }

// signalWait sends sig and waits up to d for the worker to exit; it reports
// whether it did.
func (w *worker) signalWait(sig os.Signal, d time.Duration) bool {
	w.signal(sig)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.exited:
		return true
	case <-t.C:
		return false
	}
}

func (w *worker) alive() bool {
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

// retire ends the worker and releases everything of it: with graceful, it
// sends SIGTERM and waits up to grace before SIGKILL; otherwise SIGKILL at
// once. It returns once the process is reaped, so that every fd store it
// completed is in the store's socket. Idempotent.
func (s *Supervisor) retire(w *worker, graceful bool) {
	if w == nil || w.retired {
		return
	}
	w.retired = true
	if graceful && w.alive() && !w.signalWait(syscall.SIGTERM, s.cfg.StopGrace) {
		s.log.Warn("worker did not exit after SIGTERM; killing", "pid", w.pid, "grace", s.cfg.StopGrace)
	}
	for w.alive() {
		w.signal(syscall.SIGKILL)
		select {
		case <-w.exited:
		case <-time.After(5 * time.Second):
			s.log.Error("worker not reaped 5s after SIGKILL (uninterruptible sleep?); still waiting", "pid", w.pid)
		}
	}
	close(w.stop)
	w.conn.Close()
	<-w.readerDone
	for m := range w.replies {
		closeAll(m.FDs)
	}
}

// exitDesc describes how a reaped worker ended.
func (w *worker) exitDesc() string {
	st := w.cmd.ProcessState
	if st == nil {
		return fmt.Sprint(w.waitErr)
	}
	return st.String()
}
