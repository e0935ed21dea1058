package crashpoint

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	s, errs := parse("after-pop, mid-publish:3,after-decode:rand:7,,bad:0,x:rand:0,y:z:1,:2,a:b")
	if len(errs) != 5 {
		t.Fatalf("errors %v, want 5", errs)
	}
	if len(s) != 3 {
		t.Fatalf("%d specs, want 3", len(s))
	}
	if s[0].name != "after-pop" || s[0].nth != 1 || s[0].p != 0 {
		t.Errorf("spec 0 = %+v", s[0])
	}
	if s[1].name != "mid-publish" || s[1].nth != 3 {
		t.Errorf("spec 1 = %+v", s[1])
	}
	if s[2].name != "after-decode" || s[2].nth != 0 || s[2].p != 7 {
		t.Errorf("spec 2 = %+v", s[2])
	}
}

// withKill configures specs and counts kills instead of dying.
func withKill(t *testing.T, env string, seed uint64) *int {
	t.Helper()
	s, errs := parse(env)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	n := new(int)
	old, oldSpecs := kill, specs
	kill = func() { *n++ }
	configure(s, seed)
	t.Cleanup(func() { kill = old; configure(oldSpecs, 1) })
	return n
}

func TestNth(t *testing.T) {
	n := withKill(t, "a:3,b", 1)
	for i := 1; i <= 5; i++ {
		Hit("a")
		Hit("c")
		want := 0
		if i >= 3 {
			want = 1
		}
		if *n != want {
			t.Fatalf("after %d hits of a: %d kills, want %d", i, *n, want)
		}
	}
	Hit("b")
	if *n != 2 {
		t.Fatalf("b did not fire at its first hit")
	}
}

func TestRandDeterministic(t *testing.T) {
	run := func() []int {
		var fired []int
		n := withKill(t, "r:rand:4", 42)
		for i := 0; i < 400; i++ {
			before := *n
			Hit("r")
			if *n != before {
				fired = append(fired, i)
			}
		}
		return fired
	}
	a, b := run(), run()
	if len(a) < 50 || len(a) > 150 {
		t.Fatalf("1/4 over 400 hits fired %d times", len(a))
	}
	if len(a) != len(b) {
		t.Fatalf("same seed, different sequences: %v vs %v", a, b)
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different sequences")
		}
	}
}

func TestDisabled(t *testing.T) {
	withKill(t, "", 1)
	if Enabled() {
		t.Fatal("enabled with an empty spec")
	}
	if a := testing.AllocsPerRun(100, func() { Hit("after-pop") }); a != 0 {
		t.Fatalf("Hit allocates %v", a)
	}
}

// TestKillsProcess runs the test binary as a child with VFSD_CRASHPOINT set
// and checks that it died of SIGKILL at the named point, not before.
func TestKillsProcess(t *testing.T) {
	if os.Getenv("CRASHPOINT_CHILD") == "1" {
		Hit("other")
		os.Stdout.WriteString("before\n")
		Hit("boom")
		os.Stdout.WriteString("after\n")
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillsProcess$")
	cmd.Env = append(os.Environ(), "CRASHPOINT_CHILD=1", Env+"=boom")
	out, err := cmd.Output()
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("child: %v, output %q", err, out)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child status %v, want SIGKILL", ws)
	}
	if !strings.Contains(string(out), "before") || strings.Contains(string(out), "after") {
		t.Fatalf("child output %q: killed at the wrong point", out)
	}
}

func BenchmarkHitDisabled(b *testing.B) {
	old := specs
	configure(nil, 1)
	defer configure(old, 1)
	for b.Loop() {
		Hit(AfterPop)
	}
}
