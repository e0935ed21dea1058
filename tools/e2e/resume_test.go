package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
	"vfsd/vring/driver"
)

// ctlStatus is the part of vfsd's control socket "status" answer the
// resume tests read (cmd/vfsd control.go).
type ctlStatus struct {
	WorkerPID   int     `json:"worker_pid"`
	Restarts    int64   `json:"restarts"`
	Crashes     int64   `json:"crashes"`
	StoredFDs   int     `json:"stored_fds"`
	LastStallMS float64 `json:"last_stall_ms"`
}

func queryStatus(path string) (ctlStatus, error) {
	var st ctlStatus
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return st, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("status\n")); err != nil {
		return st, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(line), &st)
}

// TestResumeWorkerKill runs requests at depth 16 through vfsd's default
// supervisor mode, SIGKILLs the worker 20 times (its pid from the control
// socket) and checks that every request completed exactly once with the
// right reply and none saw a disconnect: READs return the file's bytes,
// every MKDIR of a fresh name succeeds (a re-executed one would answer
// EEXIST), WRITEs land at their offsets. It logs the guest-visible stall
// (longest time without any completion around each kill) and the restart
// time (kill to the supervisor reporting the successor).
func TestResumeWorkerKill(t *testing.T) {
	kind, err := daemon.FromEnv()
	if err != nil || kind != daemon.Vfsd {
		t.Skip("vfsd's supervisor only")
	}
	const depth, kills = 16, 20
	t.Setenv("GOTRACEBACK", "crash") // a stuck worker's SIGQUIT dump shows running goroutines too
	e := startSupervised(t, depth, "--max-restarts=1000", "--restart-backoff-max=5ms")
	ctl := e.Daemon.Socket + ".ctl"
	content := make([]byte, 64<<10)
	for i := range content {
		content[i] = byte(i*7 + i>>8)
	}
	data, dfh := openFile(t, e, "data", content, unix.O_RDONLY)
	out, ofh := openFile(t, e, "out", nil, unix.O_RDWR)

	var (
		stop     atomic.Bool
		mu       sync.Mutex
		done     []time.Time // completion times
		failures []string
		mkdirs   atomic.Int64
		writes   sync.Map // offset -> byte
	)
	fail := func(f string, a ...any) {
		mu.Lock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(f, a...))
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for g := 0; g < depth; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; !stop.Load(); i++ {
				var err error
				switch i % 4 {
				case 0, 1:
					off := uint64((g*4099 + i*512) % (len(content) - 4096))
					var n int
					n, err = e.C.Read(e.Ctx, data.NodeID, dfh, off, buf)
					if err == nil && (n != 4096 || !bytes.Equal(buf[:n], content[off:off+4096])) {
						fail("READ at %d: %d bytes, wrong content", off, n)
					}
				case 2:
					name := fmt.Sprintf("d-%d-%d", g, i)
					_, err = e.C.Mkdir(e.Ctx, root, name, 0o755, 0)
					if err == nil {
						mkdirs.Add(1)
					} else {
						err = fmt.Errorf("MKDIR %s: %w", name, err)
					}
				case 3:
					off := uint64(g*1_000_000 + i)
					b := byte(g*31 + i)
					var n uint32
					n, err = e.C.Write(e.Ctx, out.NodeID, ofh, off, []byte{b}, 0)
					if err == nil && n != 1 {
						err = fmt.Errorf("WRITE at %d: %d bytes written", off, n)
					}
					writes.Store(off, b)
				}
				if err != nil {
					fail("request %d of goroutine %d: %v", i, g, err)
					return
				}
				now := time.Now()
				mu.Lock()
				done = append(done, now)
				mu.Unlock()
			}
		}()
	}

	var stalls, restarts []time.Duration
	time.Sleep(200 * time.Millisecond)
	for k := 0; k < kills; k++ {
		st, err := queryStatus(ctl)
		if err != nil || st.WorkerPID == 0 {
			t.Fatalf("status before kill %d: %+v %v", k, st, err)
		}
		t0 := time.Now()
		if err := syscall.Kill(st.WorkerPID, syscall.SIGKILL); err != nil {
			t.Fatalf("kill worker %d: %v", st.WorkerPID, err)
		}
		var up time.Duration
		for {
			s2, err := queryStatus(ctl)
			if err == nil && s2.WorkerPID != 0 && s2.WorkerPID != st.WorkerPID && s2.Restarts > st.Restarts {
				up = time.Since(t0)
				break
			}
			if time.Since(t0) > 10*time.Second {
				t.Fatalf("no successor 10s after killing worker %d: %+v %v\n%s", st.WorkerPID, s2, err, e.Daemon.Output())
			}
			time.Sleep(500 * time.Microsecond)
		}
		restarts = append(restarts, up)
		// Wait for the first completion after the kill (up to 5s), let the
		// new worker serve a little, then take the longest gap without
		// completions from the kill on.
		first := time.Time{}
		for deadline := time.Now().Add(5 * time.Second); first.IsZero() && time.Now().Before(deadline); {
			mu.Lock()
			if n := len(done); n > 0 && done[n-1].After(t0) {
				first = done[n-1]
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
		if first.IsZero() {
			var ring string
			e.FE.Queue(1).WithRing(func(r *driver.Ring) {
				ring = fmt.Sprintf("avail %d used %d avail_event %d used_flags %#x free %d", r.AvailIdx(), r.UsedIdx(), r.AvailEvent(), r.UsedFlags(), r.NumFree())
			})
			t.Logf("queue 1: %s, outstanding %d, stats %+v", ring, e.FE.Queue(1).Outstanding(), e.FE.Queue(1).Stats())
			if s2, err := queryStatus(ctl); err == nil && s2.WorkerPID > 0 {
				syscall.Kill(s2.WorkerPID, syscall.SIGQUIT) // goroutine dump in the log
				time.Sleep(300 * time.Millisecond)
			}
			mu.Lock()
			t.Fatalf("kill %d: no completion within 5s (%d before); failures: %q", k, len(done), failures)
		}
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		prev, gap := t0, time.Duration(0)
		for _, c := range done {
			if c.Before(t0) {
				continue
			}
			gap = max(gap, c.Sub(prev))
			prev = c
		}
		mu.Unlock()
		stalls = append(stalls, gap)
		if len(failures) > 0 {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d failures, first: %s", len(failures), strings.Join(failures, "\n"))
	}

	// Exactly once: every MKDIR that succeeded made one directory; no
	// other directory appeared; every WRITE is on the host.
	ents, err := os.ReadDir(e.Dir)
	must(t, "read shared dir", err)
	dirs := 0
	for _, de := range ents {
		if de.IsDir() {
			dirs++
		}
	}
	if int64(dirs) != mkdirs.Load() {
		t.Fatalf("%d directories on the host, %d MKDIRs succeeded", dirs, mkdirs.Load())
	}
	host := readHost(t, e.Path("out"))
	writes.Range(func(k, v any) bool {
		off := k.(uint64)
		if off >= uint64(len(host)) || host[off] != v.(byte) {
			t.Errorf("WRITE at %d missing on the host", off)
			return false
		}
		return true
	})
	st, err := queryStatus(ctl)
	must(t, "status", err)
	if st.Restarts != int64(len(stalls)) || st.Crashes != int64(len(stalls)) {
		t.Errorf("status %+v after %d kills", st, len(stalls))
	}
	t.Logf("%d kills, %d requests completed, %d MKDIRs; stored fds %d", len(stalls), len(done), mkdirs.Load(), st.StoredFDs)
	t.Logf("guest-visible stall (kill to next completion, longest gap): median %v, max %v", median(stalls), slices.Max(stalls))
	t.Logf("restart time (kill to successor reported by the supervisor): median %v, max %v; supervisor's last stall %.2fms",
		median(restarts), slices.Max(restarts), st.LastStallMS)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Round(10 * time.Microsecond)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// startSupervised is Start for vfsd in supervisor mode with extra flags.
func startSupervised(t *testing.T, depth int, extra ...string) *Env {
	t.Helper()
	bin, err := VfsdBinary()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	e := &Env{T: t, Kind: daemon.Vfsd, Dir: filepath.Join(tmp, "shared")}
	must(t, "mkdir", os.Mkdir(e.Dir, 0o755))
	cfg := daemon.Config{Kind: daemon.Vfsd, Bin: bin, Socket: filepath.Join(tmp, "vhost.sock"), SharedDir: e.Dir,
		Full: true, Extra: extra}
	d, err := daemon.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.Daemon = d
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	e.Ctx = ctx
	t.Cleanup(func() {
		cancel()
		if e.FE != nil {
			e.FE.Close()
		}
		if !d.Wait(5 * time.Second) {
			t.Errorf("vfsd did not exit within 5s of the frontend hanging up; killed")
		}
		if t.Failed() {
			t.Logf("vfsd output:\n%s", tail(d.Output(), 20000))
		}
	})
	fe, err := frontend.Dial(cfg.Socket, frontend.Options{Mem: frontend.MemOptions{Size: 64 << 20}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	e.FE = fe
	e.C = fuseclient.New(fe, fuseclient.Options{Depth: depth})
	if e.Init, err = e.C.Init(ctx, 0); err != nil {
		t.Fatalf("INIT: %v", err)
	}
	return e
}

// TestStoreReleasesWhenIdle: the fd-store traffic of CREATE, RELEASE,
// UNLINK and the guest's FORGET (hiprio queue) is queued in the worker;
// once the guest stops, the removes reach the store too: it drops back to
// what it held before (a deleted file's space is not kept allocated by a
// stored fd), and nothing was stored under another name.
func TestStoreReleasesWhenIdle(t *testing.T) {
	if kind, err := daemon.FromEnv(); err != nil || kind != daemon.Vfsd {
		t.Skip("vfsd's supervisor only")
	}
	e := startSupervised(t, 4)
	ctl := e.Daemon.Socket + ".ctl"
	before := workerStatus(t, ctl).StoredFDs
	for i := range 20 {
		name := fmt.Sprintf("f%d", i)
		ent, open, err := e.C.Create(e.Ctx, root, name, uint32(os.O_RDWR), 0o644, 0)
		must(t, "CREATE", err)
		if got := workerStatus(t, ctl).StoredFDs; i == 0 && got <= before {
			// The queue went idle after the CREATE, so its handle's fd
			// was sent (the supervisor reads it within a millisecond).
			time.Sleep(20 * time.Millisecond)
			if got = workerStatus(t, ctl).StoredFDs; got <= before {
				t.Fatalf("stored fds %d after a CREATE, %d before", got, before)
			}
		}
		must(t, "RELEASE", e.C.Release(e.Ctx, ent.NodeID, open.FH, 0, 0, 0))
		must(t, "UNLINK", e.C.Unlink(e.Ctx, root, name))
		must(t, "FORGET", e.C.Forget(e.Ctx, ent.NodeID, 1))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := workerStatus(t, ctl).StoredFDs
		if got == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored fds %d five seconds after the guest went idle, %d before", got, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
