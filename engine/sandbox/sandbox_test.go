package sandbox

import (
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMode(t *testing.T) {
	for _, s := range []string{"namespace", "chroot", "none"} {
		if m, err := ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v", s, m, err)
		}
	}
	if _, err := ParseMode("jail"); err == nil {
		t.Error("jail accepted")
	}
}

func TestParseModcaps(t *testing.T) {
	def := DefaultCaps()
	for _, c := range []struct {
		list string
		want CapSet
		err  bool
	}{
		{"", def, false},
		{"+sys_admin", def | 1<<unix.CAP_SYS_ADMIN, false},
		{"+CAP_SYS_ADMIN:-mknod", def&^(1<<unix.CAP_MKNOD) | 1<<unix.CAP_SYS_ADMIN, false},
		{"-chown,-setfcap", def &^ (1<<unix.CAP_CHOWN | 1<<unix.CAP_SETFCAP), false},
		{"+checkpoint_restore", def | 1<<unix.CAP_CHECKPOINT_RESTORE, false},
		{"sys_admin", 0, true},
		{"+nosuchcap", 0, true},
		{"+", 0, true},
	} {
		got, err := ParseModcaps(c.list, def)
		if (err != nil) != c.err || (!c.err && got != c.want) {
			t.Errorf("ParseModcaps(%q) = %s, %v; want %s (error %v)", c.list, got, err, c.want, c.err)
		}
	}
}

func TestCapTable(t *testing.T) {
	if len(capNames) != unix.CAP_CHECKPOINT_RESTORE+1 {
		t.Fatalf("%d names, want %d", len(capNames), unix.CAP_CHECKPOINT_RESTORE+1)
	}
	for _, c := range WorkerCaps {
		if c.Reason == "" {
			t.Errorf("%s has no reason", CapName(c.Bit))
		}
	}
	if CapName(unix.CAP_SYS_ADMIN) != "sys_admin" || CapName(unix.CAP_DAC_READ_SEARCH) != "dac_read_search" {
		t.Error("names out of order")
	}
	for _, b := range []int{unix.CAP_SYS_ADMIN, unix.CAP_SYS_CHROOT, unix.CAP_SETPCAP, unix.CAP_SYS_PTRACE, unix.CAP_KILL} {
		if DefaultCaps().Has(b) {
			t.Errorf("default set keeps %s", CapName(b))
		}
	}
}

func TestPrepareCmd(t *testing.T) {
	cmd := exec.Command("/bin/true")
	cmd.Env = []string{"A=1", EnvStage + "=1", "B=2"}
	PrepareCmd(Namespace)(cmd)
	if strings.Join(cmd.Env, " ") != "A=1 B=2" {
		t.Errorf("env %q", cmd.Env)
	}
	if cmd.SysProcAttr == nil || cmd.SysProcAttr.Cloneflags != CloneFlags {
		t.Errorf("SysProcAttr %+v", cmd.SysProcAttr)
	}
	cmd = exec.Command("/bin/true")
	cmd.Env = []string{EnvStage + "=1"}
	PrepareCmd(None)(cmd)
	if len(cmd.Env) != 0 || (cmd.SysProcAttr != nil && cmd.SysProcAttr.Cloneflags != 0) {
		t.Errorf("none: env %q attr %+v", cmd.Env, cmd.SysProcAttr)
	}
}

func TestIsHeld(t *testing.T) {
	if !IsHeld(RootFDName) || !IsHeld(MntNSFDName) || IsHeld("vfsd.journal") {
		t.Error("IsHeld")
	}
}
