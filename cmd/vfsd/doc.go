// Command vfsd is a virtio-fs daemon: the vhost-user backend for QEMU's
// vhost-user-fs-pci device, serving a host directory to the guest's virtiofs
// driver. It parses virtiofsd-compatible flags (flags.go).
//
// By default the process is a supervisor (supervise.go): it listens, accepts
// one frontend connection and keeps it with engine/supervisor, which runs
// the hidden subcommand "vfsd worker ... --vhost-fd=N" (engine/worker in
// supervised mode) and replaces it after a crash or on upgrade (SIGHUP, or
// "upgrade" on the control socket, control.go); the frontend never sees a
// disconnect while the crash budget (--max-restarts in --restart-window)
// lasts. --no-supervisor serves the connection in this one process.
//
// Exit status: 0 when the frontend disconnects (or SIGINT/SIGTERM), 2 on a
// bad command line or unusable shared directory, 1 on other failures (the
// crash budget spent, with one line saying so on stderr).
package main
