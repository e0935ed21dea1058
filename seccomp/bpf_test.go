package seccomp

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// seccompData is struct seccomp_data.
type seccompData struct {
	nr   uint32
	arch uint32
	ip   uint64
	args [6]uint64
}

func (d seccompData) bytes() []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], d.nr)
	binary.LittleEndian.PutUint32(b[4:], d.arch)
	binary.LittleEndian.PutUint64(b[8:], d.ip)
	for i, a := range d.args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

func sys(t testing.TB, name string, args ...uint64) seccompData {
	t.Helper()
	nr, ok := Number(name)
	if !ok {
		t.Fatalf("no syscall %q", name)
	}
	d := seccompData{nr: nr, arch: unix.AUDIT_ARCH_X86_64, ip: 0x401000}
	copy(d.args[:], args)
	return d
}

// checkProgram is what the kernel's seccomp_check_filter and
// bpf_check_classic accept, restricted to the instructions Compile emits:
// word loads at aligned offsets inside seccomp_data, AND with a constant,
// forward jumps inside the program, returns; the last instruction returns.
func checkProgram(prog []unix.SockFilter) error {
	if len(prog) == 0 || len(prog) > maxInsns {
		return fmt.Errorf("length %d", len(prog))
	}
	for pc, in := range prog {
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.K%4 != 0 || in.K >= 64 {
				return fmt.Errorf("pc %d: load at %d", pc, in.K)
			}
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, unix.BPF_RET | unix.BPF_K:
		case unix.BPF_JMP | unix.BPF_JA:
			if uint64(pc)+1+uint64(in.K) >= uint64(len(prog)) {
				return fmt.Errorf("pc %d: ja %d out of program", pc, in.K)
			}
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K,
			unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
			if pc+1+int(in.Jt) >= len(prog) || pc+1+int(in.Jf) >= len(prog) {
				return fmt.Errorf("pc %d: jump out of program", pc)
			}
		default:
			return fmt.Errorf("pc %d: unexpected opcode %#x", pc, in.Code)
		}
	}
	if last := prog[len(prog)-1]; last.Code != unix.BPF_RET|unix.BPF_K {
		return fmt.Errorf("last instruction %#x is not a return", last.Code)
	}
	return nil
}

// run interprets a classic BPF seccomp program on d (after checkProgram).
func run(t testing.TB, prog []unix.SockFilter, d seccompData) uint32 {
	t.Helper()
	data := d.bytes()
	var acc uint32
	for pc, steps := 0, 0; pc < len(prog); steps++ {
		if steps > len(prog) {
			t.Fatalf("program loops")
		}
		in := prog[pc]
		pc++
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K:
			acc &= in.K
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		case unix.BPF_JMP | unix.BPF_JA:
			pc += int(in.K)
		default:
			var cond bool
			switch in.Code &^ (unix.BPF_JMP | unix.BPF_K) {
			case unix.BPF_JEQ:
				cond = acc == in.K
			case unix.BPF_JGE:
				cond = acc >= in.K
			case unix.BPF_JGT:
				cond = acc > in.K
			case unix.BPF_JSET:
				cond = acc&in.K != 0
			default:
				t.Fatalf("pc %d: opcode %#x", pc-1, in.Code)
			}
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		}
	}
	t.Fatalf("ran off the end of the program")
	return 0
}

const allow = unix.SECCOMP_RET_ALLOW

var actions = []Action{ActionKill, ActionTrap, ActionErrno, ActionLog}

