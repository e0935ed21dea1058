package main

import (
	"encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vfsd under systemd, with the protocol faked: a socket-activated listening
// socket (LISTEN_FDS, LISTEN_PID set by a shell that then execs vfsd, as
// systemd does), NOTIFY_SOCKET and WATCHDOG_USEC. vfsd must say READY=1 and
// STATUS= once it listens, ping the watchdog, serve a vhost-user frontend
// on the passed socket, and apply --rlimit-nofile.
func TestSystemdActivation(t *testing.T) {
	dir := t.TempDir()
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	sockPath := filepath.Join(dir, "vfsd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sockPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false) // the socket stays, as with systemd's
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer lf.Close()

	share := filepath.Join(dir, "share")
	os.Mkdir(share, 0o755)
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`,
		os.Args[0], "--shared-dir="+share, "--rlimit-nofile=512", "--seccomp=none")
	cmd.Env = append(os.Environ(), "VFSD_TEST_AS_MAIN=1", "NOTIFY_SOCKET="+notifyPath, "WATCHDOG_USEC=200000",
		"LISTEN_FDS=1", "LISTEN_FDNAMES=vfsd.socket")
	cmd.ExtraFiles = []*os.File{lf}
	var stderr syncBuf
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	lf.Close()

	msgs := make(chan string, 64)
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 4096)
		for {
			n, oobn, _, _, err := notify.ReadMsgUnix(buf, oob)
			if err != nil {
				close(msgs)
				return
			}
			if scms, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range scms {
					if fds, err := syscall.ParseUnixRights(&m); err == nil {
						for _, fd := range fds {
							syscall.Close(fd)
						}
					}
				}
			}
			msgs <- string(buf[:n])
		}
	}()
	// waitFor returns the first datagram containing want.
	waitFor := func(want string) string {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed waiting for %q", want)
				}
				if strings.Contains(m, want) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %q on the notify socket; vfsd stderr:\n%s", want, stderr.String())
			}
		}
	}
	waitFor("READY=1")
	if m := waitFor("STATUS="); !strings.Contains(m, "waiting for a vhost-user connection on fd 3") {
		t.Errorf("status %q", m)
	}
	start := time.Now()
	waitFor("WATCHDOG=1")
	waitFor("WATCHDOG=1")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("two watchdog pings took %v with WATCHDOG_USEC=200000", d)
	}

	limits, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(strings.Fields(string(limits)), " "), "Max open files 512 512 files") {
		t.Errorf("--rlimit-nofile=512 not applied:\n%s", limits)
	}

	// A vhost-user frontend on the activated socket: GET_FEATURES.
	c, err := net.Dial("unix", sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var req [12]byte
	binary.LittleEndian.PutUint32(req[0:], 1) // VHOST_USER_GET_FEATURES
	binary.LittleEndian.PutUint32(req[4:], 1) // version 1
	if _, err := c.Write(req[:]); err != nil {
		t.Fatal(err)
	}
	var rep [20]byte
	if _, err := readFull(c, rep[:]); err != nil {
		t.Fatalf("GET_FEATURES reply: %v; vfsd stderr:\n%s", err, stderr.String())
	}
	if r, f, sz := binary.LittleEndian.Uint32(rep[0:]), binary.LittleEndian.Uint32(rep[4:]),
		binary.LittleEndian.Uint32(rep[8:]); r != 1 || f&0x4 == 0 || sz != 8 {
		t.Fatalf("reply header request=%d flags=%#x size=%d", r, f, sz)
	}
	if feats := binary.LittleEndian.Uint64(rep[12:]); feats&(1<<30) == 0 || feats&(1<<32) == 0 {
		t.Fatalf("features %#x lack PROTOCOL_FEATURES or VERSION_1", feats)
	}
	waitFor("STATUS=serving")

	// The frontend leaves: vfsd exits 0 (systemd then waits on the socket).
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("vfsd exit: %v\n%s", err, stderr.String())
		}
		done <- nil
	case <-time.After(20 * time.Second):
		t.Fatalf("vfsd did not exit after the frontend closed\n%s", stderr.String())
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
