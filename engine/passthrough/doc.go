// Package passthrough is vfsd's filesystem: it serves FUSE requests
// (fuse.Handler) by passing them through to one host directory, the shared
// directory, as the C and Rust virtiofsd do.
//
// # Inodes and handles
//
// A host inode is identified by (st_dev, st_ino, mount id). The FS keeps a
// persistent record per inode the guest knows in a maptable (per-queue
// lookup counters, key, file handle from name_to_handle_at when the host
// filesystem has one) and an O_PATH|O_NOFOLLOW fd. Where the process may
// open_by_handle_at, the fd is opened at the inode's first use, from the
// record's handle (a READDIRPLUS entry the guest never uses costs statx and
// name_to_handle_at, no fd); until then nothing pins the inode, so a key
// match is confirmed by handle (knownLocked). Options.EagerInodes opens it at
// once. The record's ID is the nodeid, so a stale nodeid answers ESTALE and
// never names another file. Nodeid 1 is the shared directory's root. Open files and directories are handles in a second
// maptable (fh = ID; a bad fh answers EBADF). fds live in in-memory arrays
// indexed by slot; they cannot live in a memfd.
//
// # Guest names
//
// Every name is one component (no '/', not empty, at most NAME_MAX, not
// "." or ".." except for LOOKUP, where ".." of the root is the root) and is
// resolved with *at syscalls against the parent's fd without following
// symlinks; host paths are never built from guest names. Operations that
// need a real fd re-open the O_PATH fd through /proc/self/fd; symlinks are
// never re-opened (ELOOP) and special files never opened (ENXIO).
//
// # Concurrency
//
// FS is safe for concurrent use: queue threads call Handle in parallel and
// Blocking opcodes run on helper goroutines. Lock order (outer first):
//
//	dirState.mu (one READDIR per dir handle)
//	  FS.imu (inode slots, key index, counters)  |  FS.hmu (handle slots)
//	    maptable's lock, FS.rmu (fds handed back on resume)
//	FS.smu, lockState.mu, plocks.mu: leaves
//	plock.ready (a lock owner's fd being opened): taken with no other lock
//	held, around syscalls
//
// POSIX locks belong to (inode, lock owner), each owner locking through its
// own open file description of the inode; flock to the handle (lock.go).
//
// The journal takes no lock: a slot is written only by the owner of its
// head (see engine/journal). Lookup counters are per queue and a queue's
// counter changes only on that queue's thread (under FS.imu as well).
//
// fds are reference-counted by pins (fdRef) so that FORGET or RELEASE racing
// with a request closes the fd only after that request is done with it.
//
// # Crashes and restarts
//
// Every non-idempotent request is journaled (engine/journal) in its
// (queue, head) slot; exactlyonce.go holds the rule table that answers a
// request the dataplane resubmits after a worker restart (Request.Resumed)
// exactly as a crash-free run would have. state.go says what persists where
// (maptable and journal memfds, handle fds and unreachable inode fds in the
// fd store) and how New resumes (Options.Resume): state memfds mapped,
// session restored, inodes and handles loaded lazily on first use, so
// restart cost does not grow with the number of inodes.
//
// File-creating opcodes run with the requester's fsuid/fsgid on the calling
// thread (locked for the duration). New sets the process umask to 0.
package passthrough
