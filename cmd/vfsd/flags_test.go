package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"vfsd/seccomp"
)

func TestParseArgs(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name  string
		args  []string
		check func(c config) bool
		err   string // substring of the error; "" means success
	}{
		{"defaults", []string{"--socket-path=/s", "--shared-dir=" + dir}, func(c config) bool {
			return c.SocketPath == "/s" && c.SharedDir == dir && c.Cache == "auto" && c.RequestQueues == 1 &&
				c.PoolSize == 64 && c.ListenFD == -1 && c.ConnFD == -1 && c.LogLevel == slog.LevelInfo
		}, ""},
		{"all long flags", []string{"--fd=5", "--shared-dir", dir, "--tag=myfs", "--cache=metadata",
			"--thread-pool-size=8", "--log-level=debug", "--num-request-queues=4", "--socket-group=kvm"}, func(c config) bool {
			return c.ListenFD == 5 && c.Tag == "myfs" && c.Cache == "metadata" && c.PoolSize == 8 &&
				c.LogLevel == slog.LevelDebug && c.RequestQueues == 4 && c.SocketGroup == "kvm"
		}, ""},
		{"virtiofsd -o", []string{"--socket-path=/s", "-o", "source=" + dir + ",cache=none", "-o", "xattr,no_posix_lock,log_level=warn"},
			func(c config) bool { return c.SharedDir == dir && c.Cache == "never" && c.LogLevel == slog.LevelWarn }, ""},
		{"seccomp default kill", []string{"--shared-dir=" + dir}, func(c config) bool {
			return c.Seccomp == seccomp.ActionKill && slices.Contains(c.workerArgs(), "--seccomp=kill")
		}, ""},
		{"seccomp log", []string{"--seccomp=log"}, func(c config) bool {
			return c.Seccomp == seccomp.ActionLog && slices.Contains(c.workerArgs(), "--seccomp=log")
		}, ""},
		{"pprof and metrics", []string{"--pprof-addr=127.0.0.1:6060", "--metrics-addr=unix:/run/m.sock"}, func(c config) bool {
			return c.PprofAddr == "127.0.0.1:6060" && c.MetricsAddr == "unix:/run/m.sock" &&
				slices.Contains(c.workerArgs(), "--pprof-addr=127.0.0.1:6060") &&
				slices.Contains(c.workerArgs(), "--metrics-addr=unix:/run/m.sock")
		}, ""},
		{"pprof not loopback", []string{"--pprof-addr=0.0.0.0:6060"}, nil, "not a loopback address"},
		{"metrics not loopback", []string{"--metrics-addr=192.168.1.1:9100"}, nil, "not a loopback address"},
		{"bad seccomp", []string{"--seccomp=allow"}, nil, "kill, trap, errno, log or none"},
		{"pool zero", []string{"--thread-pool-size=0"}, func(c config) bool { return c.PoolSize == 1 }, ""},
		{"print capabilities", []string{"--print-capabilities"}, func(c config) bool { return c.PrintCaps }, ""},
		{"help", []string{"--help"}, func(c config) bool { return c.Help }, ""},
		{"unknown flag", []string{"--bogus"}, nil, "bogus"},
		{"bad cache", []string{"--cache=sometimes"}, nil, "auto, always, never or metadata"},
		{"bad queues", []string{"--num-request-queues=0"}, nil, "num-request-queues"},
		{"bad fd", []string{"--fd=x"}, nil, "fd"},
		{"bad level", []string{"--log-level=loud"}, nil, "log-level"},
		{"bad -o", []string{"-o", "bogus=1"}, nil, "unknown option"},
		{"refused -o", []string{"-o", "timeout=1"}, nil, "-o timeout: not supported"},
		{"empty source", []string{"-o", "source="}, nil, "empty"},
		{"flag with value", []string{"-o", "xattr=1"}, nil, "no value"},
		{"stray argument", []string{"--shared-dir=" + dir, "extra"}, nil, "unexpected argument"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseArgs(c.args)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(got) {
				t.Fatalf("parsed %+v", got)
			}
		})
	}
}

// Command line errors exit 2 with exactly one line on stderr.
func TestRunUsageErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	for _, args := range [][]string{
		{"--bogus"},
		{"--shared-dir=" + dir},         // no socket
		{"--socket-path=" + dir + "/s"}, // no shared dir
		{"--socket-path=/s", "--shared-dir=/nonexistent/dir"},
		{"--socket-path=/s", "--shared-dir=" + dir, "--fd=7"},
		{"--socket-path=/s", "--shared-dir=" + dir, "--num-request-queues=300"},
		{"--socket-path=/s", "-o", "source=" + file},
		{"--fd=1", "--shared-dir=" + dir},
	} {
		if args[len(args)-1] == "source="+file {
			writeFile(t, file)
		}
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		lines := strings.Split(strings.TrimSuffix(errb.String(), "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "vfsd: ") || out.Len() != 0 {
			t.Errorf("%q: stderr %q stdout %q, want one line", args, errb.String(), out.String())
		}
	}
}

func TestPrintCapabilities(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--print-capabilities"}, &out, &errb); code != 0 || errb.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	var caps struct {
		Type     string   `json:"type"`
		Features []string `json:"features"`
	}
	if err := json.Unmarshal(out.Bytes(), &caps); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if caps.Type != "fs" || caps.Features == nil {
		t.Fatalf("capabilities %+v", caps)
	}
}

// The daemon exits 0 within a second of the frontend disconnecting.
func TestExitOnDisconnect(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vfsd.sock")
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"--socket-path=" + sock, "--shared-dir=" + dir, "--log-level=error"}, &bytes.Buffer{}, &errb)
	}()
	var c net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; {
		var err error
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// GET_FEATURES, read the reply, hang up.
	c.Write([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	reply := make([]byte, 20)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(reply); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(time.Second):
		t.Fatal("still running a second after the frontend disconnected")
	}
}

func writeFile(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}
