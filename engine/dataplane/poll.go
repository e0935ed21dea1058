package dataplane

import (
	"time"

	"golang.org/x/sys/unix"
)

// Adaptive polling before sleeping. When a queue runs dry, its thread keeps
// notifications off and watches avail.idx for up to window before it
// re-enables them and sleeps in epoll_wait: a request that comes within the
// window costs neither the driver's kick (an eventfd write, and for QEMU a
// vmexit-free path) nor this thread's wake-up and the Go runtime's
// syscall hand-off, which dominate a depth-1 request's latency.
//
// The window adapts like KVM's halt polling: idle periods that ended inside
// the window leave it; ones that ended after it but before max grow it
// (from minPoll, doubling); ones longer than holdFactor×max shrink it
// (halving, to 0 below minPoll), and those between leave it once: a
// client's occasional hiccup must not cost the window its steady requests
// need, but holdMisses of them in a row (no idle period inside the window
// between) shrink it too. CPU spent polling is thus bounded by what it
// saves: a queue whose requests come further apart than the window stops
// polling after a few dozen idle periods. Options.PollMax < 0 turns
// polling off; the hiprio queue never polls (queue.go).
//
// The run rule is for the TCG guest of this project's tests, whose
// requests come 100-250 µs apart (the emulated CPU between them): the
// window stayed at the cap, every poll failed, and the polling thread took
// CPU from QEMU's on the 2-core VM. vfsd with --poll-max=0 against vfsd as
// it was, best of two boots each: fio randread-4k-psync 4359/5223 against
// 3133/3674 IOPS, stress-ng --dentry 232/322 against 238/240 bogo ops/s.
//
// max is 50 µs: a depth-1 round trip of a small request through this
// project's frontend is 15-25 µs. Against a 200 µs cap on the 2-core
// development VM (tools/loadgen, interleaved) throughput stayed within
// noise everywhere while CPU per operation fell: READ 1 MiB at depth 1
// 220-240 -> 133-153 µs, CREATE+RELEASE+UNLINK+FORGET -10%, WRITE 4 KiB at
// depth 32 -6 to -12%. A 50 µs cap that shrank the window on every longer
// idle period cost LOOKUP at depth 1 8-13%.
const (
	minPoll = 5 * time.Microsecond
	// DefaultPollMax is the largest window when Options.PollMax is 0.
	DefaultPollMax = 50 * time.Microsecond
	// holdFactor×max is the idle period beyond which the window shrinks.
	holdFactor = 4
	// holdMisses idle periods in a row between max and holdFactor×max
	// shrink the window as one longer idle period does.
	holdMisses = 8
)

type poller struct {
	window, max time.Duration
	idleSince   time.Time // when the queue last ran dry (zero: busy)
	misses      int       // hold-zone idle periods in a row
}

// poll spins for the current window; it reports whether avail() became
// true. Queue thread only.
func (p *poller) poll(avail func() bool) bool {
	p.idleSince = time.Now()
	if p.window == 0 {
		return false
	}
	for {
		if avail() {
			return true
		}
		if time.Since(p.idleSince) >= p.window {
			return false
		}
		// Let any thread waiting for this CPU run first: on a machine
		// with few cores that is often the frontend's thread that must
		// deliver the completion just published (QEMU's main loop) or
		// produce the next request.
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// woke records the end of an idle period (work found after a sleep, or by
// poll) and adapts the window.
func (p *poller) woke() {
	if p.idleSince.IsZero() || p.max == 0 {
		return
	}
	idle := time.Since(p.idleSince)
	p.idleSince = time.Time{}
	p.adapt(idle)
}

// adapt moves the window after an idle period of the given length.
func (p *poller) adapt(idle time.Duration) {
	switch {
	case idle <= p.window:
		p.misses = 0
	case idle < p.max:
		p.misses = 0
		p.window = min(max(2*p.window, minPoll), p.max)
	case idle < holdFactor*p.max:
		if p.misses++; p.misses >= holdMisses {
			p.misses = 0
			p.shrink()
		}
	default:
		p.shrink()
	}
}

// shrink halves the window, to 0 below minPoll.
func (p *poller) shrink() {
	if p.window /= 2; p.window < minPoll {
		p.window = 0
	}
}

// pollMax is the polling cap from Options.PollMax.
func (d *Dataplane) pollMax() time.Duration {
	switch {
	case d.o.PollMax < 0:
		return 0
	case d.o.PollMax == 0:
		return DefaultPollMax
	}
	return d.o.PollMax
}
