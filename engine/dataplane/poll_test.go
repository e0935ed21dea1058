package dataplane

import (
	"testing"
	"time"
)

// The window grows while idle periods end inside max, stays while they end
// inside it or last less than holdFactor×max, and collapses to 0 when they
// last longer.
func TestPollerAdapts(t *testing.T) {
	p := poller{max: 40 * time.Microsecond}
	idle := p.adapt // exact idle lengths: woke measures them with the clock
	if p.poll(func() bool { return true }) {
		t.Fatal("a zero window polled")
	}
	idle(20 * time.Microsecond)
	if p.window != minPoll {
		t.Fatalf("after a short idle: window %v, want %v", p.window, minPoll)
	}
	for i := 0; i < 10; i++ {
		idle(30 * time.Microsecond)
	}
	if p.window != p.max {
		t.Fatalf("window %v after short idles, want the cap %v", p.window, p.max)
	}
	idle(10 * time.Microsecond)
	if p.window != p.max {
		t.Fatalf("an idle inside the window changed it: %v", p.window)
	}
	for i := 0; i < 5; i++ {
		idle(holdFactor*p.max - time.Microsecond)
	}
	if p.window != p.max {
		t.Fatalf("idles under %d× the cap changed the window: %v", holdFactor, p.window)
	}
	// Hiccups with requests inside the window between them never add up;
	// holdMisses of them in a row halve it, and a run of them ends polling.
	idle(time.Microsecond)
	for i := 0; i < 3*holdMisses; i++ {
		idle(2 * p.max)
		if i%(holdMisses-1) == holdMisses-2 {
			idle(time.Microsecond)
		}
	}
	if p.window != p.max {
		t.Fatalf("hiccups between requests inside the window changed it: %v", p.window)
	}
	for i := 0; i < holdMisses; i++ {
		idle(2 * p.max)
	}
	if p.window != p.max/2 {
		t.Fatalf("after %d hold-zone idles in a row: window %v, want %v", holdMisses, p.window, p.max/2)
	}
	for i := 0; i < 10*holdMisses; i++ {
		idle(2 * p.max)
	}
	if p.window != 0 {
		t.Fatalf("requests always %v apart: window %v, want 0 (no polling)", 2*p.max, p.window)
	}
	for i := 0; i < 10; i++ {
		idle(30 * time.Microsecond)
	}
	if p.window != p.max {
		t.Fatalf("window %v after short idles again, want the cap %v", p.window, p.max)
	}
	for i := 0; i < 5; i++ {
		idle(time.Millisecond)
	}
	if p.window != 0 {
		t.Fatalf("window %v after long idles, want 0", p.window)
	}
	off := poller{}
	off.idleSince = time.Now().Add(-time.Microsecond)
	off.woke()
	if off.window != 0 {
		t.Fatal("polling off (max 0) grew a window")
	}
}

// poll returns as soon as work shows up, and gives up after the window.
func TestPollerPoll(t *testing.T) {
	// A window far longer than any scheduling delay (poll yields the CPU
	// between checks): finding work must end it, not the clock.
	p := poller{max: time.Minute, window: 30 * time.Second}
	n := 0
	start := time.Now()
	if !p.poll(func() bool { n++; return n == 3 }) {
		t.Fatal("poll missed work")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("poll ran %v after work showed up", d)
	}
	p.window = 200 * time.Microsecond
	start = time.Now()
	if p.poll(func() bool { return false }) {
		t.Fatal("poll found work in an empty ring")
	}
	if d := time.Since(start); d < p.window {
		t.Fatalf("gave up after %v, window %v", d, p.window)
	}
}
