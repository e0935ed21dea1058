package prof

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// Flag is the vfsd option that starts the pprof HTTP endpoint.
const Flag = "--pprof-addr"

// Supported reports whether the daemon binary knows Flag (its --help text
// names it).
func Supported(ctx context.Context, bin string) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	return bytes.Contains(out, []byte(Flag))
}

// FreeAddr returns 127.0.0.1:PORT with a port that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Fetch takes a CPU profile of the given length from the endpoint at addr
// (host:port), retrying the connection for a few seconds while the daemon
// starts its listener.
func Fetch(ctx context.Context, addr string, seconds int) (*profile.Profile, []byte, error) {
	seconds = max(seconds, 1)
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds)
	client := &http.Client{Timeout: time.Duration(seconds)*time.Second + 20*time.Second}
	deadline := time.Now().Add(5 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			var op *net.OpError
			if errors.As(err, &op) && time.Now().Before(deadline) && ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return nil, nil, fmt.Errorf("prof: %s: %w", url, err)
		}
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
		resp.Body.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("prof: %s: %w", url, err)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, nil, fmt.Errorf("prof: %s: %s: %s", url, resp.Status, strings.TrimSpace(string(raw[:min(len(raw), 300)])))
		}
		p, err := profile.ParseData(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("prof: parse profile from %s: %w", url, err)
		}
		return p, raw, nil
	}
}

// Func is one function's share of a CPU profile.
type Func struct {
	Name    string        `json:"name"`
	Flat    time.Duration `json:"flat_ns"` // time with the function on top of the stack
	Cum     time.Duration `json:"cum_ns"`  // time with the function anywhere on the stack
	FlatPct float64       `json:"flat_pct"`
	CumPct  float64       `json:"cum_pct"`
}

// Top is a profile's total and its heaviest functions by flat time.
type Top struct {
	Total    time.Duration `json:"total_ns"`
	Duration time.Duration `json:"duration_ns"` // wall time the profile covers
	Funcs    []Func        `json:"funcs"`
}

// TopFuncs returns the n functions with the most flat CPU time in p. Inlined
// frames count as their own functions, as `go tool pprof -top` shows them.
func TopFuncs(p *profile.Profile, n int) (Top, error) {
	vi := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" && st.Unit == "nanoseconds" {
			vi = i
		}
	}
	if vi < 0 {
		return Top{}, errors.New("prof: the profile has no cpu/nanoseconds sample type")
	}
	flat := map[string]int64{}
	cum := map[string]int64{}
	var total int64
	seen := map[string]bool{}
	for _, s := range p.Sample {
		v := s.Value[vi]
		total += v
		clear(seen)
		top := true
		for _, loc := range s.Location {
			for _, ln := range loc.Line { // innermost (inlined) first
				name := "?"
				if ln.Function != nil {
					name = ln.Function.Name
				}
				if top {
					flat[name] += v
					top = false
				}
				if !seen[name] {
					seen[name] = true
					cum[name] += v
				}
			}
			if len(loc.Line) == 0 && top {
				name := fmt.Sprintf("0x%x", loc.Address)
				flat[name] += v
				cum[name] += v
				top = false
			}
		}
	}
	t := Top{Total: time.Duration(total), Duration: time.Duration(p.DurationNanos)}
	for name, f := range flat {
		t.Funcs = append(t.Funcs, Func{Name: name, Flat: time.Duration(f), Cum: time.Duration(cum[name])})
	}
	slices.SortFunc(t.Funcs, func(a, b Func) int {
		if a.Flat != b.Flat {
			return int(b.Flat - a.Flat)
		}
		return strings.Compare(a.Name, b.Name)
	})
	if len(t.Funcs) > n {
		t.Funcs = t.Funcs[:n]
	}
	for i := range t.Funcs {
		if total > 0 {
			t.Funcs[i].FlatPct = 100 * float64(t.Funcs[i].Flat) / float64(total)
			t.Funcs[i].CumPct = 100 * float64(t.Funcs[i].Cum) / float64(total)
		}
	}
	return t, nil
}

// Format renders t as `go tool pprof -top`-like lines.
func (t Top) Format(indent string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%stotal %v of CPU in %v\n", indent, t.Total.Round(time.Millisecond), t.Duration.Round(time.Millisecond))
	fmt.Fprintf(&b, "%s%10s %6s %10s %6s  %s\n", indent, "flat", "flat%", "cum", "cum%", "function")
	for _, f := range t.Funcs {
		fmt.Fprintf(&b, "%s%10v %5.1f%% %10v %5.1f%%  %s\n", indent, f.Flat.Round(10*time.Microsecond), f.FlatPct,
			f.Cum.Round(10*time.Microsecond), f.CumPct, f.Name)
	}
	return b.String()
}
