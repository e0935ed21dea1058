package hostload

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	for _, d := range []string{dir, filepath.Join(dir, BigDirName), filepath.Join(dir, NewDirName)} {
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

// CleanNew empties the create directory (a run stopped between CREATE and
// UNLINK leaves a file behind).
func (s *Share) CleanNew() error {
	d := filepath.Join(s.Dir, NewDirName)
	ents, err := os.ReadDir(d)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
