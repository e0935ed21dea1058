package worker

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"vfsd/engine/fdstore"
	"vfsd/engine/passthrough"
)

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true, "127.1.2.3:0": true, "[::1]:6060": true, "localhost:6060": true,
		"unix:/run/vfsd/m.sock": true,
		"0.0.0.0:6060":          false, ":6060": false, "10.0.0.1:6060": false, "[::]:6060": false,
		"example.com:80": false, "127.0.0.1": false, "127.0.0.1:99999": false, "unix:": false, "unix:rel.sock": false,
	} {
		if err := CheckAddr(addr); (err == nil) != ok {
			t.Errorf("CheckAddr(%q) = %v", addr, err)
		}
	}
}

// A unix listener is 0600 (the umask is 0 in the worker), replaces a stale
// socket, never a regular file, and is removed when closed.
func TestListenAddrUnix(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.sock")
	for range 2 { // the second replaces the first's stale file
		l, err := listenAddr("unix:" + p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
			t.Fatalf("socket %v %v", fi.Mode(), err)
		}
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
	f := filepath.Join(dir, "file")
	os.WriteFile(f, nil, 0o644)
	if l, err := listenAddr("unix:" + f); err == nil {
		l.Close()
		t.Fatal("a regular file was replaced")
	}
}

type fakeStore struct{ fail bool }

func (s *fakeStore) Store(string, ...int) error {
	if s.fail {
		return errors.New("no")
	}
	return nil
}
func (s *fakeStore) Remove(string) error { return nil }

func TestStoreCounter(t *testing.T) {
	s := &fakeStore{}
	c := newStoreCounter(s, []fdstore.NamedFD{{Name: "a", FD: 3}, {Name: "b", FD: 4}, {Name: "b", FD: 5}})
	if c.Len() != 3 {
		t.Fatalf("handed: %d", c.Len())
	}
	c.Store("c", 6, 7)
	c.Remove("b")
	if c.Len() != 3 {
		t.Fatalf("after store 2, remove 2: %d", c.Len())
	}
	s.fail = true
	c.Store("d", 8)
	c.Remove("zzz")
	if c.Len() != 3 {
		t.Fatalf("a failed store or unknown remove counted: %d", c.Len())
	}
}

// TestFSStoreBatchesOnlyWhenAnnounced: the filesystem gets a batch sender
// only when the supervisor announced it applies batches.
func TestFSStoreBatchesOnlyWhenAnnounced(t *testing.T) {
	c := newStoreCounter(nil, nil)
	t.Setenv(fdstore.EnvBatch, "")
	if _, ok := fsStore(c).(passthrough.BatchStore); ok {
		t.Error("batches without the supervisor's announcement")
	}
	t.Setenv(fdstore.EnvBatch, "1")
	if _, ok := fsStore(c).(passthrough.BatchStore); !ok {
		t.Error("no batches although the supervisor announced them")
	}
}
