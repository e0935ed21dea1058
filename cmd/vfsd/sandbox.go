package main

import (
	"errors"
	"fmt"
	"os/exec"

	"vfsd/engine/sandbox"
)

// Sandbox settings (engine/sandbox): --sandbox and --modcaps.

// sandboxMode is the worker's sandbox: --sandbox when given, else
// namespace (as virtiofsd), or none with --no-supervisor (namespace needs
// the supervisor to start the worker in new namespaces).
func (c *config) sandboxMode() sandbox.Mode {
	if c.NoSupervisor && !c.sandboxExplicit {
		return sandbox.None
	}
	return sandbox.Mode(c.Sandbox)
}

// setSandboxMode is --sandbox / -o sandbox=.
func (c *config) setSandboxMode(s string) error {
	m, err := sandbox.ParseMode(s)
	if err != nil {
		return err
	}
	c.Sandbox, c.sandboxExplicit = string(m), true
	return nil
}

// setModcapsList is --modcaps / -o modcaps= (checked here, applied by the
// worker).
func (c *config) setModcapsList(s string) error {
	if _, err := sandbox.ParseModcaps(s, sandbox.DefaultCaps()); err != nil {
		return err
	}
	c.modcaps = s
	return nil
}

// checkSandbox refuses what the worker could not honour.
func (c *config) checkSandbox() error {
	if c.NoSupervisor && c.sandboxExplicit && c.Sandbox != string(sandbox.None) {
		return fmt.Errorf("--sandbox=%s needs the supervisor (the worker enters its sandbox when the supervisor starts it); use --sandbox=none with --no-supervisor", c.Sandbox)
	}
	if c.NoSupervisor && c.modcaps != "" {
		return errors.New("--modcaps applies to the supervised worker only (not with --no-supervisor)")
	}
	return nil
}

// sandboxArgs are the worker's sandbox flags.
func (c *config) sandboxArgs() []string {
	a := []string{"--sandbox=" + string(c.sandboxMode())}
	if c.modcaps != "" {
		a = append(a, "--modcaps="+c.modcaps)
	}
	return a
}

// prepareWorker is the supervisor's PrepareWorker hook.
func (c *config) prepareWorker() func(*exec.Cmd) {
	return c.withUserns(sandbox.PrepareCmd(c.sandboxMode())) // --uid-map: flags.go
}

// enterSandbox is the worker's first act (runWorker): it sets the sandbox
// up and re-executes the worker inside it (returning only on error), or,
// in the re-executed image, points the worker at the shared directory as
// seen from inside.
func (c *config) enterSandbox() error {
	caps, err := sandbox.ParseModcaps(c.modcaps, sandbox.DefaultCaps())
	if err != nil {
		return err
	}
	dir, err := sandbox.Enter(sandbox.Config{Mode: c.sandboxMode(), SharedDir: c.SharedDir, Caps: caps})
	if err != nil {
		return err
	}
	c.SharedDir = dir
	return nil
}
