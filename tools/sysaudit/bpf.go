package main

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Table sizes.
const (
	MaxSyscalls = 512  // counter array entries (x86_64 numbers are < 512)
	MaxTraced   = 4096 // traced processes at once
)

// ptRegsDI is offsetof(struct pt_regs, di) on x86_64: the first syscall
// argument in the sys_enter raw tracepoint's regs.
const ptRegsDI = 14 * 8

// Tracer counts the syscalls of the processes added to it.
type Tracer struct {
	tgids  *ebpf.Map // tgid (u32) -> sealed (u32): 1 once it entered seccomp(SET_MODE_FILTER)
	counts *ebpf.Map // syscall nr (u32) -> count (u64), all syscalls
	sealed *ebpf.Map // the same, after the filter was installed
	prog   *ebpf.Program
	link   link.Link
}

// Counts is a snapshot of the counters, indexed by syscall number.
type Counts struct {
	All, Sealed [MaxSyscalls]uint64
}

// NewTracer loads the program and attaches it to sys_enter.
func NewTracer() (*Tracer, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("memlock rlimit: %w", err)
	}
	t := &Tracer{}
	var err error
	fail := func(what string, err error) (*Tracer, error) {
		t.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if t.tgids, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sysaudit_tgids", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: MaxTraced}); err != nil {
		return fail("tgid map", err)
	}
	if t.counts, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sysaudit_all", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: MaxSyscalls}); err != nil {
		return fail("counter map", err)
	}
	if t.sealed, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sysaudit_seal", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: MaxSyscalls}); err != nil {
		return fail("counter map", err)
	}
	if t.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "sysaudit_enter",
		Type:         ebpf.RawTracepoint,
		License:      "GPL", // bpf_probe_read_kernel is GPL-only
		Instructions: program(t.tgids.FD(), t.counts.FD(), t.sealed.FD()),
	}); err != nil {
		return fail("load program", err)
	}
	if t.link, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: t.prog}); err != nil {
		return fail("attach raw tracepoint sys_enter", err)
	}
	return t, nil
}

// program is the sys_enter raw tracepoint handler. Its context is struct
// bpf_raw_tracepoint_args: args[0] the task's struct pt_regs *, args[1] the
// syscall number.
//
//	tgid = bpf_get_current_pid_tgid() >> 32
//	state = tgids[tgid]; if !state: return
//	nr = ctx->args[1]; if nr >= 512: return
//	all[nr]++
//	if *state: sealed[nr]++
//	else if nr == SYS_seccomp && regs->di == SECCOMP_SET_MODE_FILTER: *state = 1
func program(tgids, counts, sealed int) asm.Instructions {
	lookup := func(m int, keyOff int32) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, m),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, keyOff),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "exit"),
		}
	}
	var in asm.Instructions
	in = append(in,
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.FnGetCurrentPidTgid.Call(),
		asm.RSh.Imm(asm.R0, 32),
		asm.StoreMem(asm.RFP, -4, asm.R0, asm.Word),
	)
	in = append(in, lookup(tgids, -4)...)
	in = append(in,
		asm.Mov.Reg(asm.R7, asm.R0),                 // &state
		asm.LoadMem(asm.R8, asm.R6, 8, asm.DWord),   // nr
		asm.JGE.Imm(asm.R8, MaxSyscalls, "exit"),    // unsigned: -1 too
		asm.StoreMem(asm.RFP, -8, asm.R8, asm.Word), // key
	)
	in = append(in, lookup(counts, -8)...)
	in = append(in,
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.Word),
		asm.JEq.Imm(asm.R1, 0, "unsealed"),
	)
	in = append(in, lookup(sealed, -8)...)
	in = append(in,
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Ja.Label("exit"),

		asm.JNE.Imm(asm.R8, unix.SYS_SECCOMP, "exit").WithSymbol("unsealed"),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, -16),
		asm.Mov.Imm(asm.R2, 8),
		asm.LoadMem(asm.R3, asm.R6, 0, asm.DWord), // regs
		asm.Add.Imm(asm.R3, ptRegsDI),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, "exit"),
		asm.LoadMem(asm.R1, asm.RFP, -16, asm.DWord),
		asm.JNE.Imm(asm.R1, unix.SECCOMP_SET_MODE_FILTER, "exit"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.Word),

		asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
		asm.Return(),
	)
	return in
}

// Add starts counting the syscalls of process tgid.
func (t *Tracer) Add(tgid int) error {
	return t.tgids.Update(uint32(tgid), uint32(0), ebpf.UpdateNoExist)
}

// Remove stops counting tgid (its counts so far stay).
func (t *Tracer) Remove(tgid int) error {
	err := t.tgids.Delete(uint32(tgid))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// Sealed reports whether tgid entered seccomp(SECCOMP_SET_MODE_FILTER).
func (t *Tracer) Sealed(tgid int) bool {
	var v uint32
	return t.tgids.Lookup(uint32(tgid), &v) == nil && v != 0
}

// Counts reads the counters.
func (t *Tracer) Counts() (Counts, error) {
	var c Counts
	for nr := uint32(0); nr < MaxSyscalls; nr++ {
		if err := t.counts.Lookup(nr, &c.All[nr]); err != nil {
			return c, err
		}
		if err := t.sealed.Lookup(nr, &c.Sealed[nr]); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Close detaches the program and frees the maps.
func (t *Tracer) Close() error {
	var errs []error
	if t.link != nil {
		errs = append(errs, t.link.Close())
	}
	for _, c := range []interface{ Close() error }{t.prog, t.tgids, t.counts, t.sealed} {
		if c != nil && !isNilCloser(c) {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Program:
		return v == nil
	case *ebpf.Map:
		return v == nil
	}
	return false
}
