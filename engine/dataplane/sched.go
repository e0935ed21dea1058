package dataplane

import (
	"runtime"
	"sync"
	"time"
)

// Living with the Go scheduler's monitor thread (sysmon).
//
// A queue thread is a locked goroutine that never blocks in the Go
// scheduler: it sleeps in epoll_wait and works in syscalls, so its P's
// schedule tick never moves. sysmon takes a goroutine that has run 10 ms on
// one tick for a CPU hog: it signals it, and if it finds it in a syscall it
// takes the P away from it. Each such retake also resets sysmon's own
// back-off, so it goes back to waking every 20 µs (a nanosleep each, with a
// timer interrupt and two context switches) for the next milliseconds. With
// a queue thread retaken every 10 ms, sysmon never backs off: on the
// development VM it did 4,000–5,500 nanosleeps a second and took over a
// quarter of the worker's CPU in a depth-1 CREATE loop (340 of 1,200 ms). A
// P retaken from a syscall also sends the queue thread through the slow
// path of exitsyscall when the syscall returns.
//
// Two measures keep sysmon at its 10 ms period:
//   - yield: a queue thread calls runtime.Gosched itself at least every
//     yieldEvery, after publishing a batch (so no answer waits on it) or
//     before sleeping. Its tick moves, so sysmon never sees a hog.
//   - spare Ps: sysmon also retakes a P that is in a syscall for more than
//     one of its ticks when no P is idle. Queue threads hold their P while
//     they sleep, so GOMAXPROCS is raised to the Ps the process had plus
//     one per running queue thread (and put back when none runs).
//
// Measured with tools/loadgen, polling off, CREATE+RELEASE+UNLINK+FORGET at
// depth 1: sysmon's nanosleeps went from 4,300–5,400/s to 100–180/s and the
// daemon's CPU per operation from 410–460 µs to 250–300 µs; with 2 request
// queues at depth 32 the spare Ps took GETATTR's p99.9 from 3.2–3.6 ms to
// 2.4–2.8 ms.
const yieldEvery = 5 * time.Millisecond

// yielder is a queue thread's yield clock.
type yielder struct{ last time.Time }

// maybe yields the thread's P if it has not done so for yieldEvery.
func (y *yielder) maybe() {
	if now := time.Now(); now.Sub(y.last) >= yieldEvery {
		y.last = now
		runtime.Gosched()
	}
}

// procs counts queue threads to keep GOMAXPROCS at base+threads while any
// run.
var procs struct {
	mu      sync.Mutex
	base    int // GOMAXPROCS before the first queue started
	set     int // what queueStarted set it to (0: not raised)
	threads int
}

// queueStarted accounts for a new queue thread, raising GOMAXPROCS if the
// spare Ps would fall short.
func queueStarted() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.threads == 0 {
		procs.base, procs.set = runtime.GOMAXPROCS(0), 0
	}
	procs.threads++
	if want := procs.base + procs.threads; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
		procs.set = want
	}
}

// queueExited accounts for a queue thread that exited. When the last one
// has, GOMAXPROCS goes back to what it was (unless something else changed
// it since); while some run it stays, as a device restarts its queues at
// every reset and each change stops the world.
func queueExited() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.threads--
	if procs.threads == 0 && procs.set != 0 && runtime.GOMAXPROCS(0) == procs.set {
		runtime.GOMAXPROCS(procs.base)
	}
}
