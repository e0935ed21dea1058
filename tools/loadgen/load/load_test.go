package load

import (
	"context"
	"os"
	"testing"
	"time"

	"vfsd/tools/daemon"
)

func TestRunAgainstReference(t *testing.T) {
	if _, err := os.Stat(daemon.VirtiofsdPath); err != nil {
		t.Skipf("reference daemon not installed: %v", err)
	}
	for _, op := range []string{"getattr", "write4k", "readdirplus"} {
		res, err := Run(context.Background(), Config{Daemon: daemon.Virtiofsd, Op: op, Depth: 4,
			Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, FileSize: 1 << 20, Dir: t.TempDir()})
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if res.Ops == 0 || res.Errors != 0 || res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max {
			t.Fatalf("%s: implausible result %s", op, res)
		}
		if op == "write4k" && res.MBPerSec <= 0 {
			t.Fatalf("write4k moved no bytes: %s", res)
		}
		t.Log(res)
	}
}

func TestUnknownOp(t *testing.T) {
	if _, err := Run(context.Background(), Config{Daemon: daemon.Virtiofsd, Op: "frobnicate"}); err == nil {
		t.Fatal("unknown op accepted")
	}
	if _, err := Run(context.Background(), Config{Daemon: daemon.Virtiofsd, Op: "getattr", Queues: 2}); err == nil {
		t.Fatal("two queues on virtiofsd accepted")
	}
}
