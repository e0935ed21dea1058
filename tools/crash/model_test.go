package crash

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vfsd/tools/fuseclient"
)

// The workload: every client goroutine owns one directory c<N> under the
// share's root and runs a random sequence of operations in it, one request at
// a time, checking each reply against a sequential model of its subtree. No
// one else touches the subtree, so a crash-free daemon gives exactly the
// replies the model predicts; a worker crash must not change a single one.

const (
	lockSpan    = 64    // POSIX locks are taken inside [0, lockSpan)
	maxFiles    = 10    // names per client before it prefers removing
	maxDirs     = 4     // empty subdirectories per client
	maxData     = 24576 // file size beyond which writes truncate first
	maxOrphans  = 2     // unlinked files kept open
	historySize = 12
)

// mobj is one inode the client holds a reference to (a LOOKUP count > 0).
type mobj struct {
	dir     bool
	ino     uint64
	nodeid  uint64
	nlookup uint64
	nlink   uint32
	data    []byte
	xattrs  map[string][]byte
	path    string // one host path (relative to the share), "" when unlinked

	fh, afh, pfh       uint64 // O_RDWR, O_WRONLY|O_APPEND, probe O_RDWR handles
	hasFH, hasAFH, has bool   // has: pfh valid
	owner, probeOwner  uint64
	locks              [lockSpan]bool
	flocked            bool
}

// client is one goroutine's model and connection.
type client struct {
	id     int
	queue  int
	c      *fuseclient.Client
	share  string // host path of the share
	rng    *rand.Rand
	xattrs bool // the share supports user xattrs

	dir     *mobj            // c<id>
	names   map[string]*mobj // entries of dir
	orphans []*mobj          // unlinked, still open
	seq     int

	ops     map[string]int // completed operations by name
	history []string       // last operations, for failure reports
	reqs    int            // requests sent
}

// failure is a reply that differs from the model.
type failure struct {
	client int
	op     string
	msg    string
	hist   []string
}

func (f *failure) Error() string {
	return fmt.Sprintf("client %d: %s: %s\n    recent operations (oldest first):\n      %s",
		f.client, f.op, f.msg, strings.Join(f.hist, "\n      "))
}

func errnoOf(err error) (unix.Errno, bool) {
	var en unix.Errno
	if errors.As(err, &en) {
		return en, true
	}
	return 0, false
}

func (w *client) note(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	if len(w.history) >= historySize {
		w.history = w.history[1:]
	}
	w.history = append(w.history, s)
}

func (w *client) fail(op, format string, a ...any) error {
	return &failure{client: w.id, op: op, msg: fmt.Sprintf(format, a...), hist: slices.Clone(w.history)}
}

// want compares a request's outcome with the model's errno (0: success). A
// transport error (no reply, frontend EOF, protocol violation) is always a
// failure: no request may be lost.
func (w *client) want(op string, err error, want unix.Errno) error {
	w.reqs++
	if err == nil && want == 0 {
		return nil
	}
	en, isErrno := errnoOf(err)
	switch {
	case err != nil && !isErrno:
		return w.fail(op, "request lost or broken reply: %v (model: %s)", err, errName(want))
	case err == nil:
		return w.fail(op, "succeeded, model says %s", errName(want))
	case en != want:
		return w.fail(op, "replied %s, model says %s", errName(en), errName(want))
	}
	return nil
}

func errName(e unix.Errno) string {
	if e == 0 {
		return "success"
	}
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return e.Error()
}

func (w *client) fresh(prefix string) string {
	w.seq++
	return fmt.Sprintf("%s%d", prefix, w.seq)
}

// checkEntry compares an entry reply with the model object.
func (w *client) checkEntry(op string, ent fuseclient.EntryOut, o *mobj) error {
	a := ent.Attr
	switch {
	case ent.NodeID != o.nodeid:
		return w.fail(op, "nodeid %#x, model %#x (the same inode must keep its nodeid while referenced)", ent.NodeID, o.nodeid)
	case a.Ino != o.ino:
		return w.fail(op, "ino %d, model %d", a.Ino, o.ino)
	}
	return w.checkAttr(op, a, o)
}

func (w *client) checkAttr(op string, a fuseclient.Attr, o *mobj) error {
	mode := uint32(unix.S_IFREG | 0o644)
	if o.dir {
		mode = unix.S_IFDIR | 0o755
	}
	switch {
	case a.Ino != o.ino:
		return w.fail(op, "ino %d, model %d", a.Ino, o.ino)
	case a.Mode != mode:
		return w.fail(op, "mode %o, model %o", a.Mode, mode)
	case a.Nlink != o.nlink:
		return w.fail(op, "nlink %d, model %d", a.Nlink, o.nlink)
	case !o.dir && a.Size != uint64(len(o.data)):
		return w.fail(op, "size %d, model %d", a.Size, len(o.data))
	}
	return nil
}

