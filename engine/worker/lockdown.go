package worker

import (
	"log/slog"

	"vfsd/seccomp"
)

// lockDown is the last step of start-up, once the connection, the state
// memfds, the filesystem, the fd-store client and every listener exist:
// it installs the syscall filter (o.Seccomp) on every thread of the
// process. From then on only seccomp.Rules' syscalls run.
func lockDown(o Options, log *slog.Logger) error {
	if err := seccomp.Install(seccomp.Options{Action: o.Seccomp, HTTP: o.observing()}); err != nil {
		return err
	}
	if o.Seccomp != seccomp.ActionNone {
		log.Debug("seccomp filter installed", "action", o.Seccomp)
	}
	return nil
}
