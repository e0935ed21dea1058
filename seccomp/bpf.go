package seccomp

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// Action is what the filter does with a syscall the table does not allow.
type Action int

const (
	// ActionKill kills the whole process (SECCOMP_RET_KILL_PROCESS): it dies
	// of SIGSYS and the supervisor restarts it.
	ActionKill Action = iota
	// ActionTrap sends SIGSYS to the thread (SECCOMP_RET_TRAP); the Go
	// runtime prints the goroutine stack of the offending call and exits 2.
	ActionTrap
	// ActionErrno fails the syscall with EPERM (SECCOMP_RET_ERRNO).
	ActionErrno
	// ActionLog allows the syscall and has the kernel log it
	// (SECCOMP_RET_LOG; audit type=1326, see dmesg or the audit log).
	ActionLog
	// ActionNone installs no filter at all.
	ActionNone
)

var actionNames = [...]string{ActionKill: "kill", ActionTrap: "trap", ActionErrno: "errno", ActionLog: "log", ActionNone: "none"}

func (a Action) String() string {
	if a >= 0 && int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// ParseAction parses kill, trap, errno, log or none.
func ParseAction(s string) (Action, error) {
	for a, name := range actionNames {
		if s == name {
			return Action(a), nil
		}
	}
	return 0, fmt.Errorf("seccomp action %q: want kill, trap, errno, log or none", s)
}

// Set implements flag.Value (e.g. fs.Var(&opts.Action, "seccomp", ...)).
func (a *Action) Set(s string) error {
	v, err := ParseAction(s)
	if err == nil {
		*a = v
	}
	return err
}

// ret is the filter's return value for a denied syscall.
func (a Action) ret() (uint32, error) {
	switch a {
	case ActionKill:
		return unix.SECCOMP_RET_KILL_PROCESS, nil
	case ActionTrap:
		return unix.SECCOMP_RET_TRAP, nil
	case ActionErrno:
		return unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM), nil
	case ActionLog:
		return unix.SECCOMP_RET_LOG, nil
	}
	return 0, fmt.Errorf("seccomp: no filter for action %v", a)
}

// Layout of struct seccomp_data.
const (
	offNr    = 0
	offArch  = 4
	offArgs  = 16
	maxInsns = 4096 // BPF_MAXINSNS
	x32Bit   = 0x40000000
	// archX86_64 is AUDIT_ARCH_X86_64.
	archX86_64 = unix.AUDIT_ARCH_X86_64
)

// Program compiles Rules(o) into a seccomp filter.
func Program(o Options) ([]unix.SockFilter, error) {
	return Compile(Rules(o), o.Action)
}

// Compile turns rules into a classic BPF seccomp program for x86_64: the
// architecture is checked first, x32 syscall numbers are refused, the
// syscall number is found by binary search, then a conditional rule's
// argument alternatives are tried in order. Everything not allowed returns
// action.
func Compile(rules []Rule, action Action) ([]unix.SockFilter, error) {
	deny, err := action.ret()
	if err != nil {
		return nil, err
	}
	merged, errnos, err := merge(rules)
	if err != nil {
		return nil, err
	}
	nrs := make([]uint32, 0, len(merged))
	for nr := range merged {
		nrs = append(nrs, nr)
	}
	for nr := range errnos {
		nrs = append(nrs, nr)
	}
	sort.Slice(nrs, func(i, j int) bool { return nrs[i] < nrs[j] })

	var a asm
	a.load(offArch)
	a.jump(unix.BPF_JEQ, archX86_64, "", "deny")
	a.load(offNr)
	a.jump(unix.BPF_JGE, x32Bit, "deny", "")
	a.search(nrs)
	for _, nr := range nrs {
		a.label(fmt.Sprintf("sys%d", nr))
		if e, ok := errnos[nr]; ok {
			a.ret(unix.SECCOMP_RET_ERRNO | uint32(e))
			continue
		}
		alts := merged[nr]
		if alts == nil {
			a.jumpAlways("allow")
			continue
		}
		for i, m := range alts {
			next := fmt.Sprintf("sys%d.%d", nr, i+1)
			if i == len(alts)-1 {
				next = "deny"
			}
			for _, c := range m {
				a.cond(c, next)
			}
			a.jumpAlways("allow")
			if i < len(alts)-1 {
				a.label(next)
			}
		}
	}
	a.label("deny")
	a.ret(deny)
	a.label("allow")
	a.ret(unix.SECCOMP_RET_ALLOW)
	prog, err := a.assemble()
	if err != nil {
		return nil, err
	}
	if len(prog) > maxInsns {
		return nil, fmt.Errorf("seccomp: program of %d instructions (max %d)", len(prog), maxInsns)
	}
	return prog, nil
}

