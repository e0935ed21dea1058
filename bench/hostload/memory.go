package hostload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"vfsd/tools/daemon"
	"vfsd/tools/frontend"
)

// MemConfig is one memory measurement of a daemon: how much it holds idle,
// and how much more once the guest knows every entry of the big directory.
type MemConfig struct {
	Kind        daemon.Kind
	Bin         string
	Cache       string
	Extra       []string
	Share       *Share
	SockDir     string
	ReaddirSize int // room per READDIRPLUS (default 4096)
	// Kernel also measures the kernel memory the daemon keeps (slab after
	// dropping the reclaimable dentry and inode caches, with
	// /proc/sys/vm/drop_caches: root only, and it empties those caches for
	// the whole machine).
	Kernel bool
	// Settle is the pause before each sample (default 300 ms).
	Settle time.Duration
}

// MemResult is one memory measurement. User memory is the daemon tree's
// PSS with guest RAM left out (daemon.Memory); kernel memory is the
// machine's slab objects in use after dropping the reclaimable caches, so
// that what is left is what some process pins (an open fd pins its file,
// dentry and inode). Other processes' slab use moves it too: on a quiet
// machine by a few KiB.
type MemResult struct {
	Idle   daemon.Memory `json:"idle"`   // after INIT and opening the directory
	Loaded daemon.Memory `json:"loaded"` // after READDIRPLUS of the whole directory, nothing forgotten
	// Inodes is the number of nodes the READDIRPLUS replies handed out
	// (the guest now holds a lookup reference on each).
	Inodes int `json:"inodes"`
	// SlabIdle and SlabLoaded are the bytes of kernel slab objects in use
	// at the two samples, after dropping the reclaimable ones (0: not
	// measured).
	SlabIdle   uint64 `json:"slab_idle_bytes,omitempty"`
	SlabLoaded uint64 `json:"slab_loaded_bytes,omitempty"`
	// Per known inode: user memory, kernel memory (0 when not measured)
	// and fds.
	UserPerInode   float64 `json:"user_bytes_per_inode"`
	KernelPerInode float64 `json:"kernel_bytes_per_inode,omitempty"`
	FDsPerInode    float64 `json:"fds_per_inode"`
}

// dropCachesPath is where the reclaimable slab caches are dropped.
const dropCachesPath = "/proc/sys/vm/drop_caches"

// CanDropCaches reports whether this process may drop the kernel's caches
// (MemConfig.Kernel).
func CanDropCaches() bool {
	f, err := os.OpenFile(dropCachesPath, os.O_WRONLY, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// MeasureMemory starts the daemon, samples its memory after INIT, has it
// answer READDIRPLUS for every entry of the share's big directory (a guest
// listing a large tree: each entry becomes a node the daemon must keep until
// the guest forgets it), samples again and stops the daemon.
func MeasureMemory(ctx context.Context, c MemConfig) (res MemResult, err error) {
	if c.Share == nil {
		return res, errors.New("hostload: no share")
	}
	if c.ReaddirSize <= 0 {
		c.ReaddirSize = 4096
	}
	if c.Settle <= 0 {
		c.Settle = 300 * time.Millisecond
	}
	s, err := startSession(ctx, DaemonConfig{Kind: c.Kind, Bin: c.Bin, Cache: c.Cache, Extra: c.Extra,
		Share: c.Share, SockDir: c.SockDir, Depth: 1, Queues: 1}, 1, c.ReaddirSize)
	if err != nil {
		return res, err
	}
	defer func() { err = s.stop(err) }()
	const root = 1
	e, err := s.cl.Lookup(ctx, root, BigDirName)
	if err != nil {
		return res, fmt.Errorf("LOOKUP %s: %w", BigDirName, err)
	}
	o, err := s.cl.Opendir(ctx, e.NodeID, 0)
	if err != nil {
		return res, fmt.Errorf("OPENDIR %s: %w", BigDirName, err)
	}
	sample := func(m *daemon.Memory, slab *uint64) (err error) {
		time.Sleep(c.Settle)
		if c.Kernel {
			if *slab, err = slabAfterDrop(); err != nil {
				return err
			}
		}
		*m, err = s.d.Memory(frontend.MemfdName)
		return err
	}
	if err := sample(&res.Idle, &res.SlabIdle); err != nil {
		return res, err
	}
	ents, err := s.cl.ReaddirplusAll(ctx, e.NodeID, o.FH, c.ReaddirSize)
	if err != nil {
		return res, fmt.Errorf("READDIRPLUS %s: %w", BigDirName, err)
	}
	for _, de := range ents {
		if de.Name != "." && de.Name != ".." && de.Entry.NodeID != 0 {
			res.Inodes++
		}
	}
	if res.Inodes == 0 {
		return res, fmt.Errorf("READDIRPLUS of %s handed out no node", BigDirName)
	}
	if err := sample(&res.Loaded, &res.SlabLoaded); err != nil {
		return res, err
	}
	n := float64(res.Inodes)
	res.UserPerInode = (float64(res.Loaded.PSS) - float64(res.Idle.PSS)) / n
	res.FDsPerInode = float64(res.Loaded.FDs-res.Idle.FDs) / n
	if c.Kernel {
		res.KernelPerInode = (float64(res.SlabLoaded) - float64(res.SlabIdle)) / n
	}
	if err := s.cl.Releasedir(ctx, e.NodeID, o.FH); err != nil {
		return res, fmt.Errorf("RELEASEDIR: %w", err)
	}
	return res, nil
}

// slabAfterDrop drops the reclaimable slab objects (dentries and inodes
// nobody pins) and returns the bytes of the slab objects in use. It drops
// twice: dentries are freed after an RCU grace period.
func slabAfterDrop() (uint64, error) {
	for i := range 2 {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		if err := os.WriteFile(dropCachesPath, []byte("2"), 0); err != nil {
			return 0, fmt.Errorf("drop caches: %w", err)
		}
	}
	f, err := os.Open("/proc/slabinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return slabInUse(f)
}

// slabInUse sums active_objs x objsize over the caches of a /proc/slabinfo
// text (version 2.1). Objects, not pages: meminfo's Slab counts slab pages,
// and new objects fill the holes that a cache drop leaves in partly used
// pages before they take new ones, so it hides most of what a daemon pins.
func slabInUse(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	var total uint64
	for n := 0; sc.Scan(); n++ {
		line := sc.Text()
		if n == 0 {
			if !strings.HasPrefix(line, "slabinfo - version: 2.") {
				return 0, fmt.Errorf("slabinfo: unknown format %q", line)
			}
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return 0, fmt.Errorf("slabinfo: %q", line)
		}
		objs, err1 := strconv.ParseUint(f[1], 10, 64)
		size, err2 := strconv.ParseUint(f[3], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, fmt.Errorf("slabinfo: %q: %w", line, err)
		}
		total += objs * size
	}
	return total, sc.Err()
}
