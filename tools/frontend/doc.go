// Package frontend is a host-side vhost-user frontend: it plays the part QEMU
// and the guest's virtio driver play for a vhost-user-fs device, so that a
// vhost-user backend (vfsd, or the reference /usr/lib/qemu/virtiofsd) can be
// driven without a virtual machine.
//
// It owns:
//   - guest RAM: a memfd mapped into this process, described to the backend as
//     one or more memory regions (optionally GPA-adjacent, so that one buffer
//     can straddle two regions), with a page allocator for ring and request
//     buffers (Memory);
//   - the vhost-user control connection: the initialisation sequence QEMU 7.2
//     sends for vhost-user-fs-pci, NEED_REPLY/REPLY_ACK handling, stopping the
//     rings with GET_VRING_BASE, and raw message access for hostile tests
//     (Frontend.Send, Frontend.Recv, Frontend.Call);
//   - the virtqueues (Queue): the driver side of a split ring (vring/driver),
//     kick/call/err eventfds, and completion matching by descriptor head, with
//     many requests in flight per queue.
//
// Queue 0 is the hiprio queue (FORGET, BATCH_FORGET), queues 1..N are request
// queues, as for virtio-fs (device id 26).
//
// Concurrency: Frontend's control methods (Send, Recv, Call, Stop) serialise
// on one mutex and may be called from any goroutine. Queue.Submit may be
// called from any goroutine. The goroutines waiting for completions reap the
// used ring themselves, one leading at a time (see Completion.Wait); each
// queue's reaper goroutine takes the lead while many wait, and completes the
// chains nobody waits for. Whoever leads sleeps on the call eventfd with a
// short timeout, so a lost interrupt costs latency, never a hang.
//
// Lock order: Frontend.ctl > Queue.mu > Memory.mu.
package frontend
