// Package supervisor keeps a vhost-user frontend's connection (QEMU's) alive
// across worker deaths and upgrades.
//
// QEMU 7.2's vhost-user-fs-pci never reconnects to a backend, so the process
// that holds QEMU's socket must never die. The supervisor holds it, relays
// every message to a worker process over a socketpair, and records the
// session (features, protocol features, owner, memory regions and their fds,
// per-vring num/addr/base/kick/call/err/enable and started state, the
// backend request fd, the inflight fd, the device status). When the worker
// dies it starts another one in resume mode, replays the session to it, and
// re-sends the message the dead worker had not answered. It parses only
// vhost-user framing and the fields it records: never FUSE, never guest RAM.
//
// The worker's interface (what engine/worker must implement):
//
//	argv:  WorkerArgs... --vhost-fd=N     (appended last)
//	fd 3 .. N-1:  stored fds, LISTEN_FDS=N-3, LISTEN_FDNAMES=a:b:...,
//	              VFSD_LISTEN_FDS_CHILD=1, no LISTEN_PID (fdstore.ListenFDs)
//	fd N:   the vhost-user connection (SOCK_STREAM, backend side)
//	fd N+1: the fd store, VFSD_NOTIFY_FD=N+1 (fdstore.Default/Store/Remove)
//	VFSD_RESUME=1 on every start but the first (crash restart or upgrade)
//	SIGTERM: exit soon (upgrade, shutdown); SIGKILL follows after StopGrace
//
// In resume mode the worker receives, before anything from the frontend,
// the replay: GET_FEATURES, [GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES],
// [SET_OWNER], [SET_BACKEND_REQ_FD], [SET_FEATURES], [SET_MEM_TABLE or one
// ADD_MEM_REG per region when CONFIGURE_MEM_SLOTS was negotiated],
// [SET_INFLIGHT_FD], per vring in index order [SET_VRING_NUM,
// SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_ERR, SET_VRING_CALL,
// SET_VRING_KICK (only if the ring is started), SET_VRING_ENABLE],
// [SET_STATUS]; with REPLY_ACK every SET but SET_PROTOCOL_FEATURES carries
// NEED_REPLY, without it a final GET_FEATURES ends the replay. The
// SET_VRING_BASE of a started ring is the base the frontend gave at ring
// start (or the last GET_VRING_BASE answer): a resuming worker must recover
// the ring position from guest RAM and its inflight region (DESIGN.md §3.4),
// not trust it.
//
// Invariants:
//   - The frontend sees exactly one reply per request that has one, and
//     never a disconnect while the crash budget lasts. A request with a
//     reply is held, fds included, until its reply was forwarded; if the
//     worker dies first, it is re-sent to the successor after the replay.
//     A reply already in the socket when the worker died is still used.
//   - The session records a request without a reply when it is forwarded,
//     and a request with a reply only when acknowledged (REPLY_ACK status 0,
//     or the GET's answer): the replay never contains an unanswered request.
//   - Before a successor starts, the predecessor is reaped and the fd store
//     drained, so every fd store the dead worker completed is handed over.
//   - Protocol features the session cannot rebuild are masked out of
//     GET_PROTOCOL_FEATURES (see relayableProtocolFeatures), and
//     VHOST_F_LOG_ALL out of GET_FEATURES.
//   - Every fd the supervisor holds is close-on-exec; a worker receives only
//     the fds listed above.
//   - More than MaxRestarts deaths within RestartWindow: the supervisor
//     logs "worker crashed N times in W; giving up", closes the frontend
//     connection and Run returns an error wrapping ErrBudgetExhaust.
//
// Concurrency: one main goroutine (Run) owns the session, the current worker
// and both connections' write sides; one goroutine reads the frontend, one
// per worker reads its replies, one per worker waits for its exit, and the
// fd store reads its notify socket. Stats, Upgrade and signalWorker are safe
// from any goroutine (mu guards cur, startedAt, lastStall).
package supervisor
