package prof

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// synthetic: main -> a -> b (b on top) 30ms, main -> a 10ms, main -> c 60ms,
// where a's location has b inlined into it.
func synthetic() *profile.Profile {
	fn := func(id uint64, name string) *profile.Function { return &profile.Function{ID: id, Name: name} }
	fMain, fA, fB, fC := fn(1, "main"), fn(2, "a"), fn(3, "b"), fn(4, "c")
	loc := func(id uint64, fs ...*profile.Function) *profile.Location {
		l := &profile.Location{ID: id, Address: 0x1000 * id}
		for _, f := range fs {
			l.Line = append(l.Line, profile.Line{Function: f})
		}
		return l
	}
	lMain, lAB, lA, lC := loc(1, fMain), loc(2, fB, fA), loc(3, fA), loc(4, fC)
	ms := int64(time.Millisecond)
	return &profile.Profile{
		SampleType:    []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		DurationNanos: int64(time.Second),
		Function:      []*profile.Function{fMain, fA, fB, fC},
		Location:      []*profile.Location{lMain, lAB, lA, lC},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{lAB, lMain}, Value: []int64{3, 30 * ms}},
			{Location: []*profile.Location{lA, lMain}, Value: []int64{1, 10 * ms}},
			{Location: []*profile.Location{lC, lMain}, Value: []int64{6, 60 * ms}},
		},
	}
}

func TestTopFuncs(t *testing.T) {
	top, err := TopFuncs(synthetic(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if top.Total != 100*time.Millisecond || len(top.Funcs) != 3 {
		t.Fatalf("top %+v", top)
	}
	want := []struct {
		name      string
		flat, cum time.Duration
	}{{"c", 60 * time.Millisecond, 60 * time.Millisecond}, {"b", 30 * time.Millisecond, 30 * time.Millisecond},
		{"a", 10 * time.Millisecond, 40 * time.Millisecond}}
	for i, w := range want {
		f := top.Funcs[i]
		if f.Name != w.name || f.Flat != w.flat || f.Cum != w.cum {
			t.Fatalf("funcs[%d] = %+v, want %+v", i, f, w)
		}
	}
	if s := top.Format("  "); !strings.Contains(s, "60.0%") || !strings.Contains(s, "  c\n") {
		t.Fatalf("format:\n%s", s)
	}
	if top, _ := TopFuncs(synthetic(), 1); len(top.Funcs) != 1 {
		t.Fatal("n not applied")
	}
	p := synthetic()
	p.SampleType = p.SampleType[:1]
	if _, err := TopFuncs(p, 5); err == nil {
		t.Fatal("profile without cpu samples accepted")
	}
}

func TestFetch(t *testing.T) {
	var buf bytes.Buffer
	if err := synthetic().Write(&buf); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/pprof/profile" || r.URL.Query().Get("seconds") != "2" {
			http.NotFound(w, r)
			return
		}
		w.Write(buf.Bytes())
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	p, raw, err := Fetch(context.Background(), addr, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Sample) != 3 || !bytes.Equal(raw, buf.Bytes()) {
		t.Fatalf("fetched %d samples", len(p.Sample))
	}
	free, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, _, err := Fetch(ctx, free, 1); err == nil {
		t.Fatal("fetch from a closed port succeeded")
	}
}
