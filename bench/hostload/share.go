package hostload

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Workload is one host-side operation mix.
type Workload struct {
	Name string
	// Size is the I/O size of read/write workloads (0 otherwise).
	Size int
	// Write is true for the write workloads.
	Write bool
	// Seq is true when each worker streams sequentially through its part of
	// the file; false for random aligned offsets.
	Seq bool
	// Desc says what one operation is.
	Desc string
}

// Workloads lists every host workload, in table order.
var Workloads = []Workload{
	{Name: "getattr", Desc: "GETATTR of a file"},
	{Name: "lookup", Desc: "LOOKUP of a name in the root"},
	{Name: "read4k", Size: 4 << 10, Desc: "4 KiB READ, random offsets"},
	{Name: "write4k", Size: 4 << 10, Write: true, Desc: "4 KiB WRITE, random offsets"},
	{Name: "read128k", Size: 128 << 10, Seq: true, Desc: "128 KiB READ, sequential"},
	{Name: "write128k", Size: 128 << 10, Write: true, Seq: true, Desc: "128 KiB WRITE, sequential"},
	{Name: "read1m", Size: 1 << 20, Seq: true, Desc: "1 MiB READ, sequential"},
	{Name: "write1m", Size: 1 << 20, Write: true, Seq: true, Desc: "1 MiB WRITE, sequential"},
	{Name: "create", Desc: "CREATE+RELEASE+UNLINK"},
	{Name: "readdirplus", Desc: "READDIRPLUS walking the big directory"},
}

// LookupWorkload returns the workload called name.
func LookupWorkload(name string) (Workload, error) {
	i := slices.IndexFunc(Workloads, func(w Workload) bool { return w.Name == name })
	if i < 0 {
		names := make([]string, len(Workloads))
		for j, w := range Workloads {
			names[j] = w.Name
		}
		return Workload{}, fmt.Errorf("hostload: unknown workload %q (have %s)", name, strings.Join(names, ", "))
	}
	return Workloads[i], nil
}

// IsIO reports whether w moves file data.
func (w Workload) IsIO() bool { return w.Size > 0 }

// Share is the directory every run serves.
type Share struct {
	Dir        string // the shared directory
	FileSize   int64  // size of DataName
	DirEntries int    // files in BigDirName
}

// Names inside a Share.
const (
	DataName   = "data"   // the file reads, writes and GETATTR go to
	BigDirName = "bigdir" // DirEntries empty files, for readdirplus
	NewDirName = "new"    // where create makes and removes its files
)

// PrepareShare fills dir (created if needed) with a data file of fileSize
// bytes and a directory of entries files. What is already there with the
// right size and count is kept, so repeated harness runs on the same
// directory do not rewrite it.
func PrepareShare(dir string, fileSize int64, entries int) (*Share, error) {
	if fileSize < 1<<20 {
		return nil, fmt.Errorf("hostload: file size %d below 1 MiB (the largest I/O)", fileSize)
	}
	s := &Share{Dir: dir, FileSize: fileSize, DirEntries: entries}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	spreadSubdirs(dir)
	for _, d := range []string{filepath.Join(dir, BigDirName), filepath.Join(dir, NewDirName)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := s.writeData(); err != nil {
		return nil, err
	}
	if err := s.fillDir(); err != nil {
		return nil, err
	}
	return s, s.CleanNew()
}

func (s *Share) writeData() error {
	p := filepath.Join(s.Dir, DataName)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() == s.FileSize {
		return nil
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + i>>8)
	}
	for off := int64(0); off < s.FileSize; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk[:min(int64(len(chunk)), s.FileSize-off)], off); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// EntryName is the name of the i-th file of the big directory.
func EntryName(i int) string { return fmt.Sprintf("entry-%06d", i) }

func (s *Share) fillDir() error {
	d := filepath.Join(s.Dir, BigDirName)
	ents, err := os.ReadDir(d)
	if err != nil {
		return err
	}
	if len(ents) == s.DirEntries {
		return nil
	}
	want := make(map[string]bool, s.DirEntries)
	for i := 0; i < s.DirEntries; i++ {
		want[EntryName(i)] = true
	}
	for _, e := range ents {
		if !want[e.Name()] {
			if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
				return err
			}
		} else {
			delete(want, e.Name())
		}
	}
	for name := range want {
		f, err := os.OpenFile(filepath.Join(d, name), os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

// CleanNew replaces the create directory by a new, empty one, before every
// run: a run stopped between CREATE and UNLINK leaves files behind, and a
// directory's files are allocated in its inode group, where ext4 skips
// inodes freed within the last minutes when it allocates (recently_deleted):
// after a run's thousands of creates and unlinks, creating in that group
// gets slower for minutes (in-process create+unlink fell from 67k/s to
// 2.8k/s here), so each run would pay for the ones before it. A new
// directory under the share (spreadSubdirs) starts in another group.
func (s *Share) CleanNew() error {
	d := filepath.Join(s.Dir, NewDirName)
	tmp := d + ".fresh"
	old := d + ".old"
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	if err := os.Rename(d, old); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Rename(tmp, d); err != nil {
		return err
	}
	return os.RemoveAll(old)
}

// fsTopdirFL is FS_TOPDIR_FL (chattr +T): ext4's Orlov allocator places a
// new subdirectory of such a directory in a group of its own choosing
// (many free inodes), as for the filesystem's top-level directories,
// instead of its parent's group.
const fsTopdirFL = 0x00020000

// spreadSubdirs sets fsTopdirFL on dir where the filesystem has it (best
// effort: other filesystems have no inode groups to spread over).
func spreadSubdirs(dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	if fl, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS); err == nil && fl&fsTopdirFL == 0 {
		unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(fl|fsTopdirFL))
	}
}
