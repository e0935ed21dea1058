package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
	"vfsd/tools/fuseclient"
)

// Options configure one test environment.
type Options struct {
	// Kind overrides $VFSD_E2E_DAEMON.
	Kind daemon.Kind
	// RequestQueues to start (default 1). virtiofsd serves only one; a test
	// asking it for more is skipped.
	RequestQueues int
	Depth         int    // per request queue (default 32)
	Cache         string // default auto
	Mem           frontend.MemOptions
	QueueSize     int
	Indirect      bool
	// Extra vfsd arguments (after $VFSD_E2E_ARGS); ignored for virtiofsd.
	Extra []string
	// NoInit leaves FUSE_INIT to the test.
	NoInit bool
	// Timeout bounds the whole test's requests (default 30s).
	Timeout time.Duration
}

// Env is one daemon on one temporary shared directory with a connected,
// initialised client.
type Env struct {
	T      testing.TB
	Kind   daemon.Kind
	Dir    string // the shared directory on the host
	Daemon *daemon.Daemon
	FE     *frontend.Frontend
	C      *fuseclient.Client
	Init   fuseclient.InitOut
	Ctx    context.Context
}

var (
	buildOnce sync.Once
	buildDir  string
	vfsdBin   string
	buildErr  error
)

// VfsdBinary builds ./cmd/vfsd once per process and returns its path.
func VfsdBinary() (string, error) {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "vfsd-e2e-bin-")
		if buildErr == nil {
			vfsdBin, buildErr = daemon.BuildVfsd(buildDir)
		}
	})
	return vfsdBin, buildErr
}

// Cleanup removes the binary VfsdBinary built; call it from TestMain.
func Cleanup() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Start starts a daemon on a fresh directory, dials it and sends INIT. All
// of it is torn down when the test ends; the daemon must exit by itself
// once the frontend hangs up.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	kind := o.Kind
	if kind == "" {
		var err error
		if kind, err = daemon.FromEnv(); err != nil {
			t.Fatal(err)
		}
	}
	if o.RequestQueues == 0 {
		o.RequestQueues = 1
	}
	if o.RequestQueues > 1 && kind == daemon.Virtiofsd {
		t.Skipf("reference virtiofsd serves one request queue; %d requested", o.RequestQueues)
	}
	if o.Depth == 0 {
		o.Depth = 32
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Mem.Size == 0 {
		o.Mem.Size = 64 << 20
	}
	tmp := t.TempDir()
	e := &Env{T: t, Kind: kind, Dir: filepath.Join(tmp, "shared")}
	if err := os.Mkdir(e.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Config{Kind: kind, Socket: filepath.Join(tmp, "vhost.sock"), SharedDir: e.Dir,
		Cache: o.Cache, Full: true, Extra: daemon.ExtraFromEnv(kind)}
	if kind == daemon.Vfsd {
		bin, err := VfsdBinary()
		if err != nil {
			t.Fatalf("vfsd binary (set %s=virtiofsd to test the reference daemon): %v", daemon.EnvVar, err)
		}
		cfg.Bin = bin
		if o.RequestQueues > 1 {
			cfg.RequestQueues = o.RequestQueues
		}
		cfg.Extra = append(cfg.Extra, o.Extra...)
	}
	d, err := daemon.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.Daemon = d
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	e.Ctx = ctx
	t.Cleanup(func() {
		cancel()
		if e.FE != nil {
			e.FE.Close()
		}
		if !d.Wait(5 * time.Second) {
			t.Errorf("%s did not exit within 5s of the frontend hanging up; killed", kind)
		}
		if strings.Contains(d.Output(), "bad system call") {
			// A worker died of SIGSYS: the seccomp allowlist lacks a
			// syscall this test made it use (the supervisor hid the
			// crash by restarting it).
			t.Errorf("%s: a worker was killed by its seccomp filter", kind)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", kind, d.Output())
		}
	})
	fe, err := frontend.Dial(cfg.Socket, frontend.Options{Mem: o.Mem, QueueSize: o.QueueSize,
		RequestQueues: o.RequestQueues, Indirect: o.Indirect, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial %s: %v", kind, err)
	}
	e.FE = fe
	e.C = fuseclient.New(fe, fuseclient.Options{Depth: o.Depth})
	if !o.NoInit {
		if e.Init, err = e.C.Init(ctx, 0); err != nil {
			t.Fatalf("INIT: %v", err)
		}
	}
	return e
}

// Path returns the host path of name inside the shared directory.
func (e *Env) Path(name ...string) string {
	return filepath.Join(append([]string{e.Dir}, name...)...)
}

// SkipForReference skips the test when the backend is the reference
// virtiofsd, which legitimately lacks what the test needs.
func (e *Env) SkipForReference(why string) {
	e.T.Helper()
	if e.Kind == daemon.Virtiofsd {
		e.T.Skipf("reference virtiofsd: %s", why)
	}
}