// pick returns a random element of a sorted key set (deterministic per seed).
func pick[T any](r *rand.Rand, m map[string]T, ok func(T) bool) (string, T, bool) {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if ok == nil || ok(v) {
			keys = append(keys, k)
		}
	}
	var zero T
	if len(keys) == 0 {
		return "", zero, false
	}
	sort.Strings(keys)
	k := keys[r.Intn(len(keys))]
	return k, m[k], true
}

func isFile(o *mobj) bool { return !o.dir }

// files returns the named files and the orphans, each object once.
func (w *client) fileObjs() []*mobj {
	seen := map[*mobj]bool{}
	var out []*mobj
	keys := make([]string, 0, len(w.names))
	for k := range w.names {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if o := w.names[k]; !o.dir && !seen[o] {
			seen[o] = true
			out = append(out, o)
		}
	}
	return append(out, w.orphans...)
}

func (w *client) anyFile() *mobj {
	objs := w.fileObjs()
	if len(objs) == 0 {
		return nil
	}
	return objs[w.rng.Intn(len(objs))]
}

func (w *client) countFiles() (files, dirs int) {
	for _, o := range w.names {
		if o.dir {
			dirs++
		} else {
			files++
		}
	}
	return
}

// ops is the operation table: name, weight, function. A function returns
// (false, nil) when it does not apply to the current state.
type opFunc func(ctx context.Context, w *client) (bool, error)

type opEntry struct {
	name   string
	weight int
	fn     opFunc
}

var opTable = []opEntry{
	{"create", 8, opCreate},
	{"write", 10, opWrite},
	{"append", 8, opAppend},
	{"read", 6, opRead},
	{"truncate", 1, opTruncate},
	{"rename", 6, opRename},
	{"link", 5, opLink},
	{"unlink", 6, opUnlink},
	{"mkdir", 3, opMkdir},
	{"mkdir-exists", 1, opMkdirExists},
	{"rmdir", 3, opRmdir},
	{"setxattr", 5, opSetxattr},
	{"getxattr", 4, opGetxattr},
	{"setlk", 6, opSetlk},
	{"getlk", 4, opGetlk},
	{"flock", 4, opFlock},
	{"readdir", 3, opReaddir},
	{"lookup", 6, opLookup},
	{"lookup-missing", 1, opLookupMissing},
	{"forget", 4, opForget},
	{"getattr", 4, opGetattr},
	{"release", 3, opRelease},
	{"retire-orphan", 1, opRetireOrphan},
}

var opWeightSum = func() int {
	n := 0
	for _, o := range opTable {
		n += o.weight
	}
	return n
}()

// step runs one random applicable operation.
func (w *client) step(ctx context.Context) error {
	for tries := 0; tries < 50; tries++ {
		r := w.rng.Intn(opWeightSum)
		for _, o := range opTable {
			if r -= o.weight; r < 0 {
				ran, err := o.fn(ctx, w)
				if err != nil {
					return err
				}
				if ran {
					w.ops[o.name]++
					return nil
				}
				break
			}
		}
	}
	return nil
}

func opCreate(ctx context.Context, w *client) (bool, error) {
	if f, _ := w.countFiles(); f >= maxFiles {
		return false, nil
	}
	name := w.fresh("f")
	w.note("CREATE %s O_EXCL", name)
	ent, open, err := w.c.Create(ctx, w.dir.nodeid, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644, 0)
	if err := w.want("CREATE "+name, err, 0); err != nil {
		return true, err
	}
	o := &mobj{ino: ent.Attr.Ino, nodeid: ent.NodeID, nlookup: 1, nlink: 1, xattrs: map[string][]byte{},
		path: filepath.Join(w.dir.path, name), fh: open.FH, hasFH: true,
		owner: uint64(w.id)<<32 | uint64(w.seq), probeOwner: 1<<63 | uint64(w.id)<<32 | uint64(w.seq)}
	for _, x := range w.fileObjs() {
		if x.ino == o.ino || x.nodeid == o.nodeid {
			return true, w.fail("CREATE "+name, "new file got ino %d nodeid %#x, already used by a live file", o.ino, o.nodeid)
		}
	}
	if err := w.checkAttr("CREATE "+name, ent.Attr, o); err != nil {
		return true, err
	}
	w.names[name] = o
	return true, nil
}

