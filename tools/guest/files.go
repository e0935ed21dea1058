package guest

import (
	"bytes"
	"crypto/md5"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Pattern returns label+"\n" repeated and cut to size bytes: what the guest's
// `yes LABEL | head -c SIZE` writes.
func Pattern(label string, size int) []byte {
	unit := []byte(label + "\n")
	b := bytes.Repeat(unit, size/len(unit)+1)
	return b[:size]
}

// HostInDir and GuestOutDir are the share's subdirectories for each direction.
const (
	HostInDir   = "host-in"
	GuestOutDir = "guest-out"
)

// PopulateHostFiles writes host-in/ into the shared directory: files of several
// sizes with known content and an MD5SUMS file that the guest's `hostfiles`
// step checks with md5sum -c.
func PopulateHostFiles(shared string) error {
	dir := filepath.Join(shared, HostInDir)
	files := map[string][]byte{
		"hello.txt":            []byte("hello from the host\n"),
		"empty":                nil,
		"sub/dir/nested.txt":   Pattern("nested host file", 3000),
		"page-boundary":        Pattern("page", 4096),
		"page-plus-one":        Pattern("page", 4097),
		"one-mib":              Pattern("one mebibyte from the host", 1<<20),
		"random-3MiB-plus-123": deterministicBytes(3<<20+123, 42),
	}
	names := make([]string, 0, len(files))
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var sums strings.Builder
	for _, name := range names {
		fmt.Fprintf(&sums, "%x  %s\n", md5.Sum(files[name]), name)
	}
	return os.WriteFile(filepath.Join(dir, "MD5SUMS"), []byte(sums.String()), 0o644)
}

func deterministicBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// Guest-out expectations; the guest's `handoff` step (tools/guest/init) writes
// exactly this.
const (
	guestFiles    = 16
	guestFileStep = 1531
	guestBigSize  = 4 << 20
	guestMtime    = 981173106 // touch -t 200102030405.06, UTC
)

// CheckGuestFiles checks guest-out/ in the shared directory after the guest
// ran its handoff step and powered off: the exact set of names, file types,
// sizes and contents, the hard link, the symlink, the xattr, mode, owner and
// mtime. It reports every mismatch, not just the first.
func CheckGuestFiles(shared string) error {
	dir := filepath.Join(shared, GuestOutDir)
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	want := []string{"big", "fifo", "hard", "link", "renamed", "sub", "sub/deep", "sub/deep/er",
		"sub/deep/er/leaf", "trunc"}
	for i := 0; i < guestFiles; i++ {
		want = append(want, fmt.Sprintf("f%d", i))
	}
	sort.Strings(want)
	var got []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			got = append(got, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, err)
	}
	sort.Strings(got)
	for _, n := range got {
		if !slices.Contains(want, n) {
			bad("unexpected entry %s", n)
		}
	}
	for _, n := range want {
		if !slices.Contains(got, n) {
			bad("missing entry %s", n)
		}
	}

	content := map[string][]byte{
		"big":              Pattern("vfsd guest big file", guestBigSize),
		"renamed":          []byte("renamed\n"),
		"sub/deep/er/leaf": []byte("leaf\n"),
		"trunc":            Pattern("vfsd trunc", 1234),
	}
	for i := 0; i < guestFiles; i++ {
		content[fmt.Sprintf("f%d", i)] = Pattern(fmt.Sprintf("vfsd guest file %d", i), i*guestFileStep)
	}
	for name, data := range content {
		p := filepath.Join(dir, name)
		st, err := lstat(p)
		if err != nil {
			bad("%v", err)
			continue
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			bad("%s: not a regular file (mode %o)", name, st.Mode)
			continue
		}
		b, err := os.ReadFile(p)
		switch {
		case err != nil:
			bad("%v", err)
		case len(b) != len(data):
			bad("%s: size %d, want %d", name, len(b), len(data))
		case !bytes.Equal(b, data):
			i := firstDiff(b, data)
			bad("%s: content differs at byte %d: got %q, want %q", name, i, excerpt(b, i), excerpt(data, i))
		}
	}

	check := func(name string, fn func(st *syscall.Stat_t)) {
		st, err := lstat(filepath.Join(dir, name))
		if err != nil {
			bad("%v", err)
			return
		}
		fn(st)
	}
	check("f0", func(st *syscall.Stat_t) {
		if st.Mode&0o7777 != 0o644 || st.Uid != 0 || st.Gid != 0 {
			bad("f0: mode %o owner %d:%d, want 644 0:0", st.Mode&0o7777, st.Uid, st.Gid)
		}
	})
	check("f4", func(st *syscall.Stat_t) {
		if st.Mode&0o7777 != 0o640 {
			bad("f4: mode %o, want 640", st.Mode&0o7777)
		}
	})
	check("f5", func(st *syscall.Stat_t) {
		if st.Uid != 4321 || st.Gid != 8765 {
			bad("f5: owner %d:%d, want 4321:8765", st.Uid, st.Gid)
		}
	})
	check("f6", func(st *syscall.Stat_t) {
		if st.Mtim.Sec != guestMtime {
			bad("f6: mtime %d, want %d", st.Mtim.Sec, guestMtime)
		}
	})
	check("fifo", func(st *syscall.Stat_t) {
		if st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
			bad("fifo: mode %o, not a fifo", st.Mode)
		}
	})
	check("sub/deep", func(st *syscall.Stat_t) {
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || st.Mode&0o7777 != 0o755 {
			bad("sub/deep: mode %o, want a directory with 755", st.Mode)
		}
	})
	if f2, err := lstat(filepath.Join(dir, "f2")); err == nil {
		check("hard", func(st *syscall.Stat_t) {
			if st.Ino != f2.Ino || st.Nlink != 2 || f2.Nlink != 2 {
				bad("hard: inode %d nlink %d, f2: inode %d nlink %d; want the same inode, nlink 2",
					st.Ino, st.Nlink, f2.Ino, f2.Nlink)
			}
		})
	}
	if t, err := os.Readlink(filepath.Join(dir, "link")); err != nil || t != "f1" {
		bad("link: readlink = %q, %v; want \"f1\"", t, err)
	}
	if v, err := getxattr(filepath.Join(dir, "f3"), "user.vfsd.check"); err != nil || v != "guest-wrote" {
		bad("f3: xattr user.vfsd.check = %q, %v; want \"guest-wrote\"", v, err)
	}
	return errors.Join(errs...)
}

// CheckShareTopLevel checks that the share's top level holds exactly the named
// entries: the guest removed its scratch directories (rm -rf) and nothing else
// leaked out.
func CheckShareTopLevel(shared string, names ...string) error {
	ents, err := os.ReadDir(shared)
	if err != nil {
		return err
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := slices.Clone(names)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("share top level: %q, want %q", got, want)
	}
	return nil
}

func lstat(p string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return &st, nil
}

func getxattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func excerpt(b []byte, i int) []byte {
	return b[i:min(len(b), i+24)]
}
