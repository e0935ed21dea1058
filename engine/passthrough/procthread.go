package passthrough

import (
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// procThread runs path-form syscalls on /proc/self/fd/N where the root has
// no /proc (the chroot sandbox hands the FS an fd of /proc/self/fd opened
// before the chroot; see Options.ProcSelfFD). It is one OS thread with a
// filesystem context of its own (unshare(CLONE_FS)) whose working
// directory is that fd, so the relative path "N" names the magic link.
// Other threads' working directory is never touched. Only xattr calls on
// inodes that cannot be opened (symlinks, fifos, sockets, devices) go
// through it; they run as the daemon, like the other xattr calls.
type procThread struct {
	mu   sync.Mutex // one call at a time
	reqs chan func()
	done chan struct{}
}

// startProcThread starts the thread; it must run before the seccomp filter
// is installed (unshare and fchdir are not in the allowlist).
func startProcThread(procfd int) (*procThread, error) {
	p := &procThread{reqs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error)
	go func() {
		// Never unlocked: the thread's private fs context dies with it
		// when this goroutine returns.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_FS): %w", err)
			return
		}
		if err := unix.Fchdir(procfd); err != nil {
			errc <- fmt.Errorf("fchdir /proc/self/fd: %w", err)
			return
		}
		errc <- nil
		for f := range p.reqs {
			f()
			p.done <- struct{}{}
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return p, nil
}

// do runs f on the thread.
func (p *procThread) do(f func()) {
	p.mu.Lock()
	p.reqs <- f
	<-p.done
	p.mu.Unlock()
}

// stop ends the thread.
func (p *procThread) stop() {
	p.mu.Lock()
	close(p.reqs)
	p.mu.Unlock()
}