func randData(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

func opWrite(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil || !o.hasFH {
		return false, nil
	}
	if len(o.data) > maxData {
		return opTruncateObj(ctx, w, o)
	}
	off := w.rng.Intn(len(o.data) + 256)
	data := randData(w.rng, 1+w.rng.Intn(3000))
	w.note("WRITE ino %d off %d len %d", o.ino, off, len(data))
	n, err := w.c.Write(ctx, o.nodeid, o.fh, uint64(off), data, 0)
	if err := w.want("WRITE", err, 0); err != nil {
		return true, err
	}
	if int(n) != len(data) {
		return true, w.fail("WRITE", "wrote %d of %d bytes", n, len(data))
	}
	if end := off + len(data); end > len(o.data) {
		o.data = append(o.data, make([]byte, end-len(o.data))...)
	}
	copy(o.data[off:], data)
	return true, nil
}

// opAppend writes through an O_APPEND handle at the file's end (where the
// guest kernel puts an O_APPEND write); a replayed append would land twice.
func opAppend(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil {
		return false, nil
	}
	if len(o.data) > maxData {
		if !o.hasFH {
			return false, nil
		}
		return opTruncateObj(ctx, w, o)
	}
	if !o.hasAFH {
		w.note("OPEN ino %d O_WRONLY|O_APPEND", o.ino)
		open, err := w.c.Open(ctx, o.nodeid, unix.O_WRONLY|unix.O_APPEND, 0)
		if err := w.want("OPEN O_APPEND", err, 0); err != nil {
			return true, err
		}
		o.afh, o.hasAFH = open.FH, true
	}
	data := randData(w.rng, 1+w.rng.Intn(2000))
	w.note("WRITE(append) ino %d at %d len %d", o.ino, len(o.data), len(data))
	n, err := w.c.Write(ctx, o.nodeid, o.afh, uint64(len(o.data)), data, 0)
	if err := w.want("WRITE O_APPEND", err, 0); err != nil {
		return true, err
	}
	if int(n) != len(data) {
		end := len(o.data) + int(n)
		return true, w.fail("WRITE O_APPEND", "reply: wrote %d of %d bytes (a short write a crash-free daemon never gives; file size before %d, "+
			"so the write stopped at offset %d, a page boundary: %v)", n, len(data), len(o.data), end, end%4096 == 0)
	}
	o.data = append(o.data, data...)
	return true, nil
}

func opRead(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil || !o.hasFH {
		return false, nil
	}
	buf := make([]byte, len(o.data)+512)
	w.note("READ ino %d len %d", o.ino, len(buf))
	n, err := w.c.Read(ctx, o.nodeid, o.fh, 0, buf)
	if err := w.want("READ", err, 0); err != nil {
		return true, err
	}
	if !bytes.Equal(buf[:n], o.data) {
		return true, w.fail("READ", "content differs from the model: %s", diffDesc(buf[:n], o.data))
	}
	return true, nil
}

func diffDesc(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d bytes, model %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d of %d", i, len(got))
		}
	}
	return "equal"
}

func opTruncate(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil {
		return false, nil
	}
	return opTruncateObj(ctx, w, o)
}

func opTruncateObj(ctx context.Context, w *client, o *mobj) (bool, error) {
	size := w.rng.Intn(len(o.data) + 1)
	if len(o.data) > maxData {
		size = w.rng.Intn(4096)
	}
	w.note("SETATTR ino %d size %d", o.ino, size)
	a, err := w.c.Setattr(ctx, o.nodeid, fuseclient.SetattrIn{Valid: fuseclient.FattrSize, Size: uint64(size)})
	if err := w.want("SETATTR size", err, 0); err != nil {
		return true, err
	}
	o.data = o.data[:size]
	return true, w.checkAttr("SETATTR size", a.Attr, o)
}

// dropName removes a name from the model; an object left without links or
// references is finished.
func (w *client) unlinked(ctx context.Context, o *mobj) error {
	o.nlink--
	if o.dir || o.nlink > 0 {
		if o.nlink > 0 && !o.dir {
			o.path = w.anyPath(o)
		}
		return nil
	}
	o.path = ""
	if (o.hasFH || o.hasAFH) && len(w.orphans) < maxOrphans {
		w.orphans = append(w.orphans, o)
		return nil
	}
	return w.retire(ctx, o)
}

