// Package daemon starts a virtio-fs backend for host-side tests and load
// generation: vfsd (built from ./cmd/vfsd) or the reference C virtiofsd
// (/usr/lib/qemu/virtiofsd), on a unix socket and a shared directory, and
// measures the CPU time its process tree used (/proc/PID/stat of the daemon
// and all its descendants, which matters for virtiofsd's sandbox child).
package daemon
