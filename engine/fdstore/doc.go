// Package fdstore speaks the sd_notify(3) protocol at both ends, and
// implements the sd_listen_fds(3) hand-over, for vfsd's file descriptor store.
//
// It owns:
//   - Client: the sending side (worker -> supervisor, supervisor -> systemd).
//     Datagrams go over an AF_UNIX SOCK_DGRAM socket named by NOTIFY_SOCKET
//     (a path, or an abstract name starting with '@'), or over an inherited
//     connected datagram socket whose number is in VFSD_NOTIFY_FD (how the
//     supervisor hands the store to its worker; see below). File descriptors
//     travel with SCM_RIGHTS.
//   - Server: the receiving side, a store of named fds kept by the supervisor
//     across worker deaths. It parses FDSTORE=1, FDNAME=, FDSTOREREMOVE=1,
//     FDPOLL=, READY=1, STATUS=, WATCHDOG=1, STOPPING=1, RELOADING=1, ERRNO=.
//   - ListenFDs: the receiving side of a hand-over (sd_listen_fds_with_names),
//     and Server.ChildFiles, the giving side for a worker started with os/exec.
//
// Invariants:
//   - Durability: when Client.Store returns nil, the datagram and its fds are
//     in the receiver's socket buffer (the kernel has duplicated the fds into
//     the message). A receiver that drains its socket after the sender died
//     (Server.Drain, after the sender was reaped) sees every store the sender
//     completed, in order. Stores and removes are applied in the order they
//     were sent: each receiving socket is read under one lock, and a datagram
//     is parsed and applied before the next one is read.
//   - Every fd this package creates or receives is close-on-exec
//     (SOCK_CLOEXEC, MSG_CMSG_CLOEXEC, F_DUPFD_CLOEXEC); ListenFDs sets
//     FD_CLOEXEC on the fds it takes over. The only way an fd reaches a child
//     process is ExtraFiles (dup2 clears the flag in the child).
//   - The Server owns every fd it stores: it closes it on Remove, when the cap
//     (Config.MaxFDs, like systemd's FileDescriptorStoreMax) would be exceeded,
//     when a datagram is rejected, and on Close. The same open file is stored
//     once (checked with fstat + kcmp, as systemd does); a duplicate is closed.
//   - Hostile or malformed datagrams never panic: they are logged and ignored,
//     and any fds they carried are closed.
//   - Names follow sd_notify(3): 1..255 printable ASCII characters, no ':'.
//     Unlike systemd, a store with an invalid FDNAME= is rejected (fds closed)
//     rather than stored as "stored": a worker looking for its name must not
//     find it silently renamed.
//
// Hand-over convention (LISTEN_PID): os/exec cannot set LISTEN_PID to the
// child's pid (it is not known before fork), so Server.ChildFiles leaves
// LISTEN_PID unset and sets VFSD_LISTEN_FDS_CHILD=1 instead. ListenFDs accepts
// fds when LISTEN_PID equals getpid() (systemd), or when LISTEN_PID is absent
// and VFSD_LISTEN_FDS_CHILD=1 (vfsd supervisor). With unsetEnv the variables
// are removed so that the worker's own children never take them. Fds start at
// 3 (SD_LISTEN_FDS_START); LISTEN_FDNAMES is colon-separated.
//
// Notify socket for the worker: an inherited connected SOCK_DGRAM socket,
// VFSD_NOTIFY_FD=<n>. It is preferred to a named NOTIFY_SOCKET because it
// keeps working after the worker enters a new mount or network namespace, and
// because a dead worker's socket can be drained and retired as a whole.
//
// Forwarding to systemd: when the supervisor itself runs with NOTIFY_SOCKET
// set, Config.Upstream forwards every store and remove to systemd with names
// prefixed by UpstreamPrefix (and FDPOLL=0), so that systemd's store
// (FileDescriptorStoreMax=) holds the same fds. Adopt takes the prefixed fds
// back from a later LISTEN_FDS and leaves the socket-activation ones alone.
//
// Batches (vfsd extension, Client.SendBatch): X_VFSD_REMOVE=a:b removes
// names, then FDSTORE=1 with X_VFSD_FDNAMES=c:d stores the attached fds one
// per name, in that order, in one datagram (sd_notify names cannot contain
// ':'). systemd would ignore the variables; only the supervisor's channel
// carries them, and upstream forwarding stays one message per name.
//
// Coalescing (Config.Coalesce): a receiver is read by a goroutine blocked
// in poll(2) (not the netpoller, which would wake on every datagram); after
// emptying its socket it waits Coalesce before looking again. Datagrams
// wait in the socket meanwhile, already durable for their sender.
//
// Lock order: Server.rxMu (one per receiving socket) -> Server.mu.
// Callbacks (Config.OnMessage) and upstream sends run with a receiver lock
// held and Server.mu not held.
package fdstore