// anyPath returns a host path of a named object.
func (w *client) anyPath(o *mobj) string {
	keys := make([]string, 0, len(w.names))
	for k, x := range w.names {
		if x == o {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	return filepath.Join(w.dir.path, keys[0])
}

// retire unlocks and releases every handle of o and forgets its references.
func (w *client) retire(ctx context.Context, o *mobj) error {
	if err := w.releaseAll(ctx, o); err != nil {
		return err
	}
	w.note("FORGET ino %d nlookup %d", o.ino, o.nlookup)
	if err := w.want("FORGET", w.c.Forget(ctx, o.nodeid, o.nlookup), 0); err != nil {
		return err
	}
	o.nlookup = 0
	return nil
}

func (w *client) releaseAll(ctx context.Context, o *mobj) error {
	if o.hasFH {
		if err := w.releaseFH(ctx, o); err != nil {
			return err
		}
	}
	if o.hasAFH {
		w.note("RELEASE ino %d append fh", o.ino)
		if err := w.want("RELEASE append", w.c.Release(ctx, o.nodeid, o.afh, unix.O_WRONLY|unix.O_APPEND, 0, 0), 0); err != nil {
			return err
		}
		o.hasAFH = false
	}
	if o.has {
		w.note("RELEASE ino %d probe fh", o.ino)
		if err := w.want("RELEASE probe", w.c.Release(ctx, o.nodeid, o.pfh, unix.O_RDWR, 0, 0), 0); err != nil {
			return err
		}
		o.has = false
	}
	return nil
}

// releaseFH drops o's locks (explicitly, so the model stays simple) and
// releases its main handle.
func (w *client) releaseFH(ctx context.Context, o *mobj) error {
	if o.flocked {
		w.note("SETLK(flock) ino %d unlock", o.ino)
		err := w.c.Setlk(ctx, o.nodeid, o.fh, o.owner, fuseclient.FileLock{Type: unix.F_UNLCK, End: fuseclient.OffsetMax}, fuseclient.LkFlock)
		if err := w.want("SETLK flock unlock", err, 0); err != nil {
			return err
		}
		o.flocked = false
	}
	if o.locks != [lockSpan]bool{} {
		w.note("SETLK ino %d unlock all", o.ino)
		err := w.c.Setlk(ctx, o.nodeid, o.fh, o.owner, fuseclient.FileLock{Type: unix.F_UNLCK, End: fuseclient.OffsetMax, PID: uint32(1000 + w.id)}, 0)
		if err := w.want("SETLK unlock all", err, 0); err != nil {
			return err
		}
		o.locks = [lockSpan]bool{}
	}
	w.note("RELEASE ino %d fh", o.ino)
	if err := w.want("RELEASE", w.c.Release(ctx, o.nodeid, o.fh, unix.O_RDWR, 0, o.owner), 0); err != nil {
		return err
	}
	o.hasFH = false
	return nil
}

func opRename(ctx context.Context, w *client) (bool, error) {
	from, o, ok := pick(w.rng, w.names, nil)
	if !ok {
		return false, nil
	}
	to := w.fresh("r")
	var victim *mobj
	if !o.dir && w.rng.Intn(2) == 0 {
		if name, v, ok := pick(w.rng, w.names, func(x *mobj) bool { return !x.dir && x != o }); ok {
			to, victim = name, v
		}
	}
	w.note("RENAME %s -> %s (replacing: %v)", from, to, victim != nil)
	if err := w.want("RENAME "+from+" "+to, w.c.Rename(ctx, w.dir.nodeid, from, w.dir.nodeid, to), 0); err != nil {
		return true, err
	}
	delete(w.names, from)
	w.names[to] = o
	if o.dir {
		o.path = filepath.Join(w.dir.path, to)
	} else {
		o.path = w.anyPath(o)
	}
	if victim != nil {
		if err := w.unlinked(ctx, victim); err != nil {
			return true, err
		}
	}
	return true, nil
}

func opLink(ctx context.Context, w *client) (bool, error) {
	if f, _ := w.countFiles(); f >= maxFiles {
		return false, nil
	}
	_, o, ok := pick(w.rng, w.names, isFile)
	if !ok {
		return false, nil
	}
	name := w.fresh("l")
	w.note("LINK ino %d -> %s", o.ino, name)
	ent, err := w.c.Link(ctx, o.nodeid, w.dir.nodeid, name)
	if err := w.want("LINK "+name, err, 0); err != nil {
		return true, err
	}
	o.nlink++
	o.nlookup++
	w.names[name] = o
	return true, w.checkEntry("LINK "+name, ent, o)
}

func opUnlink(ctx context.Context, w *client) (bool, error) {
	name, o, ok := pick(w.rng, w.names, isFile)
	if !ok {
		return false, nil
	}
	w.note("UNLINK %s (ino %d nlink %d)", name, o.ino, o.nlink)
	if err := w.want("UNLINK "+name, w.c.Unlink(ctx, w.dir.nodeid, name), 0); err != nil {
		return true, err
	}
	delete(w.names, name)
	return true, w.unlinked(ctx, o)
}

func opMkdir(ctx context.Context, w *client) (bool, error) {
	if _, d := w.countFiles(); d >= maxDirs {
		return false, nil
	}
	name := w.fresh("d")
	w.note("MKDIR %s", name)
	ent, err := w.c.Mkdir(ctx, w.dir.nodeid, name, 0o755, 0)
	if err := w.want("MKDIR "+name, err, 0); err != nil {
		return true, err
	}
	o := &mobj{dir: true, ino: ent.Attr.Ino, nodeid: ent.NodeID, nlookup: 1, nlink: 2, path: filepath.Join(w.dir.path, name)}
	if err := w.checkAttr("MKDIR "+name, ent.Attr, o); err != nil {
		return true, err
	}
	w.names[name] = o
	return true, nil
}

func opMkdirExists(ctx context.Context, w *client) (bool, error) {
	name, _, ok := pick(w.rng, w.names, nil)
	if !ok {
		return false, nil
	}
	w.note("MKDIR %s (exists)", name)
	_, err := w.c.Mkdir(ctx, w.dir.nodeid, name, 0o755, 0)
	return true, w.want("MKDIR existing "+name, err, unix.EEXIST)
}

func opRmdir(ctx context.Context, w *client) (bool, error) {
	name, o, ok := pick(w.rng, w.names, func(x *mobj) bool { return x.dir })
	if !ok {
		return false, nil
	}
	w.note("RMDIR %s", name)
	if err := w.want("RMDIR "+name, w.c.Rmdir(ctx, w.dir.nodeid, name), 0); err != nil {
		return true, err
	}
	delete(w.names, name)
	w.note("FORGET dir ino %d nlookup %d", o.ino, o.nlookup)
	if err := w.want("FORGET", w.c.Forget(ctx, o.nodeid, o.nlookup), 0); err != nil {
		return true, err
	}
	o.nlookup = 0
	return true, nil
}

func opSetxattr(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil || !w.xattrs {
		return false, nil
	}
	val := []byte(fmt.Sprintf("v%d-%d", w.id, w.rng.Int63()))
	var name string
	var flags uint32
	var want unix.Errno
	names := make([]string, 0, len(o.xattrs))
	for k := range o.xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	switch r := w.rng.Intn(6); {
	case len(names) > 0 && r < 2:
		name, flags = names[w.rng.Intn(len(names))], unix.XATTR_REPLACE
	case len(names) > 0 && r == 2:
		name, flags, want = names[w.rng.Intn(len(names))], unix.XATTR_CREATE, unix.EEXIST
	case len(names) >= 4:
		name, flags = names[w.rng.Intn(len(names))], 0
	default:
		name, flags = "user."+w.fresh("x"), unix.XATTR_CREATE
	}
	w.note("SETXATTR ino %d %s flags %d", o.ino, name, flags)
	if err := w.want("SETXATTR "+name, w.c.Setxattr(ctx, o.nodeid, name, val, flags), want); err != nil {
		return true, err
	}
	if want == 0 {
		o.xattrs[name] = val
	}
	return true, nil
}

func opGetxattr(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil || !w.xattrs {
		return false, nil
	}
	name, val, ok := pick(w.rng, o.xattrs, nil)
	if !ok || w.rng.Intn(5) == 0 {
		name, val = "user.missing", nil
	}
	w.note("GETXATTR ino %d %s", o.ino, name)
	got, _, err := w.c.Getxattr(ctx, o.nodeid, name, 256)
	if val == nil {
		return true, w.want("GETXATTR "+name, err, unix.ENODATA)
	}
	if err := w.want("GETXATTR "+name, err, 0); err != nil {
		return true, err
	}
	if !bytes.Equal(got, val) {
		return true, w.fail("GETXATTR "+name, "value %q, model %q", got, val)
	}
	return true, nil
}

func opSetlk(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil || !o.hasFH {
		return false, nil
	}
	start := w.rng.Intn(lockSpan - 1)
	end := start + w.rng.Intn(min(16, lockSpan-start))
	typ := uint32(unix.F_WRLCK)
	if w.rng.Intn(3) == 0 {
		typ = unix.F_UNLCK
	}
	w.note("SETLK ino %d [%d,%d] type %d", o.ino, start, end, typ)
	err := w.c.Setlk(ctx, o.nodeid, o.fh, o.owner, fuseclient.FileLock{Start: uint64(start), End: uint64(end), Type: typ, PID: uint32(1000 + w.id)}, 0)
	if err := w.want("SETLK", err, 0); err != nil {
		return true, err
	}
	for i := start; i <= end; i++ {
		o.locks[i] = typ == unix.F_WRLCK
	}
	return true, nil
}

// runs returns the locked ranges of o, merged as POSIX merges them.
func (o *mobj) runs() [][2]int {
	var out [][2]int
	for i := 0; i < lockSpan; i++ {
		if !o.locks[i] {
			continue
		}
		j := i
		for j+1 < lockSpan && o.locks[j+1] {
			j++
		}
		out = append(out, [2]int{i, j})
		i = j
	}
	return out
}

// opGetlk asks, through a second handle with another lock owner, whether a
// write lock on a range would conflict; the answer follows from the locks
// the model holds. The host then checks the same from its own open file.
func opGetlk(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil {
		return false, nil
	}
	if !o.has {
		w.note("OPEN ino %d O_RDWR (probe)", o.ino)
		open, err := w.c.Open(ctx, o.nodeid, unix.O_RDWR, 0)
		if err := w.want("OPEN probe", err, 0); err != nil {
			return true, err
		}
		o.pfh, o.has = open.FH, true
	}
	start := w.rng.Intn(lockSpan)
	end := start + w.rng.Intn(lockSpan-start)
	w.note("GETLK ino %d [%d,%d]", o.ino, start, end)
	got, err := w.c.Getlk(ctx, o.nodeid, o.pfh, o.probeOwner, fuseclient.FileLock{Start: uint64(start), End: uint64(end), Type: unix.F_WRLCK}, 0)
	if err := w.want("GETLK", err, 0); err != nil {
		return true, err
	}
	var overlapping [][2]int
	for _, r := range o.runs() {
		if r[1] >= start && r[0] <= end {
			overlapping = append(overlapping, r)
		}
	}
	if len(overlapping) == 0 {
		if got.Type != unix.F_UNLCK {
			return true, w.fail("GETLK", "[%d,%d] reports a %d lock [%d,%d]; the model holds %v", start, end, got.Type, got.Start, got.End, o.runs())
		}
	} else {
		match := false
		for _, r := range overlapping {
			match = match || (got.Start == uint64(r[0]) && got.End == uint64(r[1]))
		}
		if got.Type != unix.F_WRLCK || !match {
			return true, w.fail("GETLK", "[%d,%d] reports type %d [%d,%d]; the model holds write locks %v (locks lost across a crash?)",
				start, end, got.Type, got.Start, got.End, o.runs())
		}
	}
	if o.path != "" {
		if err := w.hostCheckLocks(o); err != nil {
			return true, err
		}
	}
	return true, nil
}

// hostCheckLocks checks o's POSIX locks and flock from a host open file
// description (F_OFD_GETLK, flock LOCK_NB): the worker's locks must be held
// by something that outlives it.
func (w *client) hostCheckLocks(o *mobj) error {
	p := filepath.Join(w.share, o.path)
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return w.fail("host lock check", "open %s: %v", p, err)
	}
	defer unix.Close(fd)
	for i := 0; i < lockSpan; i++ {
		l := unix.Flock_t{Type: unix.F_WRLCK, Whence: unix.SEEK_SET, Start: int64(i), Len: 1}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &l); err != nil {
			return w.fail("host lock check", "F_OFD_GETLK: %v", err)
		}
		if held := l.Type != unix.F_UNLCK; held != o.locks[i] {
			return w.fail("host lock check", "byte %d of %s: host sees lock type %d, model locked=%v (runs %v)", i, o.path, l.Type, o.locks[i], o.runs())
		}
	}
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case o.flocked && err == nil:
		unix.Flock(fd, unix.LOCK_UN)
		return w.fail("host lock check", "flock LOCK_EX|LOCK_NB on %s succeeded; the guest holds flock(LOCK_EX) on it (lost across a crash?)", o.path)
	case o.flocked && err != unix.EWOULDBLOCK:
		return w.fail("host lock check", "flock: %v", err)
	case !o.flocked && err != nil:
		return w.fail("host lock check", "flock LOCK_EX|LOCK_NB on %s: %v; the model holds no flock", o.path, err)
	case !o.flocked:
		unix.Flock(fd, unix.LOCK_UN)
	}
	return nil
}