// merge groups rules by syscall number: nil means any arguments; otherwise
// the union of every rule's alternatives, in table order. errnos holds the
// syscalls answered with a fixed errno.
func merge(rules []Rule) (allowed map[uint32][]Match, errnos map[uint32]unix.Errno, err error) {
	out := map[uint32][]Match{}
	errnos = map[uint32]unix.Errno{}
	unconditional := map[uint32]bool{}
	for _, r := range rules {
		nr, ok := Number(r.Syscall)
		if !ok {
			return nil, nil, fmt.Errorf("seccomp: unknown syscall %q", r.Syscall)
		}
		if r.Errno != 0 {
			if r.When != nil {
				return nil, nil, fmt.Errorf("seccomp: rule for %s: an errno rule takes no argument conditions", r.Syscall)
			}
			if r.Errno > unix.SECCOMP_RET_DATA {
				return nil, nil, fmt.Errorf("seccomp: rule for %s: errno %d out of range", r.Syscall, r.Errno)
			}
			errnos[nr] = r.Errno
			continue
		}
		if r.When == nil {
			unconditional[nr] = true
			delete(out, nr)
			continue
		}
		if len(r.When) == 0 {
			return nil, nil, fmt.Errorf("seccomp: rule for %s has an empty When (use nil for any arguments)", r.Syscall)
		}
		for _, m := range r.When {
			if len(m) == 0 {
				return nil, nil, fmt.Errorf("seccomp: rule for %s has an empty Match", r.Syscall)
			}
			for _, c := range m {
				if c.Arg < 0 || c.Arg > 5 {
					return nil, nil, fmt.Errorf("seccomp: rule for %s: argument %d out of range", r.Syscall, c.Arg)
				}
				if c.Mask == 0 {
					return nil, nil, fmt.Errorf("seccomp: rule for %s: empty mask on argument %d", r.Syscall, c.Arg)
				}
				if c.Value&^c.Mask != 0 {
					return nil, nil, fmt.Errorf("seccomp: rule for %s: value %#x outside mask %#x can never match", r.Syscall, c.Value, c.Mask)
				}
			}
		}
		if !unconditional[nr] {
			out[nr] = append(out[nr], r.When...)
		}
	}
	for nr := range unconditional {
		out[nr] = nil
	}
	for nr := range errnos {
		if _, ok := out[nr]; ok || unconditional[nr] {
			return nil, nil, fmt.Errorf("seccomp: %s is both allowed and answered with an errno", Name(nr))
		}
	}
	return out, errnos, nil
}

// search emits a binary search over sorted nrs (in the accumulator) that
// jumps to label sys<nr> on a hit and to deny otherwise.
func (a *asm) search(nrs []uint32) {
	if len(nrs) <= 3 {
		for _, nr := range nrs {
			a.jump(unix.BPF_JEQ, nr, fmt.Sprintf("sys%d", nr), "")
		}
		a.jumpAlways("deny")
		return
	}
	mid := len(nrs) / 2
	right := a.newLabel()
	a.jump(unix.BPF_JGE, nrs[mid], right, "")
	a.search(nrs[:mid])
	a.label(right)
	a.search(nrs[mid:])
}

// cond emits the check of c, jumping to fail when it does not hold and
// falling through when it does. Each 32-bit half of the argument is checked
// on its own (classic BPF loads words; x86_64 is little-endian).
func (a *asm) cond(c Cond, fail string) {
	off := uint32(offArgs + 8*c.Arg)
	for _, h := range [2]struct {
		off         uint32
		mask, value uint32
	}{
		{off + 4, uint32(c.Mask >> 32), uint32(c.Value >> 32)},
		{off, uint32(c.Mask), uint32(c.Value)},
	} {
		switch {
		case h.mask == 0:
			// nothing of this half is checked (merge ensured value is 0 here)
		case h.value == 0 && h.mask != ^uint32(0):
			a.load(h.off)
			a.jump(unix.BPF_JSET, h.mask, fail, "")
		case h.mask == ^uint32(0):
			a.load(h.off)
			a.jump(unix.BPF_JEQ, h.value, "", fail)
		default:
			a.load(h.off)
			a.and(h.mask)
			a.jump(unix.BPF_JEQ, h.value, "", fail)
		}
	}
}

// asm is a tiny classic BPF assembler with symbolic forward jumps. A
// conditional jump whose target is more than 255 instructions away is
// rewritten into a conditional jump over unconditional (32-bit) jumps.
type asm struct {
	ins    []insn
	labels int
}

type insn struct {
	code   uint16
	k      uint32
	jt, jf string // conditional jump targets; "" is the next instruction
	target string // BPF_JA target
	label  string // a label pseudo-instruction (takes no space)
}

const opLabel = 0xffff

