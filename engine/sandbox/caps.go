package sandbox

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Capability is one Linux capability the worker keeps, and why.
type Capability struct {
	Bit    int
	Reason string
}

// WorkerCaps is the set a worker keeps after the sandbox is set up (the
// default of virtiofsd, plus DAC_READ_SEARCH for file handles). Every other
// capability is removed from the bounding, permitted, effective, inheritable
// and ambient sets. --modcaps adjusts it (ParseModcaps).
var WorkerCaps = []Capability{
	{unix.CAP_CHOWN, "fchownat for SETATTR uid/gid on behalf of the guest"},
	{unix.CAP_DAC_OVERRIDE, "a root guest reads and writes regardless of mode bits (fsuid 0 keeps it)"},
	{unix.CAP_DAC_READ_SEARCH, "open_by_handle_at: a restarted worker reopens inodes from their file handles"},
	{unix.CAP_FOWNER, "chmod, utimensat, O_NOATIME and xattrs on inodes a root guest does not own"},
	{unix.CAP_FSETID, "setuid/setgid bits survive a root guest's chmod/chown/write as the guest expects"},
	{unix.CAP_SETGID, "setfsgid to the requesting guest group, per request"},
	{unix.CAP_SETUID, "setfsuid to the requesting guest user, per request"},
	{unix.CAP_MKNOD, "MKNOD of device nodes a root guest creates"},
	{unix.CAP_SETFCAP, "setxattr security.capability (file capabilities) by a root guest"},
}

// capNames are the kernel's names, index = bit (include/uapi/linux/capability.h).
var capNames = []string{
	"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
	"setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
	"ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
	"sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
	"lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
	"wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
}

// CapName is the lower-case name of capability bit (without "cap_").
func CapName(bit int) string {
	if bit >= 0 && bit < len(capNames) {
		return capNames[bit]
	}
	return "cap" + strconv.Itoa(bit)
}

// CapSet is a set of capability bits.
type CapSet uint64

// Has reports whether bit is in s.
func (s CapSet) Has(bit int) bool { return bit >= 0 && bit < 64 && s&(1<<bit) != 0 }

// String lists s by name, comma separated.
func (s CapSet) String() string {
	var n []string
	for b := range 64 {
		if s.Has(b) {
			n = append(n, CapName(b))
		}
	}
	return strings.Join(n, ",")
}

// DefaultCaps is WorkerCaps as a set.
func DefaultCaps() CapSet {
	var s CapSet
	for _, c := range WorkerCaps {
		s |= 1 << c.Bit
	}
	return s
}

// ParseModcaps applies virtiofsd's --modcaps list to base: entries such as
// "+sys_admin" or "-mknod" (the "cap_" prefix and upper case are accepted),
// separated by ':' (virtiofsd) or ','.
func ParseModcaps(list string, base CapSet) (CapSet, error) {
	s := base
	if list == "" {
		return s, nil
	}
	for _, e := range strings.FieldsFunc(list, func(r rune) bool { return r == ':' || r == ',' }) {
		if len(e) < 2 || (e[0] != '+' && e[0] != '-') {
			return 0, fmt.Errorf("modcaps %q: want +name or -name", e)
		}
		name := strings.TrimPrefix(strings.ToLower(e[1:]), "cap_")
		bit := slices.Index(capNames, name)
		if bit < 0 {
			return 0, fmt.Errorf("modcaps %q: unknown capability", e)
		}
		if e[0] == '+' {
			s |= 1 << bit
		} else {
			s &^= 1 << bit
		}
	}
	return s, nil
}

// lastCap is the highest capability the running kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("cap_last_cap %q", b)
	}
	return n, nil
}

// dropBounding removes every capability outside keep from the calling
// thread's bounding set (PR_CAPBSET_DROP) and clears its inheritable and
// ambient sets. The bounding set is per thread: the caller must be locked
// to its OS thread and exec from it, so that the new image (running as
// root) starts with permitted = effective = bounding = keep on every thread
// it creates. This works whether or not the binary uses cgo (capset through
// AllThreadsSyscall does not).
func dropBounding(keep CapSet, last int) error {
	for b := 0; b <= last; b++ {
		if keep.Has(b) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(b), 0, 0, 0); err != nil {
			return fmt.Errorf("drop %s from the bounding set: %w", CapName(b), err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// current returns the calling thread's permitted and effective sets.
func current() (prm, eff CapSet, err error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, 0, err
	}
	prm = CapSet(data[0].Permitted) | CapSet(data[1].Permitted)<<32
	eff = CapSet(data[0].Effective) | CapSet(data[1].Effective)<<32
	return prm, eff, nil
}