func opFlock(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil || !o.hasFH {
		return false, nil
	}
	typ := uint32(unix.F_WRLCK)
	if o.flocked {
		typ = unix.F_UNLCK
	}
	w.note("SETLK(flock) ino %d type %d", o.ino, typ)
	err := w.c.Setlk(ctx, o.nodeid, o.fh, o.owner, fuseclient.FileLock{Type: typ, End: fuseclient.OffsetMax}, fuseclient.LkFlock)
	if err := w.want("SETLK flock", err, 0); err != nil {
		return true, err
	}
	o.flocked = typ == unix.F_WRLCK
	if o.path != "" {
		return true, w.hostCheckLocks(o)
	}
	return true, nil
}

func opReaddir(ctx context.Context, w *client) (bool, error) {
	w.note("OPENDIR+READDIR+RELEASEDIR c%d", w.id)
	open, err := w.c.Opendir(ctx, w.dir.nodeid, unix.O_RDONLY)
	if err := w.want("OPENDIR", err, 0); err != nil {
		return true, err
	}
	ents, err := w.c.ReaddirAll(ctx, w.dir.nodeid, open.FH, 1024)
	if err := w.want("READDIR", err, 0); err != nil {
		return true, err
	}
	if err := w.want("RELEASEDIR", w.c.Releasedir(ctx, w.dir.nodeid, open.FH), 0); err != nil {
		return true, err
	}
	got := map[string]uint64{}
	for _, d := range ents {
		if d.Name == "." || d.Name == ".." {
			continue
		}
		if _, dup := got[d.Name]; dup {
			return true, w.fail("READDIR", "%q listed twice", d.Name)
		}
		got[d.Name] = d.Ino
	}
	for name, o := range w.names {
		ino, ok := got[name]
		if !ok {
			return true, w.fail("READDIR", "%q missing (listing: %v)", name, keysOf(got))
		}
		if ino != o.ino {
			return true, w.fail("READDIR", "%q has ino %d, model %d", name, ino, o.ino)
		}
	}
	if len(got) != len(w.names) {
		return true, w.fail("READDIR", "listing %v, model %v", keysOf(got), keysOf(w.names))
	}
	return true, nil
}

