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
// Shutdown order when the frontend disconnects (or ctx is cancelled, which
// shuts the socket down): cancel blocking waits in the filesystem, stop the
// queues (each waits for its in-flight requests), unmap guest memory, close
// the filesystem, remove the socket file.
package worker
