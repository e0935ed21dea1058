// Package seccomp owns the worker's syscall allowlist and its installation.
//
// The allowlist is data: Rules returns a table with one entry per syscall a
// caller of the worker needs (Go runtime, vhost-user, data plane, the
// passthrough filesystem, the fd store, crash points), each naming that
// caller, some with argument restrictions (fcntl commands, clone flags for
// threads only, mmap without PROT_EXEC, ...). Program compiles the table
// into a classic BPF seccomp filter in pure Go (no libseccomp): the
// architecture is checked first (AUDIT_ARCH_X86_64, x32 numbers refused),
// then the syscall number by binary search, then the arguments. Anything
// not allowed gets the configured Action: kill the process (the default),
// trap (SIGSYS: the Go runtime prints the stack of the offending call),
// errno (EPERM), log (allowed, and logged by the kernel's audit), or none
// (no filter at all).
//
// Install is separate from the table and runs last in worker start-up:
// prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SECCOMP_SET_MODE_FILTER) with
// SECCOMP_FILTER_FLAG_TSYNC, so that every thread of the Go runtime,
// including those started earlier, runs under the filter.
//
// Names lists the syscalls of the allowlist for the syscall audit tool
// (tools/sysaudit), which traces a running worker and reports syscalls it
// makes that the table lacks.
//
// Only x86_64 is supported: the syscall name table (sysnames_x86_64.go) is
// generated from golang.org/x/sys by internal/mksysnum.
package seccomp

//go:generate go run ./internal/mksysnum sysnames_x86_64.go
