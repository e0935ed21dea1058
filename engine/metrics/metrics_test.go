package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestTextExposition(t *testing.T) {
	r := New(2, nil)
	q := r.Queue(1)
	q.Request(1, false, 3*time.Microsecond) // LOOKUP, first bucket
	q.Request(1, true, 2*time.Millisecond)  // LOOKUP error, le=0.0025
	q.Request(4096, false, 20*time.Second)  // CUSE_INIT: OTHER, +Inf
	q.Batch(3)
	q.Batch(1)
	q.Inflight(2)
	q.Inflight(-1)
	q.RingSubmit(5)
	q.RingSubmit(2)
	if r.Queue(2) != nil || r.Queue(-1) != nil {
		t.Fatal("out-of-range queue not nil")
	}
	r.Queue(5).Request(1, false, 0) // nil: ignored
	r.Counter("vfsd_restarts_total", "Restarts.", func() float64 { return 3 })
	r.Gauge("vfsd_stored_fds", "Stored.", func() float64 { return 7 })
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); ct != ContentType {
		t.Fatalf("content type %q", ct)
	}
	out := rec.Body.String()
	for _, want := range []string{
		"# TYPE vfsd_restarts_total counter\nvfsd_restarts_total 3\n",
		"vfsd_stored_fds 7\n",
		`vfsd_requests_total{queue="1",op="LOOKUP"} 2`,
		`vfsd_requests_total{queue="1",op="OTHER"} 1`,
		`vfsd_request_errors_total{queue="1",op="LOOKUP"} 1`,
		`vfsd_request_errors_total{queue="1",op="OTHER"} 0`,
		`vfsd_request_duration_seconds_bucket{queue="1",op="LOOKUP",le="5e-06"} 1`,
		`vfsd_request_duration_seconds_bucket{queue="1",op="LOOKUP",le="0.001"} 1`,
		`vfsd_request_duration_seconds_bucket{queue="1",op="LOOKUP",le="0.0025"} 2`,
		`vfsd_request_duration_seconds_bucket{queue="1",op="LOOKUP",le="+Inf"} 2`,
		`vfsd_request_duration_seconds_bucket{queue="1",op="OTHER",le="10"} 0`,
		`vfsd_request_duration_seconds_bucket{queue="1",op="OTHER",le="+Inf"} 1`,
		`vfsd_request_duration_seconds_sum{queue="1",op="LOOKUP"} 0.002003`,
		`vfsd_request_duration_seconds_count{queue="1",op="LOOKUP"} 2`,
		`vfsd_batch_size_bucket{queue="1",le="1"} 1`,
		`vfsd_batch_size_bucket{queue="1",le="2"} 1`,
		`vfsd_batch_size_bucket{queue="1",le="4"} 2`,
		`vfsd_batch_size_sum{queue="1"} 4`,
		`vfsd_batch_size_count{queue="0"} 0`,
		`vfsd_queue_inflight{queue="1"} 1`,
		`vfsd_ring_reads_total{queue="1"} 7`,
		`vfsd_ring_submissions_total{queue="1"} 2`,
		`vfsd_ring_reads_total{queue="0"} 0`,
		"# TYPE vfsd_request_duration_seconds histogram\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(out, `queue="0",op=`) {
		t.Error("series for an opcode never seen on queue 0")
	}
	if t.Failed() {
		t.Log(out)
	}
	rec = httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest("POST", "/metrics", nil))
	if rec.Code != 405 {
		t.Fatalf("POST: %d", rec.Code)
	}
}

func TestRecordingAllocatesNothing(t *testing.T) {
	q := New(1, nil).Queue(0)
	if n := testing.AllocsPerRun(1000, func() {
		q.Inflight(1)
		q.Request(15, false, 40*time.Microsecond)
		q.Inflight(-1)
		q.Batch(17)
	}); n != 0 {
		t.Fatalf("%v allocs per record", n)
	}
}

func TestRegisterPanics(t *testing.T) {
	r := New(1, nil)
	r.Gauge("a_b", "", func() float64 { return 0 })
	for _, name := range []string{"a_b", "1x", "a-b", ""} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%q registered", name)
				}
			}()
			r.Gauge(name, "", func() float64 { return 0 })
		}()
	}
}

func TestOpName(t *testing.T) {
	for op, want := range map[uint32]string{1: "LOOKUP", 52: "STATX", 7: "OP_7", 0: "OTHER", 4096: "OTHER"} {
		if got := OpName(op); got != want {
			t.Errorf("OpName(%d) = %q, want %q", op, got, want)
		}
	}
}
