// Package crashpoint kills the process at named points, for crash-recovery tests.
//
// Production code calls Hit(name) at the places where a crash is most likely to
// leave state half written. When the environment variable VFSD_CRASHPOINT names
// the point, the process sends itself SIGKILL there: no deferred functions, no
// flushing, no cleanup, exactly as if the kernel had killed it.
//
// # Configuration (read once, at package init)
//
//	VFSD_CRASHPOINT=spec[,spec...]
//	spec = name          kill at the first hit of name
//	     | name:n        kill at the n-th hit of name (n >= 1)
//	     | name:rand:P   kill with probability 1/P at each hit (P >= 1)
//	VFSD_CRASHPOINT_SEED=s   seed (uint64) for the rand specs; default: from the clock.
//
// A malformed VFSD_CRASHPOINT is reported once on stderr and the malformed spec is
// ignored (a test that mistypes a spec then fails because nothing crashed, which it
// notices). The same name may appear in more than one spec; each is evaluated.
//
// When VFSD_CRASHPOINT is unset or empty, Hit costs one atomic bool load.
//
// # Named points
//
//	after-pop            dataplane: a chain was popped from the avail ring (inflight marked), not yet decoded
//	after-decode         dataplane: the FUSE request was decoded, the handler has not run
//	after-syscall        passthrough: the operation's syscall ran, its result is not yet journaled
//	after-journal        passthrough: the result was journaled, the reply not yet pushed
//	mid-publish          dataplane: between the used-ring stores of one batch (elements pushed, used.idx not yet stored)
//	after-publish        dataplane: used.idx was published, the call eventfd not yet written
//	before-notify        dataplane: right before the call eventfd write
//	mid-maptable-insert  passthrough: inside a maptable insertion
//	mid-fd-handover      passthrough/worker: an fd was created, not yet stored in the fd store
//	mid-vhost-message    vhostuser: a message was received, not yet handled nor replied to
//	mid-resume           dataplane: during resubmission of in-flight requests after a restart
//
// The list is documentation: Hit accepts any name, so a package can add a point
// without changing this one; add it here too.
package crashpoint
