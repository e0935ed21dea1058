// Package dataplane runs virtqueues for the vhost-user device: one goroutine
// per started queue, locked to its OS thread, serving FUSE requests from the
// ring through a fuse.Handler. It implements vhostuser.Backend.
//
// Queue loop: block in epoll on the kick eventfd (edge-triggered, never read:
// a wake-up is one syscall), a control eventfd (stop, memory table change)
// and a completion eventfd (blocking requests done);
// on wake, with notifications disabled, pop every available chain, decode it
// in place (fuse.Request.Decode), answer it into its writable segments
// (fuse.Reply) and push it; publish the used index once per batch (and on
// the way through a long one, publishEarly) and write the call eventfd once
// per publish when vring says the driver wants it; re-enable
// notifications and loop again if work arrived meanwhile. The non-blocking
// path allocates nothing per request (see BenchmarkQueue).
//
// Blocking opcodes (fuse.Blocking: fsync, SETLKW, fallocate, ...) run on a
// bounded pool of goroutines with a cloned Request; their (head, written)
// comes back to the queue thread through a mutex-protected list plus the
// completion eventfd, and the queue thread pushes it: completions may be out
// of order, which virtio allows. The queue thread alone touches its vring.
//
// Memory table changes: SetMem hands the new table to every queue thread,
// which switches at a batch boundary (vring.Queue.SetMem). Requests popped
// under the old table (blocking ones may still be running) are counted by
// epoch; SetMem returns only when each queue has switched and its old-epoch
// requests have completed, so the caller may then unmap the old regions.
//
// Stopping a queue stops popping, waits for its outstanding blocking
// requests, pushes and publishes them, and reports the last avail index. A
// handler that implements Canceller has its waits cancelled when those
// requests outlast a short grace period, so that a SETLKW that never
// returns cannot block a queue stop (GET_VRING_BASE, SET_VRING_ENABLE 0)
// or Close.
//
// Errors: a malformed chain (vring.ErrBadChain) is returned with 0 bytes; a
// request whose FUSE header cannot be read is returned with 0 bytes, one
// whose header is readable but whose length or arguments are bad gets
// EINVAL; a panic in the Handler is recovered and answered EIO; a broken ring
// (vring.ErrBroken) stops processing on that queue, is logged, and is
// signalled on the err eventfd if there is one.
//
// Lock order (outer first): queue.mu, then nothing; queue.notifyMu, then
// nothing; pool.mu, then nothing. No lock is held across Handler calls.
package dataplane