func (a *asm) newLabel() string {
	a.labels++
	return fmt.Sprintf(".L%d", a.labels)
}

func (a *asm) label(name string) { a.ins = append(a.ins, insn{code: opLabel, label: name}) }

func (a *asm) load(off uint32) {
	a.ins = append(a.ins, insn{code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, k: off})
}

func (a *asm) and(k uint32) {
	a.ins = append(a.ins, insn{code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, k: k})
}

func (a *asm) jump(op uint16, k uint32, jt, jf string) {
	a.ins = append(a.ins, insn{code: unix.BPF_JMP | op | unix.BPF_K, k: k, jt: jt, jf: jf})
}

func (a *asm) jumpAlways(target string) {
	a.ins = append(a.ins, insn{code: unix.BPF_JMP | unix.BPF_JA, target: target})
}

func (a *asm) ret(k uint32) { a.ins = append(a.ins, insn{code: unix.BPF_RET | unix.BPF_K, k: k}) }

func isCond(code uint16) bool {
	return code&0x07 == unix.BPF_JMP && code&0xf0 != unix.BPF_JA
}

// assemble resolves labels, widening out-of-range conditional jumps until
// every jump fits.
func (a *asm) assemble() ([]unix.SockFilter, error) {
	for {
		addr, err := a.addresses()
		if err != nil {
			return nil, err
		}
		var widened []insn
		changed := false
		pc := 0
		for _, in := range a.ins {
			if in.code == opLabel {
				widened = append(widened, in)
				continue
			}
			if isCond(in.code) && (far(addr, in.jt, pc) || far(addr, in.jf, pc)) {
				// jcond k, 0, 1; ja jt; ja jf   (jf: next when it was "")
				changed = true
				lt, lf := a.newLabel(), a.newLabel()
				jt, jf := in.jt, in.jf
				var after string
				if jt == "" || jf == "" {
					after = a.newLabel()
					if jt == "" {
						jt = after
					}
					if jf == "" {
						jf = after
					}
				}
				widened = append(widened,
					insn{code: in.code, k: in.k, jt: lt, jf: lf},
					insn{code: opLabel, label: lt}, insn{code: unix.BPF_JMP | unix.BPF_JA, target: jt},
					insn{code: opLabel, label: lf}, insn{code: unix.BPF_JMP | unix.BPF_JA, target: jf})
				if after != "" {
					widened = append(widened, insn{code: opLabel, label: after})
				}
			} else {
				widened = append(widened, in)
			}
			pc++
		}
		a.ins = widened
		if !changed {
			break
		}
	}
	addr, err := a.addresses()
	if err != nil {
		return nil, err
	}
	var out []unix.SockFilter
	for _, in := range a.ins {
		if in.code == opLabel {
			continue
		}
		pc := len(out)
		f := unix.SockFilter{Code: in.code, K: in.k}
		switch {
		case in.code == unix.BPF_JMP|unix.BPF_JA:
			f.K = uint32(addr[in.target] - pc - 1)
		case isCond(in.code):
			jt, jf := rel(addr, in.jt, pc), rel(addr, in.jf, pc)
			if jt > 255 || jf > 255 {
				return nil, fmt.Errorf("seccomp: internal error: jump of %d/%d at %d after widening", jt, jf, pc)
			}
			f.Jt, f.Jf = uint8(jt), uint8(jf)
		}
		out = append(out, f)
	}
	return out, nil
}

// addresses maps labels to instruction indexes and checks every jump goes
// forward to a defined label.
func (a *asm) addresses() (map[string]int, error) {
	addr := map[string]int{}
	pc := 0
	for _, in := range a.ins {
		if in.code == opLabel {
			if _, dup := addr[in.label]; dup {
				return nil, fmt.Errorf("seccomp: label %s defined twice", in.label)
			}
			addr[in.label] = pc
			continue
		}
		pc++
	}
	pc = 0
	for _, in := range a.ins {
		if in.code == opLabel {
			continue
		}
		for _, t := range []string{in.jt, in.jf, in.target} {
			if t == "" {
				continue
			}
			at, ok := addr[t]
			if !ok {
				return nil, fmt.Errorf("seccomp: undefined label %s", t)
			}
			if at <= pc {
				return nil, errors.New("seccomp: backward jump to " + t)
			}
		}
		if in.code == unix.BPF_JMP|unix.BPF_JA && in.target == "" {
			return nil, errors.New("seccomp: jump without a target")
		}
		pc++
	}
	return addr, nil
}

func rel(addr map[string]int, label string, pc int) int {
	if label == "" {
		return 0
	}
	return addr[label] - pc - 1
}

func far(addr map[string]int, label string, pc int) bool { return rel(addr, label, pc) > 255 }
