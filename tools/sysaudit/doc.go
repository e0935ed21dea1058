// Command sysaudit traces the syscalls of vfsd's worker processes and diffs
// them against the seccomp allowlist (vfsd/seccomp.Names).
//
//	go run ./tools/sysaudit [-comm vfsd] [-strict] -- go test ./tools/e2e
//	go run ./tools/sysaudit -pid 1234        # until the process exits or ^C
//
// A BPF program (written with cilium/ebpf's asm package, no clang) on the
// sys_enter raw tracepoint looks up the current task's tgid in a hash map of
// traced processes and counts syscall numbers in an array map (512
// entries). A second array counts only the syscalls a process makes after
// it entered seccomp(SECCOMP_SET_MODE_FILTER): what the filter sees. The
// diff uses that bank when any traced process installed a filter, else all
// syscalls (start-up included, so expect extras).
//
// Traced processes are found by polling /proc every -poll (2ms) among the
// descendants of the command (or -pid): a worker is a process whose
// argv[1] is "worker" (the supervisor runs "/proc/self/exe worker ...", so
// its comm is the binary's name); a plain daemon is a process named -comm
// that is not a worker and has no worker child (with --no-supervisor it is
// always one). A -comm process found to have a worker child is a supervisor
// and is no longer traced.
//
// Run the worker with --seccomp=log (or none) while auditing: a syscall the
// filter kills or fails never reaches sys_enter, so it cannot be counted.
//
// Output: every syscall seen with its count, the ones missing from the
// allowlist (exit status 1), and allowlist entries never seen (for review;
// a failure with -strict). Exit status 3 when the command failed (the
// report is still printed), 2 on a setup error. Needs root (CAP_BPF and
// CAP_PERFMON) and a kernel with BPF raw tracepoints.
package main
