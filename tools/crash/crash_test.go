package crash

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/e2e"
	"vfsd/tools/fuseclient"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.Cleanup()
	os.Exit(code)
}

func envInt(t testing.TB, name string, def int) int {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, s, err)
		}
		return n
	}
	return def
}

func seed(t testing.TB) int64 {
	s := int64(envInt(t, "VFSD_CRASH_SEED", 0))
	if s == 0 {
		s = time.Now().UnixNano() % 1000000007
	}
	t.Logf("workload seed %d (VFSD_CRASH_SEED=%d reproduces the operation sequences)", s, s)
	return s
}

// hostXattrs reports whether the share's file system takes user xattrs.
func hostXattrs(t testing.TB, dir string) bool {
	p := dir + "/.xattr-probe"
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	if err := unix.Setxattr(p, "user.probe", []byte("x"), 0); err != nil {
		t.Logf("no user xattrs on the share (%v): setxattr/getxattr left out of the workload", err)
		return false
	}
	return true
}

// probe sends GETATTR(root) on every request queue at once and returns when
// all are answered: the guest-visible stall when sent right after a kill.
func (e *Env) probe(ctx context.Context) error {
	n := e.FE.NumQueues() - 1
	errs := make(chan error, n)
	for q := 1; q <= n; q++ {
		go func() {
			_, err := e.C.OnQueue(q).Getattr(ctx, 1, nil)
			errs <- err
		}()
	}
	var first error
	for q := 0; q < n; q++ {
		if err := <-errs; err != nil && first == nil {
			first = fmt.Errorf("GETATTR(root) probe: %w", err)
		}
	}
	return first
}

// killAndRecover kills the worker, waits for a successor and for it to
// answer on every queue; it returns the stall (kill to last probe answer).
func (e *Env) killAndRecover(ctx context.Context) (time.Duration, int, error) {
	pid, err := e.KillWorker()
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	if err := e.probe(ctx); err != nil {
		return 0, pid, err
	}
	return time.Since(t0), pid, nil
}

// fdCounts returns the open fd counts of the supervisor and the worker.
func (e *Env) fdCounts() (sup, wrk, wpid int, err error) {
	wpid, _ = e.WorkerPID()
	if wpid == 0 {
		return 0, 0, 0, fmt.Errorf("no worker")
	}
	if sup, err = FDCount(e.Daemon.PID()); err != nil {
		return
	}
	wrk, err = FDCount(wpid)
	return
}

// fdBaseline kills the worker once (so that the baseline worker is a resumed
// one, like the worker at the end of a test) and counts fds.
func (e *Env) fdBaseline(ctx context.Context) (sup, wrk int) {
	e.T.Helper()
	if _, _, err := e.killAndRecover(ctx); err != nil {
		e.T.Fatalf("kill for the fd baseline: %v", err)
	}
	// A worker that was just restarted may still be closing fds it was
	// handed (and the supervisor its predecessor's): wait until the counts
	// hold still for 200 ms.
	sup, wrk, _, err := e.fdCounts()
	for stable, i := 0, 0; stable < 10 && i < 250; i++ {
		time.Sleep(20 * time.Millisecond)
		s2, w2, _, err2 := e.fdCounts()
		if err2 == nil && err == nil && s2 == sup && w2 == wrk {
			stable++
			continue
		}
		sup, wrk, err, stable = s2, w2, err2, 0
	}
	if err != nil {
		e.T.Fatalf("fd baseline: %v", err)
	}
	e.T.Logf("fd baseline (no handles, root inode only, resumed worker): supervisor %d, worker %d", sup, wrk)
	return sup, wrk
}

