// Command vfsd is a virtio-fs daemon: the vhost-user backend for QEMU's
// vhost-user-fs-pci device, serving a host directory to the guest's virtiofs
// driver. It parses virtiofsd-compatible flags (flags.go) and runs
// engine/worker for one connection; it exits 0 when the frontend
// disconnects, 2 on a bad command line or unusable shared directory, 1 on
// other failures.
package main