func keysOf[T any](m map[string]T) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

func opLookup(ctx context.Context, w *client) (bool, error) {
	name, o, ok := pick(w.rng, w.names, nil)
	if !ok {
		return false, nil
	}
	w.note("LOOKUP %s", name)
	ent, err := w.c.Lookup(ctx, w.dir.nodeid, name)
	if err := w.want("LOOKUP "+name, err, 0); err != nil {
		return true, err
	}
	o.nlookup++
	return true, w.checkEntry("LOOKUP "+name, ent, o)
}

func opLookupMissing(ctx context.Context, w *client) (bool, error) {
	name := fmt.Sprintf("never%d", w.rng.Intn(1000))
	w.note("LOOKUP %s (missing)", name)
	_, err := w.c.Lookup(ctx, w.dir.nodeid, name)
	return true, w.want("LOOKUP missing", err, unix.ENOENT)
}

func (w *client) heldObjs() []*mobj {
	seen := map[*mobj]bool{}
	out := []*mobj{w.dir}
	for _, k := range keysOf(w.names) {
		if o := w.names[k]; !seen[o] {
			seen[o] = true
			out = append(out, o)
		}
	}
	return append(out, w.orphans...)
}

func opForget(ctx context.Context, w *client) (bool, error) {
	var cand []*mobj
	for _, o := range w.heldObjs() {
		if o.nlookup >= 2 {
			cand = append(cand, o)
		}
	}
	if len(cand) == 0 {
		return false, nil
	}
	o := cand[w.rng.Intn(len(cand))]
	k := 1 + uint64(w.rng.Int63n(int64(o.nlookup-1)))
	w.note("FORGET ino %d %d of %d", o.ino, k, o.nlookup)
	if err := w.want("FORGET", w.c.Forget(ctx, o.nodeid, k), 0); err != nil {
		return true, err
	}
	o.nlookup -= k
	return true, nil
}

