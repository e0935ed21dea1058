package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// httpGet fetches url, over the unix socket sock when it is not "".
func httpGet(t *testing.T, sock, url string, timeout time.Duration) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: timeout}
	if sock != "" {
		c.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}
	}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// metricValue reads one sample of the Prometheus text in body (-1: absent).
func metricValue(body, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// The worker serves /metrics (unix socket) and pprof (loopback TCP) under
// its default seccomp filter (kill): counters move with requests, the
// restart count follows a crash, and a CPU profile can be taken.
func TestMetricsAndPprof(t *testing.T) {
	msock := filepath.Join(t.TempDir(), "metrics.sock")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	paddr := l.Addr().String()
	l.Close()
	e := Start(t, Options{Extra: []string{"--metrics-addr=unix:" + msock, "--pprof-addr=" + paddr}})
	e.SkipForReference("no metrics endpoint")
	scrape := func() string {
		t.Helper()
		code, body := httpGet(t, msock, "http://vfsd/metrics", 5*time.Second)
		if code != 200 {
			t.Fatalf("/metrics: %d %s", code, body)
		}
		return body
	}
	body := scrape()
	before := metricValue(body, `vfsd_requests_total{queue="1",op="GETATTR"}`)
	writeHost(t, e.Path("f"), []byte("x"), 0o644)
	ent := lookup(t, e, root, "f")
	const n = 5
	for range n {
		_, err := e.C.Getattr(e.Ctx, ent.NodeID, nil)
		must(t, "GETATTR", err)
	}
	_, err = e.C.Lookup(e.Ctx, root, "missing")
	if err == nil {
		t.Fatal("LOOKUP of a missing name succeeded")
	}
	body = scrape()
	after := metricValue(body, `vfsd_requests_total{queue="1",op="GETATTR"}`)
	if after-max(before, 0) < n {
		t.Errorf("GETATTR count %v -> %v after %d requests", before, after, n)
	}
	if v := metricValue(body, `vfsd_request_errors_total{queue="1",op="LOOKUP"}`); v < 1 {
		t.Errorf("LOOKUP errors %v after a LOOKUP of a missing name", v)
	}
	if v := metricValue(body, `vfsd_request_duration_seconds_count{queue="1",op="GETATTR"}`); v != after {
		t.Errorf("GETATTR latency count %v, requests %v", v, after)
	}
	if v := metricValue(body, `vfsd_batch_size_count{queue="1"}`); v < 1 {
		t.Errorf("batch count %v", v)
	}
	if v := metricValue(body, `vfsd_queue_inflight{queue="1"}`); v != 0 {
		t.Errorf("inflight %v with nothing outstanding", v)
	}
	if v := metricValue(body, "vfsd_stored_fds"); v < 2 {
		t.Errorf("stored fds %v, want at least the two state memfds", v)
	}
	if v := metricValue(body, "vfsd_restarts_total"); v != 0 {
		t.Errorf("restarts %v before any crash", v)
	}

	// pprof on loopback TCP: a one-second CPU profile and the heap.
	if code, prof := httpGet(t, "", "http://"+paddr+"/debug/pprof/profile?seconds=1", 10*time.Second); code != 200 || len(prof) == 0 {
		t.Fatalf("CPU profile: %d, %d bytes", code, len(prof))
	}
	if code, _ := httpGet(t, "", "http://"+paddr+"/debug/pprof/heap", 5*time.Second); code != 200 {
		t.Fatalf("heap profile: %d", code)
	}
	if code, _ := httpGet(t, msock, "http://vfsd/debug/pprof/heap", 5*time.Second); code != 404 {
		t.Fatalf("pprof on the metrics address: %d, want 404", code)
	}

	// A crash: the successor serves the metrics, with the restart counted.
	old, ok := e.Daemon.WorkerPID()
	if !ok {
		t.Fatal("no worker")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, err = e.C.Getattr(e.Ctx, ent.NodeID, nil)
	must(t, "GETATTR after a crash", err)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if pid, ok := e.Daemon.WorkerPID(); ok && pid != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new worker")
		}
	}
	var got string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if got = scrape(); metricValue(got, "vfsd_restarts_total") == 0 && metricValue(got, "vfsd_worker_resumed") == 1 {
			// A crash restart completes (and is counted) after the replay:
			// the successor was started with the count before it.
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("successor's metrics:\n%s", got)
		}
	}
	if strings.Contains(e.Daemon.Output(), "bad system call") {
		t.Fatal("a worker died of SIGSYS")
	}
	t.Log(fmt.Sprintf("GETATTR %v -> %v", before, after))
}
