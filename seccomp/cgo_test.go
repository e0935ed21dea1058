//go:build cgo

package seccomp

// With cgo the test binary starts its threads the way vfsd does (vfsd links
// os/user and net, so it is a cgo binary): through glibc's pthread_create,
// clone3 (answered ENOSYS) then clone, rseq and set_robust_list in every new
// thread. The victim tests then cover that path; CGO_ENABLED=0 covers the
// runtime's own clone.
import _ "runtime/cgo"

const victimCgo = true