func opGetattr(ctx context.Context, w *client) (bool, error) {
	objs := w.heldObjs()
	o := objs[w.rng.Intn(len(objs))]
	if o == w.dir {
		return false, nil
	}
	w.note("GETATTR ino %d", o.ino)
	a, err := w.c.Getattr(ctx, o.nodeid, nil)
	if err := w.want("GETATTR", err, 0); err != nil {
		return true, err
	}
	return true, w.checkAttr("GETATTR", a.Attr, o)
}

func opRelease(ctx context.Context, w *client) (bool, error) {
	o := w.anyFile()
	if o == nil {
		return false, nil
	}
	if !o.hasFH {
		w.note("OPEN ino %d O_RDWR", o.ino)
		open, err := w.c.Open(ctx, o.nodeid, unix.O_RDWR, 0)
		if err := w.want("OPEN", err, 0); err != nil {
			return true, err
		}
		o.fh, o.hasFH = open.FH, true
		return true, nil
	}
	for _, x := range w.orphans {
		if x == o {
			return false, nil // orphans keep their handle until retired
		}
	}
	return true, w.releaseAll(ctx, o)
}

func opRetireOrphan(ctx context.Context, w *client) (bool, error) {
	if len(w.orphans) == 0 {
		return false, nil
	}
	o := w.orphans[0]
	w.orphans = w.orphans[1:]
	return true, w.retire(ctx, o)
}

// verifyHost compares the host's view of the subtree with the model: names,
// inode numbers, link counts, contents, xattrs and locks.
func (w *client) verifyHost() error {
	dir := filepath.Join(w.share, w.dir.path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return w.fail("host check", "%v", err)
	}
	got := map[string]bool{}
	for _, e := range ents {
		got[e.Name()] = true
	}
	for _, name := range keysOf(w.names) {
		o := w.names[name]
		p := filepath.Join(dir, name)
		if !got[name] {
			return w.fail("host check", "%s missing on the host (host has %v)", name, keysOf(got))
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return w.fail("host check", "%v", err)
		}
		if st.Ino != o.ino || uint32(st.Nlink) != o.nlink {
			return w.fail("host check", "%s: ino %d nlink %d, model ino %d nlink %d", name, st.Ino, st.Nlink, o.ino, o.nlink)
		}
		if o.dir {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return w.fail("host check", "%v", err)
		}
		if !bytes.Equal(b, o.data) {
			return w.fail("host check", "%s: content %s", name, diffDesc(b, o.data))
		}
		for k, v := range o.xattrs {
			buf := make([]byte, 256)
			n, err := unix.Getxattr(p, k, buf)
			if err != nil || !bytes.Equal(buf[:n], v) {
				return w.fail("host check", "%s: xattr %s = %q (%v), model %q", name, k, buf[:max(n, 0)], err, v)
			}
		}
		sz, _ := unix.Listxattr(p, nil)
		buf := make([]byte, max(sz, 1))
		sz, _ = unix.Listxattr(p, buf)
		var user []string
		for _, x := range strings.Split(strings.TrimRight(string(buf[:max(sz, 0)]), "\x00"), "\x00") {
			if strings.HasPrefix(x, "user.") {
				user = append(user, x)
			}
		}
		if len(user) != len(o.xattrs) {
			return w.fail("host check", "%s: user xattrs %v, model %v", name, user, keysOf(o.xattrs))
		}
	}
	if len(got) != len(w.names) {
		return w.fail("host check", "host has %v, model %v", keysOf(got), keysOf(w.names))
	}
	for _, o := range w.fileObjs() {
		if o.path != "" {
			if err := w.hostCheckLocks(o); err != nil {
				return err
			}
		}
	}
	return nil
}

