package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Memory is what a daemon's process tree holds in user memory, read from
// /proc/PID/smaps of every process in it.
type Memory struct {
	// PSS is the proportional set size in bytes (a page shared by k
	// processes counts 1/k in each), RSS the resident set size summed over
	// the processes (shared pages counted once per process). Both leave out
	// the mappings whose name contains the skip string (guest RAM: the
	// frontend's memory, which a vhost-user backend maps but does not own).
	PSS, RSS uint64
	// File is the part of PSS in mappings of regular files (the binary,
	// shared libraries): clean pages the kernel can drop and read again,
	// unlike the anonymous and shared-memory rest.
	File uint64
	// Skipped is the PSS of the mappings left out.
	Skipped uint64
	// FDs is the number of open file descriptors in the tree.
	FDs   int
	Procs int
}

// Memory measures the daemon's process tree (see TreeMemory).
func (d *Daemon) Memory(skip string) (Memory, error) { return TreeMemory(d.PID(), skip) }

// TreeMemory sums the memory of pid and its descendants, leaving out the
// mappings whose /proc/PID/smaps name contains skip ("" leaves out none).
func TreeMemory(pid int, skip string) (Memory, error) {
	procs, err := readProcs()
	if err != nil {
		return Memory{}, err
	}
	if _, ok := procs[pid]; !ok {
		return Memory{}, fmt.Errorf("daemon: process %d not found", pid)
	}
	var m Memory
	for _, p := range tree(procs, pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", p))
		if err != nil {
			if os.IsNotExist(err) || errors.Is(err, syscall.ESRCH) {
				continue // exited meanwhile
			}
			return Memory{}, err
		}
		pm, err := parseSmaps(b, skip)
		if err != nil {
			return Memory{}, fmt.Errorf("/proc/%d/smaps: %w", p, err)
		}
		m.PSS += pm.PSS
		m.RSS += pm.RSS
		m.Skipped += pm.Skipped
		m.File += pm.File
		if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p)); err == nil {
			m.FDs += len(ents)
		}
		m.Procs++
	}
	return m, nil
}

// parseSmaps sums the Pss and Rss lines of one smaps file (kB), by mapping:
// a mapping starts with a header line "start-end perms offset dev inode
// [name]"; its fields follow as "Key: value kB".
func parseSmaps(b []byte, skip string) (Memory, error) {
	var m Memory
	skipping, file := false, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		key, rest, ok := strings.Cut(line, ":")
		if !ok || strings.ContainsAny(key, " -") {
			// A mapping header: its first field is "start-end".
			f := strings.Fields(line)
			if len(f) < 5 || !strings.Contains(f[0], "-") {
				return Memory{}, fmt.Errorf("unexpected line %q", line)
			}
			name := ""
			if len(f) > 5 {
				name = strings.Join(f[5:], " ")
			}
			skipping = skip != "" && strings.Contains(name, skip)
			file = isFileMapping(name)
			continue
		}
		if key != "Pss" && key != "Rss" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return Memory{}, fmt.Errorf("unexpected line %q", line)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("line %q: %w", line, err)
		}
		switch {
		case key == "Pss" && skipping:
			m.Skipped += kb << 10
		case key == "Pss":
			m.PSS += kb << 10
			if file {
				m.File += kb << 10
			}
		case key == "Rss" && !skipping:
			m.RSS += kb << 10
		}
	}
	return m, sc.Err()
}

// isFileMapping reports whether a smaps mapping name is a regular file's
// path (not anonymous memory, a memfd, a device or a SysV segment).
func isFileMapping(name string) bool {
	return strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "/memfd:") &&
		!strings.HasPrefix(name, "/dev/") && !strings.HasPrefix(name, "/SYSV")
}
