package fdstore

import (
	"errors"
	"fmt"
)

// MaxNameLen is the longest fd name sd_notify(3) accepts (FDNAME_MAX).
const MaxNameLen = 255

// DefaultName is the name systemd gives fds stored without FDNAME=.
const DefaultName = "stored"

// UpstreamPrefix marks the fds the supervisor forwards to systemd's store,
// so that they can be told apart from socket-activation listeners when
// systemd hands them back in LISTEN_FDS.
const UpstreamPrefix = "vfsd.store."

// ErrBadName is returned for a name that sd_notify(3) would not accept.
var ErrBadName = errors.New("fdstore: invalid fd name")

// ValidName reports whether name is a valid FDNAME: 1..255 printable ASCII
// characters, none of them ':'.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < ' ' || c > '~' || c == ':' {
			return false
		}
	}
	return true
}

func checkName(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	return nil
}