// finish checks every held nodeid and handle once more through FUSE, then
// unlocks, releases and forgets everything the client holds (its directory
// last), so the daemon's inode and handle tables must end empty.
func (w *client) finish(ctx context.Context) error {
	for _, o := range w.heldObjs()[1:] {
		w.note("GETATTR ino %d (final)", o.ino)
		a, err := w.c.Getattr(ctx, o.nodeid, nil)
		if err := w.want("final GETATTR", err, 0); err != nil {
			return err
		}
		if err := w.checkAttr("final GETATTR", a.Attr, o); err != nil {
			return err
		}
		if o.hasFH {
			buf := make([]byte, len(o.data)+512)
			n, err := w.c.Read(ctx, o.nodeid, o.fh, 0, buf)
			if err := w.want("final READ", err, 0); err != nil {
				return err
			}
			if !bytes.Equal(buf[:n], o.data) {
				return w.fail("final READ", "ino %d: %s", o.ino, diffDesc(buf[:n], o.data))
			}
		}
	}
	for _, o := range w.heldObjs()[1:] {
		if err := w.retire(ctx, o); err != nil {
			return err
		}
	}
	w.orphans = nil
	return nil
}

// workload runs clients until stop is closed, then verifies and cleans up.
type workload struct {
	clients []*client
	errs    chan error
	wg      sync.WaitGroup
	stop    chan struct{}
	started time.Time
}

// newWorkload creates n clients spread over the request queues, each with its
// directory c<i> made (MKDIR) before any kill.
func newWorkload(ctx context.Context, e *Env, n int, seed int64, xattrs bool) (*workload, error) {
	wl := &workload{errs: make(chan error, n), stop: make(chan struct{})}
	nq := e.FE.NumQueues() - 1
	for i := 0; i < n; i++ {
		w := &client{id: i, queue: 1 + i%nq, share: e.Dir, rng: rand.New(rand.NewSource(seed + int64(i)*7919)),
			names: map[string]*mobj{}, ops: map[string]int{}, xattrs: xattrs}
		w.c = e.C.OnQueue(w.queue)
		name := fmt.Sprintf("c%d", i)
		ent, err := w.c.Mkdir(ctx, 1, name, 0o755, 0)
		if err != nil {
			return nil, fmt.Errorf("MKDIR %s: %w", name, err)
		}
		w.dir = &mobj{dir: true, ino: ent.Attr.Ino, nodeid: ent.NodeID, nlookup: 1, nlink: 2, path: name}
		wl.clients = append(wl.clients, w)
	}
	return wl, nil
}

// run starts the clients; each steps until stop, then verifies the host view
// and finishes. The first failure of each client goes to errs.
func (wl *workload) run(ctx context.Context) {
	wl.started = time.Now()
	for _, w := range wl.clients {
		wl.wg.Add(1)
		go func() {
			defer wl.wg.Done()
			for {
				select {
				case <-wl.stop:
					if err := w.verifyHost(); err != nil {
						wl.errs <- err
						return
					}
					if err := w.finish(ctx); err != nil {
						wl.errs <- err
					}
					return
				default:
				}
				if err := w.step(ctx); err != nil {
					wl.errs <- err
					return
				}
			}
		}()
	}
}

// wait stops the clients and returns their failures.
func (wl *workload) wait() []error {
	close(wl.stop)
	wl.wg.Wait()
	close(wl.errs)
	var out []error
	for err := range wl.errs {
		out = append(out, err)
	}
	return out
}

func (wl *workload) summary() (reqs int, ops map[string]int) {
	ops = map[string]int{}
	for _, w := range wl.clients {
		reqs += w.reqs
		for k, v := range w.ops {
			ops[k] += v
		}
	}
	return
}

func fmtOps(ops map[string]int) string {
	var b strings.Builder
	for _, k := range keysOf(ops) {
		fmt.Fprintf(&b, " %s=%d", k, ops[k])
	}
	return b.String()
}
