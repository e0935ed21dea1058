// Package daemon starts a virtio-fs backend for host-side tests and load
// generation: vfsd (built from ./cmd/vfsd) or the reference C virtiofsd
// (/usr/lib/qemu/virtiofsd), on a unix socket and a shared directory, and
// measures what its process tree uses (the daemon and all its descendants,
// which matters for virtiofsd's sandbox child and vfsd's worker): CPU time
// from /proc/PID/stat, memory (PSS, with guest RAM left out) and open fds
// from /proc/PID/smaps and /proc/PID/fd.
package daemon
