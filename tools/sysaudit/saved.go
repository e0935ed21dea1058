package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"vfsd/seccomp"
)

// saved is what -save writes: one run's counts, judged later with the
// others by -merge (make test audits the host tests and the guest tests as
// separate runs and judges their union).
type saved struct {
	// Unavailable, when set, says why this run was not audited (-optional).
	Unavailable string `json:",omitempty"`
	Workers     int    // worker and plain daemon processes traced
	Sealed      bool   // some traced process installed a seccomp filter
	Counts      Counts
}

func writeSaved(path string, rec saved) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func readSaved(path string) (saved, error) {
	var rec saved
	b, err := os.ReadFile(path)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s: %w", path, err)
	}
	return rec, nil
}

// mergeSaved judges the union of saved runs: each run contributes its
// sealed bank when it saw a filter installed, else everything it saw.
// Runs marked unavailable are listed and skipped; when none was audited
// the merge says so and passes (make test audits where BPF allows).
func mergeSaved(c config, stdout, stderr io.Writer) int {
	var union Counts
	audited, workers, sealed := 0, 0, true
	for _, path := range c.cmd {
		rec, err := readSaved(path)
		if err != nil {
			fmt.Fprintln(stderr, "sysaudit:", err)
			return 2
		}
		if rec.Unavailable != "" {
			fmt.Fprintf(stdout, "sysaudit: %s was not audited: %s\n", path, rec.Unavailable)
			continue
		}
		if rec.Workers == 0 {
			fmt.Fprintf(stderr, "sysaudit: %s traced no worker\n", path)
			return 2
		}
		audited++
		workers += rec.Workers
		sealed = sealed && rec.Sealed
		bank := &rec.Counts.All
		if rec.Sealed {
			bank = &rec.Counts.Sealed
		}
		for i, n := range bank {
			union.Sealed[i] += n
			union.All[i] += n
		}
	}
	if audited == 0 {
		fmt.Fprintln(stdout, "sysaudit: SKIPPED: no run was audited (BPF unavailable); the allowlist was not checked")
		return 0
	}
	fmt.Fprintf(stdout, "\nsysaudit: union of %d run(s), %d worker(s)/daemon(s) traced\n", audited, workers)
	rep := makeReport(union, seccomp.Names(), sealed)
	rep.Print(stdout)
	if len(rep.Missing) > 0 || (c.strict && len(rep.Unused) > 0) {
		return 1
	}
	return 0
}

// runUnaudited runs the command without BPF (-optional), recording why in
// the -save file.
func runUnaudited(c config, why string, stdout, stderr, log io.Writer) int {
	fmt.Fprintf(log, "sysaudit: %s; running the command unaudited\n", why)
	if c.save != "" {
		if err := writeSaved(c.save, saved{Unavailable: why}); err != nil {
			fmt.Fprintln(log, "sysaudit:", err)
			return 2
		}
	}
	cmd := exec.Command(c.cmd[0], c.cmd[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	return exitStatus(cmd.Run())
}

// exitStatus is the status to pass on for a command's error.
func exitStatus(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	}
	return 3
}