// checkFDs kills the worker once more and compares the fd counts with the
// baseline: every handle released and every inode forgotten must leave no
// fd behind in the worker nor in the supervisor's fd store.
func (e *Env) checkFDs(ctx context.Context, baseSup, baseWrk int) {
	e.T.Helper()
	if _, _, err := e.killAndRecover(ctx); err != nil {
		e.T.Errorf("kill for the final fd count: %v", err)
		return
	}
	var sup, wrk, wpid int
	var err error
	for i := 0; i < 150; i++ { // fd store removals may lag a little
		// Fewer fds than the baseline is no leak (the baseline may have
		// caught a restart's transient fd); more is.
		if sup, wrk, wpid, err = e.fdCounts(); err == nil && sup <= baseSup && wrk <= baseWrk {
			e.T.Logf("fds after the run: supervisor %d, worker %d (baseline %d, %d): no leak", sup, wrk, baseSup, baseWrk)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		e.T.Errorf("final fd count: %v", err)
		return
	}
	e.T.Errorf("fd leak: after releasing every handle and forgetting every inode the supervisor has %d fds (baseline %d) and the worker %d (baseline %d)\nsupervisor fds:\n%sworker fds:\n%s",
		sup, baseSup, wrk, baseWrk, FDList(e.Daemon.PID()), FDList(wpid))
}

// depthSampler records the most requests outstanding per request queue.
type depthSampler struct {
	max  []atomic.Int64
	sum  []atomic.Int64
	n    atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func sampleDepth(e *Env) *depthSampler {
	n := e.FE.NumQueues()
	s := &depthSampler{max: make([]atomic.Int64, n), sum: make([]atomic.Int64, n), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
			for q := 1; q < n; q++ {
				d := int64(e.FE.Queue(q).Outstanding())
				s.sum[q].Add(d)
				if d > s.max[q].Load() {
					s.max[q].Store(d)
				}
			}
			s.n.Add(1)
		}
	}()
	return s
}

func (s *depthSampler) report() string {
	close(s.stop)
	<-s.done
	var b strings.Builder
	for q := 1; q < len(s.max); q++ {
		fmt.Fprintf(&b, " queue %d: max %d mean %.1f;", q, s.max[q].Load(), float64(s.sum[q].Load())/float64(max(s.n.Load(), 1)))
	}
	return b.String()
}

func stallStats(st []time.Duration) string {
	if len(st) == 0 {
		return "no stalls measured"
	}
	s := sortedDurations(st)
	return fmt.Sprintf("%d measured: median %v, p90 %v, max %v", len(s), s[len(s)/2].Round(time.Millisecond),
		s[len(s)*9/10].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

func sortedDurations(st []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), st...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// finishWorkload stops the clients, reports their failures, forgets the
// client directories and returns whether the model held.
func finishWorkload(t *testing.T, e *Env, wl *workload) bool {
	t.Helper()
	errs := wl.wait()
	for i, err := range errs {
		if i == 10 {
			t.Errorf("... and %d more client failures", len(errs)-10)
			break
		}
		t.Errorf("reply differs from the crash-free model: %v", err)
	}
	for _, w := range wl.clients {
		if err := e.C.Forget(e.Ctx, w.dir.nodeid, w.dir.nlookup); err != nil {
			t.Errorf("FORGET c%d: %v", w.id, err)
		}
	}
	reqs, ops := wl.summary()
	t.Logf("workload: %d clients, %d requests in %v; operations:%s", len(wl.clients), reqs,
		time.Since(wl.started).Round(time.Millisecond), fmtOps(ops))
	return len(errs) == 0
}

// TestRandomKills: the mixed workload on 3 request queues (18 clients each,
// one request at a time per client, so up to 18 in flight per queue) while
// the worker is SIGKILLed at random moments: most kills wait for the
// successor to serve, after one in eight the successor is killed too while
// it is still replaying and resuming.
func TestRandomKills(t *testing.T) {
	want := envInt(t, "VFSD_CRASH_KILLS", 200)
	// About 200 ms per kill on 2 cores: the default 200 take about 40 s.
	// The test's context must outlast the kill loop by the workload's
	// finish and the fd checks.
	limit := max(150*time.Second, time.Duration(want)*300*time.Millisecond)
	sd := seed(t)
	e := Start(t, Options{RequestQueues: 3, Depth: 32, Timeout: limit + 90*time.Second})
	ctx := e.Ctx
	xattrs := hostXattrs(t, e.Dir)
	baseSup, baseWrk := e.fdBaseline(ctx)

	wl, err := newWorkload(ctx, e, 54, sd, xattrs)
	if err != nil {
		t.Fatal(err)
	}
	depth := sampleDepth(e)
	wl.run(ctx)

	rng := rand.New(rand.NewSource(sd))
	var stalls []time.Duration
	kills, duringResume, inflight := 0, 0, 0
	lastQuick := false
	start := time.Now()
	lastPID := 0
	var killErr error
	for kills < want && time.Since(start) < limit {
		if err := e.CheckAlive(); err != nil {
			killErr = err
			break
		}
		time.Sleep(time.Duration(10+rng.Intn(90)) * time.Millisecond)
		pid, err := e.WaitNewWorker(lastPID, 15*time.Second)
		if err != nil {
			killErr = fmt.Errorf("after %d kills: %w", kills, err)
			break
		}
		// After a kill of a resuming worker, make sure its successor serves
		// before killing it, so the stall measured is this kill's alone
		// (after a measured kill the probe already showed that).
		if lastQuick {
			if err := e.probe(ctx); err != nil {
				killErr = fmt.Errorf("probe before kill %d: %w", kills+1, err)
				break
			}
			lastQuick = false
		}
		for q := 1; q < e.FE.NumQueues(); q++ {
			inflight += e.FE.Queue(q).Outstanding()
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			killErr = err
			break
		}
		t0 := time.Now()
		kills++
		lastPID = pid
		if rng.Intn(8) == 0 {
			// Kill the successor too, while it replays and resumes.
			succ, err := e.WaitNewWorker(pid, 15*time.Second)
			if err != nil {
				killErr = fmt.Errorf("after %d kills: %w", kills, err)
				break
			}
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
			if err := syscall.Kill(succ, syscall.SIGKILL); err != nil {
				killErr = err
				break
			}
			kills++
			duringResume++
			lastPID = succ
			lastQuick = true
			continue
		}
		if err := e.probe(ctx); err != nil {
			killErr = fmt.Errorf("probe after kill %d: %w", kills, err)
			break
		}
		stalls = append(stalls, time.Since(t0))
	}
	elapsed := time.Since(start)
	t.Logf("kills survived: %d in %v (%d of them while the successor was still resuming); depth:%s",
		kills, elapsed.Round(time.Millisecond), duringResume, depth.report())
	t.Logf("requests outstanding at a kill (after the successor served): mean %.1f over %d kills",
		float64(inflight)/float64(max(len(stalls), 1)), len(stalls))
	t.Logf("guest-visible stall per kill (kill to every queue answering): %s", stallStats(stalls))
	if killErr != nil {
		t.Errorf("kill loop stopped: %v", killErr)
	}
	if err := e.CheckAlive(); err != nil {
		t.Errorf("%v", err)
	}
	if kills < want {
		t.Errorf("only %d kills in %v, want %d", kills, limit, want)
	}
	ok := finishWorkload(t, e, wl)
	if st, err := ControlStatus(e.Socket); err == nil {
		t.Logf("supervisor status after the run: %v", st.Raw)
		if st.Crashes >= 0 && st.Crashes < int64(kills) {
			t.Errorf("status reports %d crashes, the test killed the worker %d times", st.Crashes, kills)
		}
	} else {
		t.Errorf("control socket %s.ctl: status: %v", e.Socket, err)
	}
	if ok && e.CheckAlive() == nil {
		e.checkFDs(ctx, baseSup, baseWrk)
	}
}

// crashPoints are engine/crashpoint's named points with the 1-in-P rate used
// here (hits per second differ: per request, per batch, per insert, per
// vhost-user message, per resubmitted request), and whether the test must
// also kill from outside so that the point is reached at all (the replay and
// resume paths run only after a death).
var crashPoints = []struct {
	name     string
	p        int
	external bool
}{
	{"after-pop", 400, false},
	{"after-decode", 400, false},
	{"after-syscall", 300, false},
	{"after-journal", 100, false},
	{"mid-publish", 150, false},
	{"after-publish", 150, false},
	{"before-notify", 150, false},
	{"mid-maptable-insert", 60, false},
	{"mid-fd-handover", 60, false},
	{"mid-vhost-message", 12, true},
	{"mid-resume", 8, true}, // hit once per resubmitted request only: few per kill
}

// TestCrashPoints runs the workload once per named crash point on a fresh
// daemon with VFSD_CRASHPOINT=name:rand:P, so the worker dies inside the
// code path the point marks (and again in its successors), and checks every
// reply, the host tree and the fds as TestRandomKills does.
func TestCrashPoints(t *testing.T) {
	only := map[string]bool{}
	for _, p := range strings.Split(os.Getenv("VFSD_CRASH_POINTS"), ",") {
		if p != "" {
			only[p] = true
		}
	}
	sd := seed(t)
	for _, cp := range crashPoints {
		if len(only) > 0 && !only[cp.name] {
			continue
		}
		t.Run(cp.name, func(t *testing.T) {
			spec := fmt.Sprintf("%s:rand:%d", cp.name, cp.p)
			e := Start(t, Options{RequestQueues: 2, Depth: 32, Timeout: 90 * time.Second,
				Env: map[string]string{"VFSD_CRASHPOINT": spec}})
			ctx := e.Ctx
			xattrs := hostXattrs(t, e.Dir)
			wl, err := newWorkload(ctx, e, 32, sd, xattrs)
			if err != nil {
				t.Fatalf("setup with %s: %v", spec, err)
			}
			// Track worker pids to count deaths even without a crash counter.
			var mu sync.Mutex
			pids := map[int]bool{}
			watchStop := make(chan struct{})
			watchDone := make(chan struct{})
			go func() {
				defer close(watchDone)
				for {
					if pid, _ := e.WorkerPID(); pid > 0 {
						mu.Lock()
						pids[pid] = true
						mu.Unlock()
					}
					select {
					case <-watchStop:
						return
					case <-time.After(3 * time.Millisecond):
					}
				}
			}()
			wl.run(ctx)
			external := 0
			start := time.Now()
			var loopErr error
			for time.Since(start) < 6*time.Second {
				if err := e.CheckAlive(); err != nil {
					loopErr = err
					break
				}
				time.Sleep(300 * time.Millisecond)
				if cp.external && time.Since(start) < 5*time.Second {
					if _, err := e.KillWorker(); err != nil {
						loopErr = err
						break
					}
					external++
				}
				mu.Lock()
				deaths := len(pids) - 1
				mu.Unlock()
				if deaths-external >= 3 && time.Since(start) > 2500*time.Millisecond {
					break
				}
			}
			if loopErr == nil {
				loopErr = e.CheckAlive()
			}
			if loopErr != nil {
				t.Errorf("with %s: %v", spec, loopErr)
			}
			ok := finishWorkload(t, e, wl)
			close(watchStop)
			<-watchDone
			mu.Lock()
			seen := len(pids)
			mu.Unlock()
			self := -1
			if st, err := ControlStatus(e.Socket); err == nil && st.Crashes >= 0 {
				self = int(st.Crashes) - external
			}
			if self < 0 {
				self = seen - 1 - external // pids seen: a lower bound
			}
			t.Logf("%s: %d crashes at the point, %d external kills, %d workers seen", spec, self, external, seen)
			if self < 1 {
				t.Errorf("%s: the worker never died at %s (is crashpoint.Hit(%q) wired, and the point reached by this workload?)", spec, cp.name, cp.name)
			}
			_ = ok
		})
	}
}

// fullQueueBatch submits 1024 requests on request queue 1 of a daemon with
// queue size 1024: 512 WRITEs of 4 KiB to distinct offsets of one file, 384
// CREATEs with O_EXCL and 128 MKDIRs, and returns a function that waits for
// all of them and checks each reply and the host tree.
type fqResult struct {
	err    error
	ent    fuseclient.EntryOut
	fh     uint64
	n      uint32
	doneAt time.Time
}

func fqPattern(i int) []byte {
	b := make([]byte, 4096)
	for j := range b {
		b[j] = byte(i*131 + j*7 + j>>8)
	}
	return b
}

// TestFullQueue: 1024 requests in flight on a 1024-entry queue when the
// worker dies. "stopped": the worker is SIGSTOPped, the batch is submitted
// (all 1024 in the avail ring, none answered), then SIGKILLed. "popped":
// VFSD_CRASHPOINT=after-pop:N kills the worker at the pop of the batch's last
// request after a SIGCONT, so everything it popped is in its inflight region.
// Either way every request must complete exactly once.
func TestFullQueue(t *testing.T) {
	for _, variant := range []string{"stopped", "popped"} {
		t.Run(variant, func(t *testing.T) {
			const writes, creates, mkdirs = 512, 384, 128
			const total = writes + creates + mkdirs
			o := Options{RequestQueues: 1, Depth: total, QueueSize: 1024, Indirect: true, MemSize: 128 << 20, Timeout: 90 * time.Second}
			if variant == "popped" {
				// Pops in the worker that takes the batch: the probe after the
				// baseline kill, MKDIR, CREATE, then the batch.
				o.Env = map[string]string{"VFSD_CRASHPOINT": fmt.Sprintf("after-pop:%d", 3+total)}
			}
			e := Start(t, o)
			ctx := e.Ctx
			baseSup, baseWrk := e.fdBaseline(ctx)
			dirEnt, err := e.C.Mkdir(ctx, 1, "fq", 0o755, 0)
			if err != nil {
				t.Fatalf("MKDIR fq: %v", err)
			}
			dataEnt, dataOpen, err := e.C.Create(ctx, dirEnt.NodeID, "data", unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644, 0)
			if err != nil {
				t.Fatalf("CREATE data: %v", err)
			}
			pid, err := e.WaitNewWorker(0, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			// kill returns before every thread has stopped: a queue thread
			// polling the ring (dataplane poll.go) on another CPU could
			// still take the first request.
			if err := waitStopped(pid, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			stopped := true
			defer func() {
				if stopped {
					syscall.Kill(pid, syscall.SIGCONT)
				}
			}()
			res := make([]fqResult, total)
			var wg sync.WaitGroup
			var completed atomic.Int64
			for i := 0; i < total; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := &res[i]
					switch {
					case i < writes:
						r.n, r.err = e.C.Write(ctx, dataEnt.NodeID, dataOpen.FH, uint64(i)*4096, fqPattern(i), 0)
					case i < writes+creates:
						var open fuseclient.OpenOut
						r.ent, open, r.err = e.C.Create(ctx, dirEnt.NodeID, fmt.Sprintf("n%d", i), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644, 0)
						r.fh = open.FH
					default:
						r.ent, r.err = e.C.Mkdir(ctx, dirEnt.NodeID, fmt.Sprintf("m%d", i), 0o755, 0)
					}
					r.doneAt = time.Now()
					completed.Add(1)
				}()
			}
			q := e.FE.Queue(1)
			deadline := time.Now().Add(20 * time.Second)
			for q.Outstanding() < total && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			// Submission runs on 1024 goroutines against a frozen worker: a
			// few may not have found ring or arena room within the deadline
			// on a loaded machine. They are submitted after the kill and
			// checked like the others; the "popped" variant below keeps the
			// strict 1024-in-flight kill.
			if n := q.Outstanding(); n < total-32 {
				t.Fatalf("only %d of %d requests submitted", n, total)
			} else if n < total {
				t.Logf("%d of %d requests in flight at the kill; the rest follow it", n, total)
			}
			if c := completed.Load(); c != 0 {
				t.Fatalf("%d requests completed while the worker was stopped", c)
			}
			var t0 time.Time
			var inflightAtKill int
			if variant == "stopped" {
				inflightAtKill = q.Outstanding()
				t0 = time.Now()
				syscall.Kill(pid, syscall.SIGKILL)
				stopped = false
			} else {
				t0 = time.Now()
				syscall.Kill(pid, syscall.SIGCONT)
				stopped = false
				// Wait for the crash point to fire.
				for alive(pid) && time.Since(t0) < 20*time.Second {
					time.Sleep(100 * time.Microsecond)
				}
				if alive(pid) {
					t.Fatalf("after-pop:%d did not kill worker %d within 20s (%d of %d completed)", 3+total, pid, completed.Load(), total)
				}
				inflightAtKill = total - int(completed.Load())
			}
			wg.Wait()
			stall := time.Duration(0)
			for _, r := range res {
				stall = max(stall, r.doneAt.Sub(t0))
			}
			t.Logf("%s: %d requests outstanding at the kill (queue size 1024); all %d completed %v after it",
				variant, inflightAtKill, total, stall.Round(time.Millisecond))
			if err := e.CheckAlive(); err != nil {
				t.Fatal(err)
			}
			// Every reply exactly as a crash-free daemon gives it.
			bad := 0
			report := func(format string, a ...any) {
				if bad++; bad <= 20 {
					t.Errorf(format, a...)
				}
			}
			nodeids := map[uint64]int{}
			for i, r := range res {
				switch {
				case r.err != nil && i < writes:
					report("WRITE #%d (offset %d): %v", i, i*4096, r.err)
				case r.err != nil && i < writes+creates:
					report("CREATE n%d O_EXCL: %v (EEXIST: executed twice)", i, r.err)
				case r.err != nil:
					report("MKDIR m%d: %v (EEXIST: executed twice)", i, r.err)
				case i < writes && r.n != 4096:
					report("WRITE #%d: %d bytes written, want 4096", i, r.n)
				case i >= writes:
					if j, dup := nodeids[r.ent.NodeID]; dup {
						report("request #%d and #%d got the same nodeid %#x", i, j, r.ent.NodeID)
					}
					nodeids[r.ent.NodeID] = i
				}
			}
			if bad > 20 {
				t.Errorf("... %d bad replies in all", bad)
			}
			// The host tree.
			b, err := os.ReadFile(e.Path("fq", "data"))
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != writes*4096 {
				t.Errorf("data: %d bytes on the host, want %d", len(b), writes*4096)
			}
			for i := 0; i < writes && (i+1)*4096 <= len(b); i++ {
				if string(b[i*4096:(i+1)*4096]) != string(fqPattern(i)) {
					t.Errorf("data: block %d differs", i)
					break
				}
			}
			ents, err := os.ReadDir(e.Path("fq"))
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 1+creates+mkdirs {
				t.Errorf("fq/ has %d entries on the host, want %d", len(ents), 1+creates+mkdirs)
			}
			// Handles and nodeids from before and after the crash still work;
			// then release and forget everything and count fds.
			if _, err := e.C.Getattr(ctx, dataEnt.NodeID, &dataOpen.FH); err != nil {
				t.Errorf("GETATTR data with its fh from before the crash: %v", err)
			}
			if err := e.C.Release(ctx, dataEnt.NodeID, dataOpen.FH, unix.O_RDWR, 0, 0); err != nil {
				t.Errorf("RELEASE data: %v", err)
			}
			forgets := []fuseclient.ForgetOne{{NodeID: dataEnt.NodeID, Nlookup: 1}, {NodeID: dirEnt.NodeID, Nlookup: 1}}
			for i := writes; i < total; i++ {
				r := res[i]
				if r.err != nil {
					continue
				}
				if i < writes+creates {
					if err := e.C.Release(ctx, r.ent.NodeID, r.fh, unix.O_RDWR, 0, 0); err != nil {
						report("RELEASE of n%d's handle: %v", i, err)
					}
				} else if a, err := e.C.Getattr(ctx, r.ent.NodeID, nil); err != nil || a.Attr.Mode != unix.S_IFDIR|0o755 {
					report("GETATTR m%d: %v mode %o", i, err, a.Attr.Mode)
				}
				forgets = append(forgets, fuseclient.ForgetOne{NodeID: r.ent.NodeID, Nlookup: 1})
			}
			for len(forgets) > 0 {
				n := min(len(forgets), 200)
				if err := e.C.BatchForget(ctx, forgets[:n]); err != nil {
					t.Errorf("BATCH_FORGET: %v", err)
				}
				forgets = forgets[n:]
			}
			if !t.Failed() {
				e.checkFDs(ctx, baseSup, baseWrk)
			}
		})
	}
}

// TestCrashBudget: a worker that dies at every start. "at-start": it dies at
// its first vhost-user message, so the frontend's first request is never
// answered; "on-request": it dies when it decodes a FUSE request, so INIT is
// resubmitted to every successor. With --max-restarts=3 the supervisor must
// give up after the budget with a clear message and a non-zero exit, and the
// frontend must see the connection close (no hang).
func TestCrashBudget(t *testing.T) {
	for _, tc := range []struct{ name, point string }{
		{"at-start", "mid-vhost-message"},
		{"on-request", "after-decode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const budget = 3
			e := Start(t, Options{MaxRestarts: budget, NoDial: true, Timeout: 30 * time.Second,
				Env: map[string]string{"VFSD_CRASHPOINT": tc.point}})
			e.ExitChecked = true
			start := time.Now()
			var feErr error
			fe, err := dialFrontend(e)
			if tc.name == "at-start" {
				if err == nil {
					fe.Close()
					t.Fatalf("the frontend's setup succeeded although every worker dies at its first vhost-user message")
				}
				feErr = err
			} else {
				if err != nil {
					t.Fatalf("dial: %v (the point is a FUSE one: vhost-user setup must work)", err)
				}
				e.FE = fe
				c := fuseclient.New(fe, fuseclient.Options{})
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := c.Init(ctx, 0)
				cancel()
				if err == nil {
					t.Fatalf("INIT answered although every worker dies decoding it")
				}
				feErr = err
				select {
				case <-fe.Dead():
				case <-time.After(5 * time.Second):
					t.Errorf("frontend connection still open 5s after INIT failed with %v", err)
				}
			}
			t.Logf("frontend saw: %v (after %v)", feErr, time.Since(start).Round(time.Millisecond))
			select {
			case <-e.Daemon.Done():
			case <-time.After(15 * time.Second):
				t.Fatalf("the supervisor still runs 15s after the frontend saw %v", feErr)
			}
			exitErr := e.Daemon.ExitErr()
			out := e.Daemon.Output()
			starts := strings.Count(out, "worker started")
			t.Logf("supervisor exit: %v after %v; %d worker starts logged", exitErr, time.Since(start).Round(time.Millisecond), starts)
			if exitErr == nil {
				t.Errorf("the supervisor exited 0 after exhausting its crash budget; want non-zero")
			}
			if !strings.Contains(out, "giving up") && !strings.Contains(strings.ToLower(out), "crash budget") {
				t.Errorf("no clear message (\"worker crashed N times in W; giving up\") in the output:\n%s", tail(out, 40))
			}
			if starts != 0 && starts != budget+1 {
				t.Errorf("%d worker starts, want %d (the first plus --max-restarts=%d)", starts, budget+1, budget)
			}
		})
	}
}

// TestWorkloadNoKills is the control for the crash tests: the same workload
// and checks with no worker death at all.
func TestWorkloadNoKills(t *testing.T) {
	sd := seed(t)
	e := Start(t, Options{RequestQueues: 3, Depth: 32, Timeout: 90 * time.Second})
	ctx := e.Ctx
	wl, err := newWorkload(ctx, e, 78, sd, hostXattrs(t, e.Dir))
	if err != nil {
		t.Fatal(err)
	}
	depth := sampleDepth(e)
	wl.run(ctx)
	time.Sleep(4 * time.Second)
	t.Logf("depth:%s", depth.report())
	finishWorkload(t, e, wl)
	if err := e.CheckAlive(); err != nil {
		t.Error(err)
	}
}

// waitStopped waits until every thread of pid is in the stopped state (T).
func waitStopped(pid int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		all := len(tasks) > 0
		for _, p := range tasks {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // the thread exited
			}
			// pid (comm) S ...: the state follows the last ')'.
			i := bytes.LastIndexByte(b, ')')
			if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker %d did not stop within %v after SIGSTOP", pid, limit)
		}
		time.Sleep(time.Millisecond)
	}
}
