package daemon

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	s, err := parseStat("42 (a b) c)) S 7 42 42 0 -1 4194560 100 0 0 0 13 29 0 0 20 0 1 0 5 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if s.ppid != 7 || s.ticks != 42 {
		t.Fatalf("got %+v, want ppid 7 ticks 42", s)
	}
	if _, err := parseStat("1 (x) S 0"); err == nil {
		t.Fatal("short stat parsed")
	}
}

func TestTreeCPUTimeSelf(t *testing.T) {
	end := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(end) {
	}
	d, err := TreeCPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 {
		t.Fatalf("cpu time %v after busy loop", d)
	}
}

func TestArgs(t *testing.T) {
	c := Config{Kind: Virtiofsd, Socket: "/s", SharedDir: "/d", Cache: "never", Full: true}
	got := c.Args()
	want := []string{"--socket-path=/s", "-o", "source=/d", "-o", "cache=none", "-o", "xattr", "-o", "posix_lock", "-o", "flock"}
	if len(got) != len(want) {
		t.Fatalf("args %q, want %q", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("args %q, want %q", got, want)
		}
	}
	c = Config{Kind: Vfsd, Socket: "/s", SharedDir: "/d", RequestQueues: 4}
	if a := c.Args(); len(a) != 4 || a[3] != "--num-request-queues=4" || a[2] != "--cache=auto" {
		t.Fatalf("vfsd args %q", a)
	}
}

// Output keeps the end of a long output, from a line start.
func TestOutputKeepsTail(t *testing.T) {
	var s syncBuffer
	line := strings.Repeat("x", 99) + "\n"
	for i := 0; i < 2*outputKeep/len(line); i++ {
		s.Write([]byte(line))
	}
	s.Write([]byte("the end\n"))
	out := s.String()
	if !strings.HasSuffix(out, "x\nthe end\n") || len(out) > outputKeep+outputKeep/2 || len(out) < outputKeep/2 ||
		!strings.HasPrefix(out, line) {
		t.Fatalf("kept %d bytes, ends %q, starts %q", len(out), out[max(0, len(out)-20):], out[:min(len(out), 20)])
	}
}
