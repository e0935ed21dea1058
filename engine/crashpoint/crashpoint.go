package crashpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Env and SeedEnv are the environment variables read at init.
const (
	Env     = "VFSD_CRASHPOINT"
	SeedEnv = "VFSD_CRASHPOINT_SEED"
)

// Named points (see the package doc).
const (
	AfterPop          = "after-pop"
	AfterDecode       = "after-decode"
	AfterSyscall      = "after-syscall"
	AfterJournal      = "after-journal"
	MidPublish        = "mid-publish"
	AfterPublish      = "after-publish"
	BeforeNotify      = "before-notify"
	MidMaptableInsert = "mid-maptable-insert"
	MidFDHandover     = "mid-fd-handover"
	MidVhostMessage   = "mid-vhost-message"
	MidResume         = "mid-resume"
)

// spec is one parsed entry of VFSD_CRASHPOINT.
type spec struct {
	name string
	nth  uint64 // kill when hits reaches nth (0: random mode)
	p    uint64 // random mode: kill with probability 1/p
	hits atomic.Uint64
}

var (
	enabled atomic.Bool
	mu      sync.Mutex // guards rng
	rng     uint64     // splitmix64 state
	specs   []*spec
	// kill is the action taken when a point fires; tests replace it.
	kill = func() {
		_ = unix.Kill(unix.Getpid(), unix.SIGKILL)
		// Still here: pid 1 of a pid namespace (the worker in the namespace
		// sandbox) cannot signal itself, the kernel drops it. Die as
		// abruptly: exit_group, no deferred code, nothing flushed.
		unix.Exit(128 + int(unix.SIGKILL))
	}
)

func init() {
	s, errs := parse(os.Getenv(Env))
	for _, err := range errs {
		fmt.Fprintf(os.Stderr, "crashpoint: %s: %v (ignored)\n", Env, err)
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(SeedEnv); v != "" {
		if n, err := strconv.ParseUint(v, 0, 64); err == nil {
			seed = n
		} else {
			fmt.Fprintf(os.Stderr, "crashpoint: %s=%q: not a number (using the clock)\n", SeedEnv, v)
		}
	}
	configure(s, seed)
}

func configure(s []*spec, seed uint64) {
	mu.Lock()
	rng = seed
	mu.Unlock()
	specs = s
	enabled.Store(len(s) > 0)
}

// parse turns VFSD_CRASHPOINT into specs; malformed entries are skipped and reported.
func parse(v string) ([]*spec, []error) {
	var out []*spec
	var errs []error
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		parts := strings.Split(f, ":")
		sp := &spec{name: parts[0], nth: 1}
		bad := func(why string) { errs = append(errs, fmt.Errorf("%q: %s", f, why)) }
		if sp.name == "" {
			bad("empty name")
			continue
		}
		switch len(parts) {
		case 1:
		case 2:
			n, err := strconv.ParseUint(parts[1], 10, 64)
			if err != nil || n == 0 {
				bad("count must be an integer >= 1")
				continue
			}
			sp.nth = n
		case 3:
			if parts[1] != "rand" {
				bad(`want name:rand:P`)
				continue
			}
			p, err := strconv.ParseUint(parts[2], 10, 64)
			if err != nil || p == 0 {
				bad("P must be an integer >= 1")
				continue
			}
			sp.nth, sp.p = 0, p
		default:
			bad("too many fields")
			continue
		}
		out = append(out, sp)
	}
	return out, errs
}

// Enabled reports whether any crash point is configured.
func Enabled() bool { return enabled.Load() }

// Hit marks the named point. If VFSD_CRASHPOINT selects it, the process SIGKILLs
// itself and Hit does not return. Safe from any goroutine; disabled cost is one
// atomic load.
func Hit(name string) {
	if !enabled.Load() {
		return
	}
	hit(name)
}

func hit(name string) {
	for _, s := range specs {
		if s.name != name {
			continue
		}
		if s.p == 0 {
			if s.hits.Add(1) == s.nth {
				kill()
			}
			continue
		}
		if next()%s.p == 0 {
			kill()
		}
	}
}

// next is splitmix64 under mu (crash tests are not the hot path).
func next() uint64 {
	mu.Lock()
	rng += 0x9e3779b97f4a7c15
	z := rng
	mu.Unlock()
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
