// Package sandbox confines the worker (vfsd worker) against a compromised
// worker serving a hostile guest: --sandbox=namespace|chroot|none and the
// capability drop (--modcaps). The chroot sandbox is described in
// chroot.go.
//
// # Stages
//
// Enter runs first in the worker, before it touches any inherited fd. Stage
// one (full capabilities, one locked OS thread) builds the sandbox, drops
// every capability outside the kept set from that thread's bounding set
// (PR_CAPBSET_DROP; also clears ambient and inheritable) and re-executes
// /proc/self/exe with VFSD_SANDBOX_STAGE=1. The new image runs as root, so
// its permitted and effective sets are the bounding set: the kept set, on
// every thread. This is how the drop reaches all threads in a Go program
// whatever the build: capset is per thread, and AllThreadsSyscall is refused
// in cgo builds (vfsd links os/user and net). Stage two (EnvStage=1)
// checks that permitted and effective hold nothing else and, in namespace
// mode, that the root is the sandbox tmpfs, then the worker runs as usual
// with --shared-dir=/shared. The supervisor's PrepareWorker hook
// (PrepareCmd) strips VFSD_SANDBOX_STAGE from the worker's environment, so
// an inherited value cannot skip stage one.
//
// # The namespace sandbox
//
// The supervisor starts every worker with CLONE_NEWNS|CLONE_NEWPID|
// CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS (CloneFlags). The first worker, in
// its fresh mount namespace: makes every mount a slave (nothing propagates
// to the host), clones the shared directory's mount tree (open_tree
// OPEN_TREE_CLONE|AT_RECURSIVE) and marks its mounts nodev, covers the
// shared directory's path with a small tmpfs, attaches the clone at /shared
// in it, binds the host's /proc read-only at /proc, binds the dynamic
// loader and the libraries the binary has mapped read-only at their paths
// (a cgo build resolves its ELF interpreter at exec), remounts the tmpfs
// read-only, pivot_root()s into it and detaches the old root. The worker's root then holds /shared, /proc
// and the loader files, nothing else. It stores an O_PATH fd of that root
// ("sandbox.root") and of its mount namespace ("sandbox.mntns") in the
// supervisor's fd store.
//
// Crash recovery. O_PATH fds and open files the dead worker stored refer to
// the vfsmounts of the first worker's tree; a link or rename between one of
// them and an fd a new worker opened on another mount of the same directory
// fails with EXDEV. So every restarted worker must use the same mounts.
// Joining the mount namespace with setns(CLONE_NEWNS) is impossible in a
// running Go program (it is multithreaded, and setns into a mount namespace
// requires an unshared fs_struct), and doing it from a supervisor thread
// would put the supervisor's threads in the worker's namespace. Instead a
// restarted worker (it finds both stored fds among LISTEN_FDS) covers and
// detaches its own fresh namespace's tree the same way (leaving only an
// empty tmpfs there), then fchdir()s to the stored root and chroot(".")s:
// its root is the first worker's tmpfs, its /shared the very same vfsmount,
// kept mounted because the stored namespace fd keeps that namespace alive.
// The worker then runs without CAP_SYS_CHROOT and CAP_SYS_ADMIN, holding no
// fd outside that tree, so it can neither chroot out nor mount.
//
// /proc is the host's procfs (read-only), not a fresh instance: each worker
// has its own pid namespace, and /proc/self must name whichever worker runs;
// a procfs mounted by the first worker would belong to its (dead) pid
// namespace. The host procfs resolves /proc/self for processes of any
// descendant pid namespace. What it shows a worker without CAP_SYS_PTRACE
// and CAP_SYS_ADMIN is limited by the usual ptrace checks; it cannot be
// written (read-only bind).
//
// PID 1. Each worker is pid 1 of its own pid namespace. It starts no child,
// so there is nothing to reap; the kernel delivers to pid 1 only signals it
// has handlers for from inside the namespace, and the supervisor (outside)
// can always SIGKILL it; the worker installs a SIGTERM handler (upgrade).
// Its net namespace is empty (only a down loopback): nothing the guest
// reaches through the worker can open network connections.
//
// # Capabilities
//
// WorkerCaps is the kept set, each with its reason; --modcaps=+cap:-cap
// (or comma-separated) adjusts it. Everything else is dropped from all five
// sets, including CAP_SYS_ADMIN, CAP_SYS_CHROOT and CAP_SETPCAP. The
// capability drop happens in both modes (none only skips the namespaces).
package sandbox