func program(t testing.TB, o Options) []unix.SockFilter {
	t.Helper()
	prog, err := Program(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkProgram(prog); err != nil {
		t.Fatalf("%v: malformed program: %v", o.Action, err)
	}
	return prog
}

func TestProgramWellFormed(t *testing.T) {
	for _, a := range actions {
		prog := program(t, Options{Action: a, PID: 4242})
		deny, _ := a.ret()
		if prog[len(prog)-1].K != allow && prog[len(prog)-2].K != deny {
			t.Errorf("%v: program does not end in its deny and allow returns", a)
		}
		t.Logf("%v: %d instructions for %d syscalls", a, len(prog), len(Names()))
	}
	if _, err := Program(Options{Action: ActionNone}); err == nil {
		t.Error("Program with ActionNone: no error")
	}
}

// witness returns arguments for which m holds.
func witness(m Match) [6]uint64 {
	var args [6]uint64
	for i := range args {
		args[i] = 0xdead_beef_0000_0000 | uint64(i) // unrelated arguments are arbitrary
	}
	for _, c := range m {
		args[c.Arg] = args[c.Arg]&^c.Mask | c.Value
	}
	return args
}

func TestEveryRuleAllowed(t *testing.T) {
	const pid = 4242
	for _, a := range actions {
		prog := program(t, Options{Action: a, PID: pid})
		for _, r := range Rules(Options{PID: pid}) {
			if r.Errno != 0 {
				d := sys(t, r.Syscall, 1, 2, 3)
				if got := run(t, prog, d); got != unix.SECCOMP_RET_ERRNO|uint32(r.Errno) {
					t.Errorf("%v: %s = %#x, want errno %d", a, r.Syscall, got, r.Errno)
				}
				continue
			}
			if r.When == nil {
				d := sys(t, r.Syscall, 1, 2, 3, 4, 5, 6)
				if got := run(t, prog, d); got != allow {
					t.Errorf("%v: %s(any) = %#x, want allow", a, r.Syscall, got)
				}
				continue
			}
			for _, m := range r.When {
				d := sys(t, r.Syscall)
				d.args = witness(m)
				if got := run(t, prog, d); got != allow {
					t.Errorf("%v: %s%v = %#x, want allow", a, r.Syscall, d.args, got)
				}
			}
		}
	}
}

func TestForbiddenCalls(t *testing.T) {
	const pid = 4242
	tests := []struct {
		what string
		d    seccompData
	}{
		{"ptrace", sys(t, "ptrace", unix.PTRACE_ATTACH, 1)},
		{"execve", sys(t, "execve")},
		{"execveat", sys(t, "execveat")},
		{"socket(AF_INET)", sys(t, "socket", unix.AF_INET, unix.SOCK_STREAM)},
		{"socket(AF_UNIX)", sys(t, "socket", unix.AF_UNIX, unix.SOCK_DGRAM)},
		{"connect", sys(t, "connect", 3)},
		{"fork via clone(SIGCHLD)", sys(t, "clone", uint64(unix.SIGCHLD))},
		{"vfork via clone", sys(t, "clone", unix.CLONE_VM|unix.CLONE_VFORK|uint64(unix.SIGCHLD))},
		{"thread clone with CLONE_NEWUSER", sys(t, "clone", goThreadFlags|unix.CLONE_NEWUSER)},
		{"fork", sys(t, "fork")},
		{"mmap(PROT_EXEC)", sys(t, "mmap", 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)},
		{"mmap(PROT_EXEC) high bits", sys(t, "mmap", 0, 4096, 1<<40|unix.PROT_EXEC)},
		{"mprotect(PROT_EXEC)", sys(t, "mprotect", 0x1000, 4096, unix.PROT_READ|unix.PROT_EXEC)},
		{"mprotect(PROT_EXEC) alone", sys(t, "mprotect", 0x1000, 4096, unix.PROT_EXEC)},
		{"madvise(MADV_HWPOISON)", sys(t, "madvise", 0x1000, 4096, unix.MADV_HWPOISON)},
		{"fcntl(F_SETOWN)", sys(t, "fcntl", 3, unix.F_SETOWN, 1)},
		{"fcntl(F_SETLK)", sys(t, "fcntl", 3, unix.F_SETLK)},
		{"fcntl(F_SETLEASE)", sys(t, "fcntl", 3, unix.F_SETLEASE)},
		{"fcntl(F_GETFL) with high bits", sys(t, "fcntl", 3, 1<<32|unix.F_GETFL)},
		{"ioctl", sys(t, "ioctl", 3, unix.TIOCSTI)},
		{"kill(other)", sys(t, "kill", 1, uint64(unix.SIGKILL))},
		{"kill(-1)", sys(t, "kill", ^uint64(0), uint64(unix.SIGKILL))},
		{"tgkill(other)", sys(t, "tgkill", 1, 1, uint64(unix.SIGKILL))},
		{"futex(FUTEX_WAIT shared)", sys(t, "futex", 0x1000, 0)},
		{"futex(FUTEX_CMP_REQUEUE_PI)", sys(t, "futex", 0x1000, 12|128)},
		{"prctl(PR_SET_SECCOMP)", sys(t, "prctl", unix.PR_SET_SECCOMP, 2)},
		{"prctl(PR_SET_VMA, other)", sys(t, "prctl", unix.PR_SET_VMA, 1)},
		{"memfd_create(MFD_HUGETLB)", sys(t, "memfd_create", 0, unix.MFD_CLOEXEC|unix.MFD_HUGETLB)},
		{"getsockopt(SO_PEERCRED)", sys(t, "getsockopt", 3, unix.SOL_SOCKET, unix.SO_PEERCRED)},
		{"open_by_handle_at", sys(t, "open_by_handle_at")},
		{"mount", sys(t, "mount")},
		{"bpf", sys(t, "bpf")},
		{"setuid", sys(t, "setuid")},
		{"seccomp", sys(t, "seccomp")},
	}
	wrongArch := sys(t, "read", 0, 0, 0)
	wrongArch.arch = unix.AUDIT_ARCH_I386
	x32 := sys(t, "read", 0, 0, 0)
	x32.nr |= x32Bit
	tests = append(tests, struct {
		what string
		d    seccompData
	}{"i386 read", wrongArch}, struct {
		what string
		d    seccompData
	}{"x32 read", x32})

	for _, a := range actions {
		prog := program(t, Options{Action: a, PID: pid})
		deny, _ := a.ret()
		for _, tc := range tests {
			if got := run(t, prog, tc.d); got != deny {
				t.Errorf("%v: %s = %#x, want %#x", a, tc.what, got, deny)
			}
		}
	}
	// clone3 is answered ENOSYS in every mode (glibc falls back to clone).
	for _, a := range actions {
		if got := run(t, program(t, Options{Action: a}), sys(t, "clone3", 0x1000, 88)); got != unix.SECCOMP_RET_ERRNO|uint32(unix.ENOSYS) {
			t.Errorf("%v: clone3 = %#x, want ENOSYS", a, got)
		}
	}
	// The same calls made right are allowed (the tests above are not
	// denied for some unrelated reason).
	prog := program(t, Options{PID: pid})
	for _, d := range []seccompData{
		sys(t, "kill", pid, uint64(unix.SIGKILL)),
		sys(t, "tgkill", pid, 77, uint64(unix.SIGURG)),
		sys(t, "clone", goThreadFlags|unix.CLONE_SETTLS),
		sys(t, "clone", glibcThreadFlags, 0x7f0000, 0x7f1000, 0x7f2000, 0x7f3000),
		sys(t, "mprotect", 0x1000, 4096, unix.PROT_READ|unix.PROT_WRITE),
		sys(t, "mmap", 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED, 5),
		sys(t, "fcntl", 3, unix.F_OFD_SETLKW),
		sys(t, "futex", 0x1000, futexWakePrivate, 1),
		sys(t, "madvise", 0x1000, 4096, unix.MADV_DONTNEED),
		sys(t, "prctl", unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME, 0x1000, 4096, 0x2000),
	} {
		if got := run(t, prog, d); got != allow {
			t.Errorf("%s%v = %#x, want allow", Name(d.nr), d.args, got)
		}
	}
}

// Every syscall number outside the allowlist is denied; every
// unconditional entry is allowed whatever its arguments.
func TestEveryOtherSyscallDenied(t *testing.T) {
	rules := Rules(Options{})
	unconditional := map[string]bool{}
	for _, r := range rules {
		if r.When == nil && r.Errno == 0 {
			unconditional[r.Syscall] = true
		}
	}
	names := namesOf(rules)
	prog := program(t, Options{Action: ActionErrno})
	deny, _ := ActionErrno.ret()
	for nr := uint32(0); nr < 1024; nr++ {
		d := seccompData{nr: nr, arch: unix.AUDIT_ARCH_X86_64, args: [6]uint64{^uint64(0), 1 << 63, 7, 0, 0, 0}}
		got := run(t, prog, d)
		name := Name(nr)
		switch {
		case unconditional[name]:
			if got != allow {
				t.Errorf("%s: %#x, want allow", name, got)
			}
		case !slices.Contains(names, name):
			if got != deny {
				t.Errorf("%s (not in the allowlist): %#x, want deny", name, got)
			}
		}
	}
}

// A syscall with many alternatives pushes targets past a conditional
// jump's 255-instruction reach: the assembler must widen those jumps.
func TestCompileFarJumps(t *testing.T) {
	var vals []uint64
	for v := uint64(0); v < 300; v++ {
		vals = append(vals, v*3+1<<33)
	}
	rules := []Rule{
		{Syscall: "read"},
		{Syscall: "fcntl", When: OneOf(1, vals...)},
		{Syscall: "write", When: Where(MaskedEq(0, 0xff00, 0x1200), NoneOf(2, 1<<40|4))},
		{Syscall: "close"},
	}
	for i := 0; i < 60; i++ { // many syscall numbers: a deep search tree
		rules = append(rules, Rule{Syscall: Name(uint32(200 + i))})
	}
	prog, err := Compile(rules, ActionErrno)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkProgram(prog); err != nil {
		t.Fatal(err)
	}
	if len(prog) < 600 {
		t.Fatalf("program of %d instructions: too short to test far jumps", len(prog))
	}
	deny, _ := ActionErrno.ret()
	for _, v := range vals {
		if got := run(t, prog, sys(t, "fcntl", 3, v)); got != allow {
			t.Errorf("fcntl(%#x) = %#x, want allow", v, got)
		}
		if got := run(t, prog, sys(t, "fcntl", 3, v+1)); got != deny {
			t.Errorf("fcntl(%#x) = %#x, want deny", v+1, got)
		}
	}
	for _, tc := range []struct {
		args []uint64
		want uint32
	}{
		{[]uint64{0x1234, 0, 0}, allow},
		{[]uint64{0xffff_ffff_ffff_12ff, 0, 3}, allow},
		{[]uint64{0x1334, 0, 0}, deny},
		{[]uint64{0x1234, 0, 4}, deny},
		{[]uint64{0x1234, 0, 1 << 40}, deny},
	} {
		if got := run(t, prog, sys(t, "write", tc.args...)); got != tc.want {
			t.Errorf("write%v = %#x, want %#x", tc.args, got, tc.want)
		}
	}
	for i := 0; i < 60; i++ {
		if got := run(t, prog, seccompData{nr: uint32(200 + i), arch: unix.AUDIT_ARCH_X86_64}); got != allow {
			t.Errorf("%s = %#x, want allow", Name(uint32(200+i)), got)
		}
	}
	if got := run(t, prog, sys(t, "ptrace")); got != deny {
		t.Errorf("ptrace = %#x, want deny", got)
	}
}

// An unconditional rule wins over conditional ones for the same syscall,
// in either order.
func TestCompileMerge(t *testing.T) {
	for _, rules := range [][]Rule{
		{{Syscall: "fcntl", When: OneOf(1, 1)}, {Syscall: "fcntl"}},
		{{Syscall: "fcntl"}, {Syscall: "fcntl", When: OneOf(1, 1)}},
	} {
		prog, err := Compile(rules, ActionKill)
		if err != nil {
			t.Fatal(err)
		}
		if got := run(t, prog, sys(t, "fcntl", 3, 99)); got != allow {
			t.Errorf("fcntl(99) = %#x, want allow", got)
		}
	}
	prog, err := Compile([]Rule{
		{Syscall: "fcntl", When: OneOf(1, 1)}, {Syscall: "fcntl", When: OneOf(1, 2)},
	}, ActionKill)
	if err != nil {
		t.Fatal(err)
	}
	for cmd, want := range map[uint64]uint32{1: allow, 2: allow, 3: unix.SECCOMP_RET_KILL_PROCESS} {
		if got := run(t, prog, sys(t, "fcntl", 3, cmd)); got != want {
			t.Errorf("fcntl(%d) = %#x, want %#x", cmd, got, want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		rule Rule
		want string
	}{
		{Rule{Syscall: "no_such_call"}, "unknown syscall"},
		{Rule{Syscall: "read", When: []Match{}}, "empty When"},
		{Rule{Syscall: "read", When: []Match{{}}}, "empty Match"},
		{Rule{Syscall: "read", When: Where(Eq(6, 0))}, "out of range"},
		{Rule{Syscall: "read", When: Where(MaskedEq(0, 0, 0))}, "empty mask"},
		{Rule{Syscall: "read", When: Where(MaskedEq(0, 0xf0, 0x1))}, "never match"},
		{Rule{Syscall: "read", When: Where(Eq(0, 1)), Errno: unix.ENOSYS}, "no argument conditions"},
		{Rule{Syscall: "read", Errno: 1 << 16}, "out of range"},
	} {
		_, err := Compile([]Rule{tc.rule}, ActionKill)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.rule, err, tc.want)
		}
	}
}

func TestCompileErrnoConflict(t *testing.T) {
	for _, rules := range [][]Rule{
		{{Syscall: "clone3", Errno: unix.ENOSYS}, {Syscall: "clone3"}},
		{{Syscall: "clone3", When: OneOf(0, 1)}, {Syscall: "clone3", Errno: unix.ENOSYS}},
	} {
		if _, err := Compile(rules, ActionKill); err == nil || !strings.Contains(err.Error(), "both allowed") {
			t.Errorf("%+v: error %v", rules, err)
		}
	}
}

func TestRulesTable(t *testing.T) {
	for _, r := range Rules(Options{}) {
		if strings.TrimSpace(r.By) == "" {
			t.Errorf("%s: rule does not name its caller", r.Syscall)
		}
		if _, ok := Number(r.Syscall); !ok {
			t.Errorf("%s: not an x86_64 syscall", r.Syscall)
		}
	}
	names := Names()
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("Names not sorted and unique: %v", names)
	}
	for _, need := range []string{"futex", "clone", "openat", "recvmsg", "preadv", "pwritev", "epoll_pwait", "rt_sigreturn"} {
		if !slices.Contains(names, need) {
			t.Errorf("allowlist lacks %s", need)
		}
	}
	base := namesOf(Rules(Options{}))
	for _, never := range []string{"execve", "execveat", "ptrace", "socket", "connect", "bind", "listen", "accept4",
		"fork", "vfork", "ioctl", "mount", "bpf", "process_vm_writev", "setuid", "seccomp"} {
		if slices.Contains(base, never) {
			t.Errorf("allowlist has %s", never)
		}
	}
	// HTTP adds the pprof/metrics server's calls, and Names lists them.
	for _, r := range Rules(Options{HTTP: true}) {
		if strings.TrimSpace(r.By) == "" {
			t.Errorf("%s: HTTP rule does not name its caller", r.Syscall)
		}
	}
	for _, need := range []string{"accept4", "getsockname", "setsockopt", "timer_create"} {
		if slices.Contains(base, need) || !slices.Contains(names, need) {
			t.Errorf("%s: in the default table %v, in Names %v", need, slices.Contains(base, need), slices.Contains(names, need))
		}
	}
	for _, never := range []string{"socket", "bind", "listen", "connect"} {
		if slices.Contains(names, never) {
			t.Errorf("HTTP allowlist has %s: listeners are made before Install", never)
		}
	}
	// Rules with a pid restrict kill and tgkill to it; without, they don't.
	for _, r := range Rules(Options{PID: 99}) {
		if (r.Syscall == "kill" || r.Syscall == "tgkill") && (len(r.When) != 1 || r.When[0][0] != Eq(0, 99)) {
			t.Errorf("%s: %v, want pid 99 only", r.Syscall, r.When)
		}
	}
	if Name(0) != "read" || Name(317) != "seccomp" || Name(100000) != "syscall_100000" {
		t.Errorf("Name: %s %s %s", Name(0), Name(317), Name(100000))
	}
	if nr, ok := Number("newfstatat"); !ok || nr != unix.SYS_NEWFSTATAT {
		t.Errorf("Number(newfstatat) = %d, %v", nr, ok)
	}
}

func TestParseAction(t *testing.T) {
	for _, a := range []Action{ActionKill, ActionTrap, ActionErrno, ActionLog, ActionNone} {
		var got Action = -1
		if err := got.Set(a.String()); err != nil || got != a {
			t.Errorf("Set(%q) = %v, %v", a.String(), got, err)
		}
	}
	if _, err := ParseAction("allow"); err == nil {
		t.Error("ParseAction(allow): no error")
	}
	var zero Options
	if zero.Action != ActionKill {
		t.Error("the default action is not kill")
	}
}
