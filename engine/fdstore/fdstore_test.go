package fdstore

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if os.Getenv("FDSTORE_TEST_CHILD") == "1" {
		os.Exit(childMain())
	}
	os.Unsetenv(EnvNotifySocket)
	os.Unsetenv(EnvNotifyFD)
	os.Exit(m.Run())
}

// childMain takes the handed-over fds and prints "name=content" per fd.
func childMain() int {
	fds, err := ListenFDs(true)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	for _, k := range []string{EnvListenFDs, EnvListenFDNames, EnvListenChild} {
		if _, ok := os.LookupEnv(k); ok {
			fmt.Println("error: still set:", k)
			return 1
		}
	}
	for _, f := range fds {
		flags, err := unix.FcntlInt(uintptr(f.FD), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			fmt.Println("error: no cloexec on", f.FD)
			return 1
		}
		fmt.Printf("%d %s=%s\n", f.FD, f.Name, readAll(f.FD))
	}
	return 0
}

func readAll(fd int) string {
	b := make([]byte, 128)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		return "ERR:" + err.Error()
	}
	return string(b[:n])
}

func memfd(t *testing.T, content string) int {
	t.Helper()
	fd, err := unix.MemfdCreate("fdstore-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(fd, []byte(content), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newServer(t *testing.T, cfg Config) (*Server, *Client, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(lb, nil))
	}
	s := NewServer(cfg)
	t.Cleanup(func() { s.Close() })
	peer, err := s.Channel()
	if err != nil {
		t.Fatal(err)
	}
	nfd, err := unix.FcntlInt(peer.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	peer.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClientFD(nfd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c, lb
}

func contents(s *Server) []string {
	var out []string
	for _, e := range s.Entries() {
		out = append(out, e.Name+"="+readAll(e.FD))
	}
	return out
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"state", true},
		{"inode.42 x", true},
		{strings.Repeat("a", 255), true},
		{strings.Repeat("a", 256), false},
		{"", false},
		{"a:b", false},
		{"a\nb", false},
		{"tab\t", false},
		{"del\x7f", false},
		{"é", false},
	} {
		if got := ValidName(tc.name); got != tc.ok {
			t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
	var c *Client // nil client validates too
	if err := c.Store("a:b", 0); !errors.Is(err, ErrBadName) {
		t.Errorf("Store with bad name: %v", err)
	}
	if err := c.Remove(""); !errors.Is(err, ErrBadName) {
		t.Errorf("Remove with empty name: %v", err)
	}
}

func TestStoreRemoveRoundTrip(t *testing.T) {
	before := countFDs(t)
	t.Run("store", func(t *testing.T) {
		s, c, _ := newServer(t, Config{})
		a1, a2, b := memfd(t, "a1"), memfd(t, "a2"), memfd(t, "b")
		if err := c.Store("a", a1, a2); err != nil {
			t.Fatal(err)
		}
		if err := c.Store("b", b); err != nil {
			t.Fatal(err)
		}
		s.Drain()
		if got, want := contents(s), []string{"a=a1", "a=a2", "b=b"}; !equal(got, want) {
			t.Fatalf("stored %v, want %v", got, want)
		}
		// The same open file under the same name is stored once; under
		// another name it is a separate entry.
		if err := c.Store("b", b); err != nil {
			t.Fatal(err)
		}
		if err := c.Store("c", b); err != nil {
			t.Fatal(err)
		}
		s.Drain()
		if got, want := contents(s), []string{"a=a1", "a=a2", "b=b", "c=b"}; !equal(got, want) {
			t.Fatalf("stored %v, want %v", got, want)
		}
		if err := c.Remove("a"); err != nil {
			t.Fatal(err)
		}
		// Remove + store in one datagram replaces a name.
		if err := c.Notify("FDSTOREREMOVE=1\nFDSTORE=1\nFDNAME=b", a2); err != nil {
			t.Fatal(err)
		}
		s.Drain()
		if got, want := contents(s), []string{"c=b", "b=a2"}; !equal(got, want) {
			t.Fatalf("stored %v, want %v", got, want)
		}
		if got := s.Names(); !equal(got, []string{"c", "b"}) {
			t.Fatalf("names %v", got)
		}
		// The store holds its own copies of the fds.
		if e := s.Entries()[0]; e.FD == b || readAll(e.FD) != "b" {
			got := readAll(e.FD)
			t.Fatalf("stored fd reads %q", got)
		}
	})
	if after := countFDs(t); after != before {
		t.Fatalf("fd leak: %d fds before, %d after", before, after)
	}
}

func TestStoreDurableAfterSenderGone(t *testing.T) {
	s, c, _ := newServer(t, Config{})
	for i := 0; i < 200; i++ { // more than a datagram queue length
		fd := memfd(t, fmt.Sprint(i))
		if err := c.Store(fmt.Sprintf("n%d", i), fd); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	c.Close()
	s.Drain()
	if s.Len() != 200 {
		t.Fatalf("stored %d fds, want 200", s.Len())
	}
	if got := readAll(s.Entries()[199].FD); got != "199" {
		t.Fatalf("last entry reads %q", got)
	}
}

func TestCap(t *testing.T) {
	s, c, lb := newServer(t, Config{MaxFDs: 2})
	if err := c.Store("x", memfd(t, "1"), memfd(t, "2"), memfd(t, "3")); err != nil {
		t.Fatal(err)
	}
	s.Drain()
	if s.Len() != 2 || s.Dropped() != 1 {
		t.Fatalf("len %d dropped %d, want 2 and 1", s.Len(), s.Dropped())
	}
	if !strings.Contains(lb.String(), "store full") {
		t.Fatalf("no log about the cap: %s", lb.String())
	}
	fd4 := memfd(t, "4")
	before := countFDs(t)
	fd, _ := unix.Dup(fd4)
	if err := s.Add("y", fd); !errors.Is(err, ErrFull) {
		t.Fatalf("Add over cap: %v", err)
	}
	if after := countFDs(t); after != before {
		t.Fatalf("fd over cap not closed: %d -> %d", before, after)
	}
	s.Remove("x")
	if err := s.Add("y", unixDup(t, memfd(t, "5"))); err != nil {
		t.Fatal(err)
	}
	if got := contents(s); !equal(got, []string{"y=5"}) {
		t.Fatalf("stored %v", got)
	}
}

func unixDup(t *testing.T, fd int) int {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return nfd
}

func TestGarbageIgnored(t *testing.T) {
	var msgs []Message
	var mu sync.Mutex
	s, c, lb := newServer(t, Config{OnMessage: func(m Message) {
		mu.Lock()
		msgs = append(msgs, m)
		mu.Unlock()
	}})
	fd := memfd(t, "g")
	before := countFDs(t)
	raw := func(b []byte, fds ...int) {
		t.Helper()
		c.mu.Lock()
		defer c.mu.Unlock()
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := unix.Sendmsg(c.fd, b, oob, nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	raw([]byte("no equals sign"), fd)
	raw([]byte("=value"), fd)
	raw([]byte{0xff, 0xfe, '=', '1'}, fd)
	raw([]byte("FDSTORE=1\nFDNAME=bad:name"), fd)
	raw([]byte("FDSTORE=1\nFDNAME="+strings.Repeat("x", 300)), fd)
	raw([]byte("READY=1"), fd) // fds without FDSTORE=1
	raw([]byte("FDSTOREREMOVE=1"))
	raw([]byte("ERRNO=-5"))
	raw(bytes.Repeat([]byte("A=1\n"), 2000), fd) // too long
	raw([]byte("\x00\x00\x00"), fd)
	s.Drain()
	if s.Len() != 0 {
		t.Fatalf("garbage stored %d fds", s.Len())
	}
	if after := countFDs(t); after != before {
		t.Fatalf("fds of rejected datagrams leaked: %d -> %d", before, after)
	}
	for _, want := range []string{"malformed", "invalid FDNAME", "without FDSTORE", "without FDNAME", "too long"} {
		if !strings.Contains(lb.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, lb.String())
		}
	}
	// Still works afterwards.
	if err := c.Notify("READY=1\nSTATUS=serving\nWATCHDOG=1\nX_CUSTOM=2"); err != nil {
		t.Fatal(err)
	}
	s.Drain()
	mu.Lock()
	defer mu.Unlock()
	last := msgs[len(msgs)-1]
	if !last.Ready || !last.Watchdog || last.Status != "serving" || !equal(last.Unknown, []string{"X_CUSTOM"}) {
		t.Fatalf("last message %+v", last)
	}
}

func TestListenSocketPathAndAbstract(t *testing.T) {
	s, _, _ := newServer(t, Config{})
	path := filepath.Join(t.TempDir(), "notify")
	abstract := fmt.Sprintf("@vfsd-fdstore-test-%d", os.Getpid())
	for _, addr := range []string{path, abstract} {
		if err := s.Listen(addr); err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Store("via"+addr[:1], memfd(t, addr)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	t.Setenv(EnvNotifySocket, path)
	c, err := FromEnv(true)
	if err != nil || c == nil {
		t.Fatalf("FromEnv: %v %v", c, err)
	}
	if _, ok := os.LookupEnv(EnvNotifySocket); ok {
		t.Fatal("FromEnv(true) left NOTIFY_SOCKET set")
	}
	if err := c.Remove("via/"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.Drain()
	if got := contents(s); !equal(got, []string{"via@=" + abstract}) {
		t.Fatalf("stored %v", got)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket path not removed: %v", err)
	}
}

func TestChildFilesAndListenFDs(t *testing.T) {
	s, _, _ := newServer(t, Config{})
	if err := s.Add("state", unixDup(t, memfd(t, "S"))); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("inode.7", unixDup(t, memfd(t, "I1")), unixDup(t, memfd(t, "I2"))); err != nil {
		t.Fatal(err)
	}
	env, files, err := s.ChildFiles()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), "FDSTORE_TEST_CHILD=1", "LISTEN_PID="), env...)
	cmd.Env = filterEnv(cmd.Env, "LISTEN_PID")
	cmd.ExtraFiles = files
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out.String())
	}
	want := "3 state=S\n4 inode.7=I1\n5 inode.7=I2\n"
	if out.String() != want {
		t.Fatalf("child saw:\n%swant:\n%s", out.String(), want)
	}
}

func filterEnv(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func TestListenFDsNotForUs(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		wantErr bool
	}{
		{env: map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": "1"}},                           // another pid
		{env: map[string]string{"LISTEN_FDS": "1"}},                                              // neither pid nor child marker
		{env: map[string]string{"LISTEN_FDS": "x", "VFSD_LISTEN_FDS_CHILD": "1"}, wantErr: true}, // bad count
		{env: map[string]string{"LISTEN_FDS": "-1", "VFSD_LISTEN_FDS_CHILD": "1"}, wantErr: true},
		{env: map[string]string{"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a", "LISTEN_PID": fmt.Sprint(os.Getpid())}, wantErr: true},
		{env: map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": "abc"}, wantErr: true},
		{env: map[string]string{"LISTEN_FDS": "0", "VFSD_LISTEN_FDS_CHILD": "1"}},
		{env: map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": fmt.Sprint(os.Getpid()), "LISTEN_FDNAMES": "x"}, wantErr: closedFD3()},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		fds, err := ListenFDs(true)
		if (err != nil) != tc.wantErr || (err == nil && len(fds) != 0 && !tc.wantErr && tc.env["LISTEN_FDS"] != "1") {
			t.Errorf("env %v: fds %v err %v", tc.env, fds, err)
		}
		for k := range tc.env {
			if _, ok := os.LookupEnv(k); ok {
				t.Errorf("env %v: %s not unset", tc.env, k)
			}
		}
	}
}

// closedFD3 reports whether fd 3 is not open in the test process (then
// ListenFDs must fail on it).
func closedFD3() bool {
	_, err := unix.FcntlInt(3, unix.F_GETFD, 0)
	return err != nil
}

func TestUpstreamForwardAndAdopt(t *testing.T) {
	// "systemd": a second server listening on a path.
	sysd, _, _ := newServer(t, Config{})
	path := filepath.Join(t.TempDir(), "systemd-notify")
	if err := sysd.Listen(path); err != nil {
		t.Fatal(err)
	}
	up, err := NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	s, c, _ := newServer(t, Config{Upstream: up})
	if err := c.Store("state", memfd(t, "S")); err != nil {
		t.Fatal(err)
	}
	if err := c.Store("tmp", memfd(t, "T")); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove("tmp"); err != nil {
		t.Fatal(err)
	}
	s.Drain()
	time.Sleep(10 * time.Millisecond)
	sysd.Drain()
	if got := contents(sysd); !equal(got, []string{UpstreamPrefix + "state=S"}) {
		t.Fatalf("systemd holds %v", got)
	}
	// A restarted supervisor takes its fds back, leaving listeners alone.
	var handed []NamedFD
	for _, e := range sysd.Entries() {
		handed = append(handed, NamedFD{Name: e.Name, FD: unixDup(t, e.FD)})
	}
	lfd := unixDup(t, memfd(t, "L"))
	handed = append(handed, NamedFD{Name: "vhost.sock", FD: lfd})
	stored, other := SplitUpstream(handed)
	if len(other) != 1 || other[0].Name != "vhost.sock" {
		t.Fatalf("other = %v", other)
	}
	unix.Close(lfd)
	s2 := NewServer(Config{Upstream: up})
	defer s2.Close()
	if err := s2.Adopt(stored); err != nil {
		t.Fatal(err)
	}
	if got := contents(s2); !equal(got, []string{"state=S"}) {
		t.Fatalf("adopted %v", got)
	}
	sysd.Drain()
	if sysd.Len() != 1 { // adopting must not store a second copy upstream
		t.Fatalf("systemd holds %d fds after adopt", sysd.Len())
	}
	s2.RemoveAll()
	time.Sleep(10 * time.Millisecond)
	sysd.Drain()
	if sysd.Len() != 0 {
		t.Fatalf("RemoveAll left %d fds upstream", sysd.Len())
	}
}

func TestNilClientAndEnv(t *testing.T) {
	var c *Client
	if err := c.Ready(); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvNotifyFD, "notanumber")
	if _, err := FromEnv(false); err == nil {
		t.Fatal("bad VFSD_NOTIFY_FD accepted")
	}
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t.Setenv(EnvNotifyFD, fmt.Sprint(f.Fd()))
	if _, err := FromEnv(false); err == nil {
		t.Fatal("regular file accepted as notify fd")
	}
	if _, err := NewClient("relative"); err == nil {
		t.Fatal("relative address accepted")
	}
	if err := (&Client{fd: -1}).Notify("READY=1", make([]int, 300)...); err == nil {
		t.Fatal("300 fds accepted")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSendBatch: one datagram removes names, then stores each fd under its
// own name; a malformed batch is refused whole, its fds closed.
func TestSendBatch(t *testing.T) {
	before := countFDs(t)
	t.Run("batch", func(t *testing.T) {
		s, c, lb := newServer(t, Config{})
		a, b, x := memfd(t, "a"), memfd(t, "b"), memfd(t, "x")
		if err := c.Store("old", x); err != nil {
			t.Fatal(err)
		}
		if err := c.SendBatch([]string{"old", "absent"}, []string{"fh.1", "fh.2", "old"}, []int{a, b, x}); err != nil {
			t.Fatal(err)
		}
		s.Drain()
		if got, want := contents(s), []string{"fh.1=a", "fh.2=b", "old=x"}; !equal(got, want) {
			t.Fatalf("stored %v, want %v", got, want)
		}
		if err := c.SendBatch([]string{"fh.1", "fh.2"}, nil, nil); err != nil {
			t.Fatal(err)
		}
		s.Drain()
		if got := s.Names(); !equal(got, []string{"old"}) {
			t.Fatalf("names %v after a remove batch", got)
		}
		// Refused by the client: bad names, mismatched counts, too long.
		if c.SendBatch(nil, []string{"a:b"}, []int{a}) == nil || c.SendBatch(nil, []string{"a"}, nil) == nil {
			t.Fatal("bad batch accepted by the client")
		}
		long := make([]string, 600)
		for i := range long {
			long[i] = fmt.Sprintf("name-%d", i)
		}
		if c.SendBatch(long, nil, nil) == nil {
			t.Fatal("batch over the datagram size accepted")
		}
		// Refused by the server: two names for one fd, FDNAME mixed in.
		if err := c.Notify("FDSTORE=1\nX_VFSD_FDNAMES=p:q", a); err != nil {
			t.Fatal(err)
		}
		if err := c.Notify("FDSTORE=1\nFDNAME=r\nX_VFSD_FDNAMES=r", a); err != nil {
			t.Fatal(err)
		}
		if err := c.Notify("X_VFSD_REMOVE=old:bad name\x01"); err != nil {
			t.Fatal(err)
		}
		s.Drain()
		if got := s.Names(); !equal(got, []string{"old"}) {
			t.Fatalf("names %v after malformed batches", got)
		}
		if n := strings.Count(lb.String(), "malformed batch"); n != 3 {
			t.Fatalf("%d malformed batches logged, want 3:\n%s", n, lb.String())
		}
	})
	if after := countFDs(t); after != before {
		t.Fatalf("fd leak: %d fds before, %d after", before, after)
	}
}

// TestCoalesce: with Coalesce, datagrams sent while the reader waits are
// all applied, in order, and Close ends a waiting reader promptly.
func TestCoalesce(t *testing.T) {
	s, c, _ := newServer(t, Config{Coalesce: 50 * time.Millisecond})
	for i := range 100 {
		fd := memfd(t, fmt.Sprint(i))
		if err := c.Store(fmt.Sprintf("n%d", i%10), fd); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			c.Remove(fmt.Sprintf("n%d", i%7))
		}
	}
	time.Sleep(120 * time.Millisecond) // the reader wakes at least once
	s.Drain()
	// Recompute what the store must hold: apply the same sequence to a map.
	want := map[string]int{}
	for i := range 100 {
		want[fmt.Sprintf("n%d", i%10)]++
		if i%10 == 9 {
			delete(want, fmt.Sprintf("n%d", i%7))
		}
	}
	n := 0
	for _, v := range want {
		n += v
	}
	if s.Len() != n {
		t.Fatalf("store holds %d fds, want %d", s.Len(), n)
	}
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}
