// Package worker serves one vhost-user connection: it creates the
// passthrough filesystem over the shared directory, the data plane that runs
// its queues, and the vhost-user device, then handles the frontend's
// messages until the frontend disconnects, and shuts everything down.
//
// It owns Options (what cmd/vfsd parses from the command line, with
// validation) and Run. The connection comes from a unix socket path it
// listens on, an inherited listening socket (--fd), or an inherited
// connected socket (--vhost-fd); like virtiofsd it accepts exactly one
// connection.
//
// Supervised mode (supervised.go, state.go): as a child of
// engine/supervisor the worker keeps what must survive it in memfds held by
// the supervisor's fd store: its ring state (state.worker: which rings have
// their position in the inflight region) and the inflight region of every
// ring (state.inflight), plus whatever the filesystem stores (maptables,
// journal, open fds). On a restart (VFSD_RESUME=1) it maps them back,
// refusing (ErrState) anything whose magic, version or layout does not
// match, and the device resumes every ring that was running from the
// inflight region: in-flight requests are served again (Request.Resumed)
// before new ones, and the driver is notified once.
//
// The last step of start-up, in both modes, is the seccomp filter
// (lockdown.go, Options.Seccomp, kill by default): everything the worker
// needs before serving (the connection, state memfds, the filesystem, the
// fd-store client, the pprof and metrics listeners of observe.go) exists
// by then. observe.go serves net/http/pprof and Prometheus /metrics
// (engine/metrics, recorded by the data plane) on loopback or unix-socket
// addresses only.
//
// Shutdown order when the frontend disconnects (or ctx is cancelled, which
// shuts the socket down): cancel blocking waits in the filesystem, stop the
// queues (each waits for its in-flight requests), unmap guest memory, close
// the filesystem, remove the socket file.
package worker
