// Package vhostuser is the backend side of the vhost-user protocol
// (QEMU docs/interop/vhost-user.rst) over a unix stream socket.
//
// It owns:
//   - message framing (Conn): the 12-byte header, payloads bounded by
//     MaxPayload, file descriptors received with SCM_RIGHTS (MSG_CMSG_CLOEXEC,
//     at most MaxFDs; unexpected ones are closed);
//   - the device state (Device): negotiated features and protocol features,
//     the guest memory table (mappings and their lifetime), and per vring its
//     size, addresses, base, kick/call/err eventfds and started/enabled state;
//   - the decision of when a vring runs, expressed to the data plane through
//     the Backend interface. This package knows nothing of FUSE.
//
// Ring states (vhost-user.rst, "Ring states"): a vring is started by
// SET_VRING_KICK and stopped by GET_VRING_BASE; SET_VRING_ENABLE 0 disables
// it and 1 enables it again. Deviation, shared with libvhost-user and the
// reference virtiofsd: SET_VRING_KICK also enables the ring, because
// frontends before QEMU 7.2 never send SET_VRING_ENABLE to vhost-user-fs
// even when VHOST_USER_F_PROTOCOL_FEATURES is negotiated (QEMU 7.2 sends it
// right after the kick, so nothing changes there). A vring runs on the
// Backend while it is started and enabled and has a size, addresses and
// guest memory. Disabling or stopping it stops the Backend's queue, which
// reports the ring's last avail index; that index becomes the vring base
// for the next start.
//
// Ownership: the Device owns every fd it received (guest memory fds are
// closed once mapped; eventfds and the backend request fd are kept until they
// are replaced or the connection ends). The Backend borrows eventfds: it must
// not use a kick, call or err fd after the StopQueue, SetCall or SetErr call
// that withdraws it has returned. Guest memory mappings are unmapped only
// after Backend.SetMem (or StopQueue) has returned, when no queue thread and
// no in-flight request can touch them.
//
// Threads: a Device is driven by one goroutine (Serve); all Backend methods
// are called from it, one at a time. Hostile or malformed messages never
// panic: they get an error reply when one is due (REPLY_ACK), or the
// connection is closed cleanly with a logged reason.
//
// Adding a message (e.g. GET_INFLIGHT_FD/SET_INFLIGHT_FD for
// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): add its entry to the handlers table
// in device.go with its payload size and fd count, and its protocol feature
// bit to Options or protocolFeatures.
package vhostuser
