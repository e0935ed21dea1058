package fdstore

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Environment variables of the fd hand-over.
const (
	EnvListenFDs     = "LISTEN_FDS"
	EnvListenPID     = "LISTEN_PID"
	EnvListenFDNames = "LISTEN_FDNAMES"
	// EnvListenChild replaces LISTEN_PID for a child started by the vfsd
	// supervisor (os/exec cannot know the child's pid before fork).
	EnvListenChild = "VFSD_LISTEN_FDS_CHILD"
)

// ListenFDsStart is the first handed-over fd (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS against a corrupt environment.
const maxListenFDs = 1 << 16

// NamedFD is a file descriptor with its store name.
type NamedFD struct {
	Name string
	FD   int
}

// ListenFDs returns the fds handed over to this process, like
// sd_listen_fds_with_names(3): LISTEN_FDS fds starting at fd 3, named by the
// colon-separated LISTEN_FDNAMES ("unknown" when it is absent). They are for
// this process when LISTEN_PID equals getpid(), or when LISTEN_PID is absent
// and VFSD_LISTEN_FDS_CHILD=1 (see the package doc). It returns (nil, nil)
// when there is nothing for this process. FD_CLOEXEC is set on every returned
// fd; the caller owns them. With unsetEnv the variables are removed, whatever
// the outcome.
func ListenFDs(unsetEnv bool) ([]NamedFD, error) {
	if unsetEnv {
		defer func() {
			for _, k := range []string{EnvListenFDs, EnvListenPID, EnvListenFDNames, EnvListenChild} {
				os.Unsetenv(k)
			}
		}()
	}
	nStr, ok := os.LookupEnv(EnvListenFDs)
	if !ok {
		return nil, nil
	}
	if pidStr, ok := os.LookupEnv(EnvListenPID); ok {
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			return nil, fmt.Errorf("fdstore: bad %s=%q", EnvListenPID, pidStr)
		}
		if pid != os.Getpid() {
			return nil, nil
		}
	} else if os.Getenv(EnvListenChild) != "1" {
		return nil, nil
	}
	n, err := strconv.Atoi(nStr)
	if err != nil || n < 0 || n > maxListenFDs {
		return nil, fmt.Errorf("fdstore: bad %s=%q", EnvListenFDs, nStr)
	}
	if n == 0 {
		return nil, nil
	}
	names := make([]string, n)
	if namesStr, ok := os.LookupEnv(EnvListenFDNames); ok {
		parts := strings.Split(namesStr, ":")
		if len(parts) != n {
			return nil, fmt.Errorf("fdstore: %s has %d names for %d fds", EnvListenFDNames, len(parts), n)
		}
		copy(names, parts)
	} else {
		for i := range names {
			names[i] = "unknown"
		}
	}
	out := make([]NamedFD, n)
	for i := range out {
		fd := ListenFDsStart + i
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return nil, fmt.Errorf("fdstore: handed-over fd %d (%q): %w", fd, names[i], err)
		}
		unix.CloseOnExec(fd)
		out[i] = NamedFD{Name: names[i], FD: fd}
	}
	return out, nil
}

// SplitUpstream separates the fds this package forwarded to systemd (names
// with UpstreamPrefix, returned with the prefix stripped) from all others
// (socket-activation listeners, returned unchanged).
func SplitUpstream(fds []NamedFD) (stored, other []NamedFD) {
	for _, f := range fds {
		if name, ok := strings.CutPrefix(f.Name, UpstreamPrefix); ok && ValidName(name) {
			stored = append(stored, NamedFD{Name: name, FD: f.FD})
		} else {
			other = append(other, f)
		}
	}
	return stored, other
}
