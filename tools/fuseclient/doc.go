// Package fuseclient is a FUSE client that speaks to a virtio-fs backend
// through tools/frontend, the way the Linux virtiofs driver does: the in
// header and each in argument in device-readable descriptors (WRITE data in a
// descriptor of its own), the out header and the reply in device-writable
// ones; FORGET and BATCH_FORGET on the hiprio queue, everything else on the
// request queues; INIT as a Linux 6.1 guest sends it (7.38 framing).
//
// Client.Do is the raw interface (any opcode, any arguments, any number of
// requests in flight, at most Options.Depth per request queue); the typed
// helpers (Lookup, Getattr, ..., Setlkw, Destroy) encode the arguments with
// this package's own encoders (wire.go, independent of engine/fuse's structs
// so that the two check each other), decode the reply, and return FUSE errors
// as unix.Errno.
//
// All methods are safe for concurrent use.
package fuseclient
