package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Environment variables the rig reads (the Makefile sets them for test-guest).
const (
	EnvRequired   = "VFSD_GUEST_REQUIRED"    // "1": a missing prerequisite fails instead of skipping
	EnvBoot       = "VFSD_GUEST_BOOT"        // "0": skip guest boots (make test-unit; make test-guest runs them)
	EnvDaemon     = "VFSD_GUEST_DAEMON"      // vfsd | virtiofsd
	EnvDaemonArgs = "VFSD_GUEST_DAEMON_ARGS" // extra daemon arguments, space separated
	EnvVfsdBin    = "VFSD_BIN"               // the vfsd binary (built from cmd/vfsd when unset)
	EnvKernel     = "VFSD_GUEST_KERNEL"      // default build/kernel/vmlinuz
	EnvInitramfs  = "VFSD_GUEST_INITRAMFS"   // default build/initramfs.cpio.gz
	EnvSteps      = "VFSD_GUEST_STEPS"       // comma-separated guest steps
	EnvTimeout    = "VFSD_GUEST_TIMEOUT"     // Go duration for one guest run
	EnvKeep       = "VFSD_GUEST_KEEP"        // directory to keep the run's logs and share in
	EnvCmdline    = "VFSD_GUEST_CMDLINE"     // extra kernel command line words (e.g. vfsd.steplimit=60)
)

// RepoRoot returns the repository root: the nearest directory upwards from the
// working directory with a go.mod that declares module vfsd.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "module vfsd\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("guest: not inside the vfsd repository (no go.mod with module vfsd)")
		}
		dir = parent
	}
}

// Artifacts returns the kernel and initramfs paths: the environment's, else
// the Makefile's outputs under build/.
func Artifacts(root string) (kernel, initramfs string) {
	kernel = os.Getenv(EnvKernel)
	if kernel == "" {
		kernel = filepath.Join(root, "build", "kernel", "vmlinuz")
	}
	initramfs = os.Getenv(EnvInitramfs)
	if initramfs == "" {
		initramfs = filepath.Join(root, "build", "initramfs.cpio.gz")
	}
	return kernel, initramfs
}

// HaveVfsd reports whether cmd/vfsd has Go sources yet.
func HaveVfsd(root string) bool {
	m, _ := filepath.Glob(filepath.Join(root, "cmd", "vfsd", "*.go"))
	return len(m) > 0
}

// DefaultDaemon is the environment's choice, else vfsd once cmd/vfsd exists,
// else the reference virtiofsd.
func DefaultDaemon(root string) string {
	if d := os.Getenv(EnvDaemon); d != "" {
		return d
	}
	if HaveVfsd(root) {
		return DaemonVfsd
	}
	return DaemonVirtiofsd
}

// DaemonBinary returns the binary for a daemon kind. For vfsd it is $VFSD_BIN
// when that exists, else a fresh `go build ./cmd/vfsd` into outDir.
func DaemonBinary(ctx context.Context, root, daemon, outDir string) (string, error) {
	switch daemon {
	case DaemonVirtiofsd:
		if _, err := os.Stat(ReferenceVirtiofsd); err != nil {
			return "", fmt.Errorf("reference daemon: %w (make deps installs qemu-system-x86)", err)
		}
		return ReferenceVirtiofsd, nil
	case DaemonVfsd:
		if b := os.Getenv(EnvVfsdBin); b != "" {
			if _, err := os.Stat(b); err == nil {
				return b, nil
			}
		}
		if !HaveVfsd(root) {
			return "", errors.New("cmd/vfsd has no Go sources yet (use VFSD_GUEST_DAEMON=virtiofsd)")
		}
		out := filepath.Join(outDir, "vfsd")
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/vfsd")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/vfsd: %w\n%s", err, b)
		}
		return out, nil
	}
	return "", fmt.Errorf("unknown daemon %q (want %s or %s)", daemon, DaemonVfsd, DaemonVirtiofsd)
}

// DefaultSteps is the full guest suite: host->guest files, the file operation
// battery, fio verify, stress-ng, files for the host, and the module reload.
var DefaultSteps = []string{"hostfiles", "ops", "fio", "stress", "handoff", "remount"}

// Steps returns $VFSD_GUEST_STEPS split on commas, else DefaultSteps.
func Steps() []string {
	if s := os.Getenv(EnvSteps); s != "" {
		return strings.Split(s, ",")
	}
	return DefaultSteps
}
