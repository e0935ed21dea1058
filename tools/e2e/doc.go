// Package e2e runs vfsd (or the reference C virtiofsd) on a temporary shared
// directory and drives it through tools/frontend and tools/fuseclient: one
// test per FUSE opcode, each checking the reply and the host's view of the
// shared directory, plus multi-queue, large-I/O and large-directory tests.
//
// The backend is chosen by VFSD_E2E_DAEMON=vfsd|virtiofsd (default vfsd,
// built once per test binary from ./cmd/vfsd). Cases where the reference
// daemon legitimately differs (it lacks an opcode) are skipped only for it,
// with the reason in the skip message. VFSD_E2E_ARGS adds vfsd arguments
// (space-separated), e.g. "--seccomp=log" while tools/sysaudit traces the
// worker, or "--no-supervisor".
//
// Start is exported so that other host-side suites (crash injection,
// benchmarks) can reuse the harness.
package e2e
