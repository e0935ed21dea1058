package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"vfsd/engine/supervisor"
)

// The control socket: a unix stream socket (mode 0600) where each
// connection sends one command line and gets one line back.
//
//	status   -> a JSON object (Status)
//	upgrade  -> "ok" once the new worker took the session, or "error: ..."
//
// Anything else gets "error: unknown command".

// Status is the answer to "status".
type Status struct {
	State         string  `json:"state"` // "waiting" (for the frontend) or "running"
	SupervisorPID int     `json:"supervisor_pid"`
	WorkerPID     int     `json:"worker_pid"`
	UptimeS       float64 `json:"uptime_s"`
	WorkerUptimeS float64 `json:"worker_uptime_s"`
	Restarts      int64   `json:"restarts"`
	Crashes       int64   `json:"crashes"`
	Upgrades      int64   `json:"upgrades"`
	StoredFDs     int     `json:"stored_fds"`
	LastStallMS   float64 `json:"last_stall_ms"` // last restart/upgrade: worker stop to first replayed ack
	// Queues: vrings the frontend started (the supervisor's session record).
	Queues int `json:"queues"`
	// Requests: answered by every worker of the session, counted by the
	// workers in a memfd kept in the fd store (survives worker crashes).
	Requests Requests `json:"requests"`
}

// Requests is the request count in Status: total and per ring (index 0 is
// the hiprio queue, then the request queues; empty before the first worker
// stored its counters).
type Requests struct {
	Total    uint64   `json:"total"`
	PerQueue []uint64 `json:"per_queue"`
}

type control struct {
	path  string
	ln    *net.UnixListener
	log   *slog.Logger
	start time.Time
	wg    sync.WaitGroup

	mu  sync.Mutex
	sup *supervisor.Supervisor
}

// newControl listens on path ("" : no control socket).
func newControl(path string, log *slog.Logger) (*control, error) {
	c := &control{path: path, log: log, start: time.Now()}
	if path == "" {
		return c, nil
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	c.ln = ln
	c.wg.Add(1)
	go c.serve()
	return c, nil
}

func (c *control) attach(s *supervisor.Supervisor) {
	c.mu.Lock()
	c.sup = s
	c.mu.Unlock()
}

func (c *control) close() {
	if c.ln == nil {
		return
	}
	c.ln.Close()
	os.Remove(c.path)
	c.wg.Wait()
}

func (c *control) serve() {
	defer c.wg.Done()
	for {
		conn, err := c.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				c.log.Warn("control socket accept", "err", err)
			}
			return
		}
		go c.handle(conn)
	}
}

func (c *control) handle(conn *net.UnixConn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(conn, 256)).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	conn.SetReadDeadline(time.Time{})
	fmt.Fprintln(conn, c.answer(strings.TrimSpace(line)))
}

func (c *control) answer(cmd string) string {
	c.mu.Lock()
	s := c.sup
	c.mu.Unlock()
	switch cmd {
	case "status":
		st := Status{State: "waiting", SupervisorPID: os.Getpid(), UptimeS: time.Since(c.start).Seconds()}
		if s != nil {
			x := s.Stats()
			st.State = "running"
			st.WorkerPID, st.WorkerUptimeS = x.WorkerPID, x.WorkerUptime.Seconds()
			st.Restarts, st.Crashes, st.Upgrades = x.Restarts, x.Crashes, x.Upgrades
			st.StoredFDs = x.StoredFDs
			st.LastStallMS = float64(x.LastStall) / float64(time.Millisecond)
			st.Queues = x.Queues
			st.Requests = Requests{Total: x.Requests, PerQueue: x.RequestsPerQueue}
		}
		if st.Requests.PerQueue == nil {
			st.Requests.PerQueue = []uint64{}
		}
		b, _ := json.Marshal(st)
		return string(b)
	case "upgrade":
		if s == nil {
			return "error: no frontend connected yet"
		}
		if err := s.Upgrade(); err != nil {
			return "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		return "ok"
	}
	return "error: unknown command"
}

// Query sends one command to the control socket at path and returns the
// answer line.
func Query(path, cmd string, timeout time.Duration) (string, error) {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(conn, cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("control socket %s: %w", path, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// runControlClient is "vfsd status|upgrade --socket-path=S|--control-socket=C".
func runControlClient(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vfsd "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c config
	fs.StringVar(&c.SocketPath, "socket-path", "", "")
	fs.StringVar(&c.ControlSocket, "control-socket", "", "")
	timeout := fs.Duration("timeout", 60*time.Second, "")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		if err == nil {
			err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		fmt.Fprintf(stderr, "vfsd %s: %v\n", cmd, err)
		return 2
	}
	path := c.controlPath()
	if path == "" {
		fmt.Fprintf(stderr, "vfsd %s: give --socket-path or --control-socket\n", cmd)
		return 2
	}
	ans, err := Query(path, cmd, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "vfsd %s: %v\n", cmd, err)
		return 1
	}
	fmt.Fprintln(stdout, ans)
	if strings.HasPrefix(ans, "error:") {
		return 1
	}
	return 0
}
