package passthrough

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vfsd/engine/fuse"
	"vfsd/engine/journal"
	"vfsd/maptable"
)

// Options configures an FS.
type Options struct {
	Root  string // shared directory on the host
	Cache string // "auto" (default), "always", "never" or "metadata"
	Xattr bool   // serve extended attributes (else the xattr opcodes answer ENOSYS)
	// Writeback offers FUSE_WRITEBACK_CACHE: the guest caches writes and
	// sends them with explicit offsets (files are then opened O_RDWR and
	// without O_APPEND on the host).
	Writeback bool
	// AllowDirectIO passes the guest's O_DIRECT to the host open; by default
	// it is dropped (guest buffers are not aligned for the host's O_DIRECT).
	AllowDirectIO bool
	MaxInodes     int // inode map slots (default 1<<20)
	MaxHandles    int // handle map slots (default 1<<16)
	// MaxLockFDs caps the open file descriptions kept for POSIX lock
	// owners, one per (inode, lock owner) holding locks (default 1024);
	// a new owner past it answers ENOLCK. See lock.go.
	MaxLockFDs int
	// Session, when set, is a session negotiated by an earlier worker: the FS
	// starts initialized with it (the guest does not send INIT again). On
	// resume the session persisted in the journal is used instead.
	Session *fuse.Session

	// Queues is the number of virtqueues (hiprio + request queues) whose
	// requests the journal covers and whose lookup counters inode records
	// hold (default 2, at most journal.MaxQueues). QueueSize is the number
	// of descriptor heads per queue (default 1024). A request from outside
	// that geometry is served without exactly-once guarantees.
	Queues, QueueSize int
	// FDStore keeps the state memfds and the fds that must survive a
	// restart (see state.go); nil in plain virtiofsd mode.
	FDStore FDStore
	// Resume, when non-nil, starts from the state a previous worker left:
	// the fds the store handed back, by name. New maps the state memfds
	// (InodesFDName, HandlesFDName, journal.FDName) and restores the
	// session; inodes and handles are loaded on first use. The FS owns
	// every fd in the map (those never used are closed by Close). A map
	// without all three state memfds (a predecessor killed before it stored
	// them had served nothing) starts afresh, with a warning: the stale fds
	// are closed and their names removed from the store.
	Resume map[string]int
	// Logger gets warnings (default slog.Default()).
	Logger *slog.Logger
	// ProcSelfFD, when > 0, is an O_PATH fd of /proc/self/fd opened before
	// a chroot that left no /proc in the root (--sandbox=chroot); the FS
	// takes it over and runs path-form calls through a procThread. Else
	// the FS opens /proc/self/fd itself.
	ProcSelfFD int
	// EagerInodes opens every new inode's O_PATH fd at once, as virtiofsd
	// does (--inode-file-handles=never). Otherwise, where this process may
	// open_by_handle_at, a new inode is recorded with its file handle and
	// opened at its first use (see inode); elsewhere eager it is.
	EagerInodes bool
}

// Timeouts and open flags per cache mode.
type cachePolicy struct {
	ttl       uint64 // entry and attr validity, seconds
	fileFlags uint32 // fuse_open_out.open_flags for files
	dirFlags  uint32 // for directories
}

var cachePolicies = map[string]cachePolicy{
	"":         {ttl: 1},
	"auto":     {ttl: 1},
	"always":   {ttl: 86400, fileFlags: fuse.FopenKeepCache, dirFlags: fuse.FopenKeepCache | fuse.FopenCacheDir},
	"never":    {ttl: 0, fileFlags: fuse.FopenDirectIO, dirFlags: fuse.FopenDirectIO},
	"metadata": {ttl: 86400, fileFlags: fuse.FopenDirectIO},
}

// Negotiation limits.
const (
	maxWrite      = 1 << 20
	maxPages      = 256
	maxBackground = 64
	congestion    = 48
	minMinor      = 12 // oldest minor whose struct sizes we emit

	handleRecSize = 16 // see inode.go
)

// offered are the INIT flags a passthrough can honour; FlagWritebackCache is
// added when Options.Writeback is set.
const offered = fuse.FlagAsyncRead | fuse.FlagPosixLocks | fuse.FlagAtomicOTrunc |
	fuse.FlagExportSupport | fuse.FlagBigWrites | fuse.FlagDontMask | fuse.FlagFlockLocks |
	fuse.FlagAutoInvalData | fuse.FlagDoReaddirplus | fuse.FlagReaddirplusAuto |
	fuse.FlagAsyncDIO | fuse.FlagParallelDirops | fuse.FlagMaxPages | fuse.FlagCacheSymlinks |
	fuse.FlagInitExt | fuse.FlagSetxattrExt | fuse.FlagHandleKillprivV2 | fuse.FlagCreateSuppGroup

// FS is a passthrough filesystem over one host directory. It implements
// fuse.Handler and is safe for concurrent use by all queue threads and the
// dataplane's helper goroutines for Blocking opcodes.
//
// Lock order (outer first): dirState.mu → imu → maptable's own lock;
// hmu → maptable; smu and lmu are leaves. No lock is held across a
// syscall on guest-named paths except dirState.mu (READDIR of one handle).
type FS struct {
	opts   Options
	policy cachePolicy
	procfd int // O_PATH to /proc/self/fd, for re-opening O_PATH fds
	// procThread runs path-form xattr calls when the root has no /proc
	// (Options.ProcSelfFD); nil: "/proc/self/fd/N" works as an absolute path.
	procThread *procThread
	// mountfd is the root opened O_RDONLY: open_by_handle_at's mount fd
	// (it refuses O_PATH fds).
	mountfd int
	euid    uint32
	egid    uint32
	// groups are the process's supplementary groups, restored after a
	// request ran with the creator's (asCreator).
	groups []uint32

	root    *inode
	inodes  *maptable.Table
	handles *maptable.Table
	journal *journal.Journal
	nq      int // lookup counters per inode record (queues)
	irec    int // inode record size
	store   FDStore
	sq      *storeQueue // the FS's own names go through it; nil without store
	// lazy: resumed from a previous worker's state; records may exist
	// that have no in-memory inode or handle yet.
	lazy bool
	// deferOpen: inodes can be opened by file handle (canOpenByHandle), so
	// a new inode is recorded without an fd and opened on first use
	// (openDeferredLocked); many are never used (READDIRPLUS entries).
	deferOpen bool
	storeErrs atomic.Uint64
	// lookupScore picks lookupAt's syscall order (see there).
	lookupScore atomic.Int32
	dirCache    atomic.Int64 // bytes in dirState.rest of all handles

	rmu sync.Mutex
	// +checklocks:rmu
	resumeFDs map[string]int

	imu sync.RWMutex
	// +checklocks:imu
	islots slotTable[inode] // by maptable slot; root is not here (nodeid 1)
	// +checklocks:imu
	byKey map[maptable.Key]*inode

	hmu sync.RWMutex
	// +checklocks:hmu
	hslots slotTable[handle]

	smu sync.Mutex
	// +checklocks:smu
	sess   fuse.Session
	flags  atomic.Uint64 // negotiated INIT flags, readable without smu
	inited atomic.Bool

	locks lockState
	plk   plocks

	bufs sync.Pool // *scratch
}

// scratch is per-call memory, pooled so that handlers do not allocate.
type scratch struct {
	iov  []unix.Iovec
	buf  []byte // 64 KiB + slack: readlink, xattrs, getdents
	out  []byte // READDIR reply
	name [24]byte
}

const (
	scratchBuf  = fuse.XattrSizeMax + 4096
	maxReaddir  = 128 << 10
	getdentsBuf = 32 << 10
)

func (fs *FS) getScratch() *scratch  { return fs.bufs.Get().(*scratch) }
func (fs *FS) putScratch(s *scratch) { fs.bufs.Put(s) }

// New opens o.Root and creates the inode and handle maps. It sets the
// process umask to 0: modes reach the host exactly as the guest computed
// them (the guest's umask is applied per request).
func New(o Options) (*FS, error) {
	pol, ok := cachePolicies[o.Cache]
	if !ok {
		return nil, fmt.Errorf("passthrough: unknown cache mode %q", o.Cache)
	}
	if o.MaxInodes <= 0 {
		o.MaxInodes = 1 << 20
	}
	if o.MaxHandles <= 0 {
		o.MaxHandles = 1 << 16
	}
	if o.MaxLockFDs <= 0 {
		o.MaxLockFDs = 1024
	}
	if o.Queues <= 0 {
		o.Queues = 2
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	fs := &FS{opts: o, policy: pol, procfd: -1, mountfd: -1, byKey: make(map[maptable.Key]*inode),
		euid: uint32(unix.Geteuid()), egid: uint32(unix.Getegid()), store: o.FDStore,
		nq: o.Queues, irec: recCnt + 8*o.Queues}
	if o.FDStore != nil {
		fs.sq = newStoreQueue(o.FDStore)
	}
	fs.bufs.New = func() any {
		return &scratch{buf: make([]byte, scratchBuf), iov: make([]unix.Iovec, 0, 64)}
	}
	if gs, err := unix.Getgroups(); err == nil {
		for _, g := range gs {
			fs.groups = append(fs.groups, uint32(g))
		}
	}
	fs.locks.init()
	fs.plk.byInode = make(map[uint64]map[uint64]*plock)
	unix.Umask(0)

	var err error
	fail := func(what string, e error) (*FS, error) {
		fs.Close()
		return nil, fmt.Errorf("passthrough: %s: %w", what, e)
	}
	if o.ProcSelfFD > 0 {
		fs.procfd = o.ProcSelfFD
		if fs.procThread, err = startProcThread(fs.procfd); err != nil {
			return fail("proc thread", err)
		}
	} else if fs.procfd, err = unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return fail("open /proc/self/fd", err)
	}
	rootfd, err := unix.Open(o.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("open root "+o.Root, err)
	}
	var st unix.Statx_t
	if err := statxFd(rootfd, &st); err != nil {
		unix.Close(rootfd)
		return fail("statx root", err)
	}
	fs.root = &inode{key: keyOf(&st), typ: unix.S_IFDIR}
	fs.root.fd = rootfd
	if fs.mountfd, err = openat(rootfd, dotName[:1], unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return fail("open root", err)
	}
	byHandle := fs.canOpenByHandle(rootfd)
	fs.deferOpen = byHandle && !o.EagerInodes
	if fs.sq != nil {
		fs.sq.lazy = byHandle
	}
	if err := fs.openState(&o); err != nil {
		return fail("state", err)
	}
	// Directories of the slot tables (16 KiB for 1<<20 inode slots), here
	// rather than on a queue thread's first request.
	fs.islots.init(fs.inodes.Cap()/9*10 + slotPage)
	fs.hslots.init(fs.handles.Cap()/9*10 + slotPage)
	if fs.lazy {
		// The root record must be the one this shared directory had.
		id, ok := fs.inodes.Lookup(fs.root.key)
		if !ok {
			return fail("resume", fmt.Errorf("shared directory %s is not the one the state describes", o.Root))
		}
		fs.root.tid = id
		if b, ok := fs.journal.Session(); ok {
			s, ok := decodeSession(b)
			if !ok {
				return fail("resume", errors.New("corrupt session record"))
			}
			fs.setSession(s)
		}
		fs.resumeLocks()
		fs.sweepOrphans()
		fs.flushAll() // the removes of what the predecessor left over
		return fs, nil
	}
	var buf [recMax]byte
	rec := fs.recScratch(&buf)
	var fhb fileHandle
	fh := &fhb
	if nameToHandle(rootfd, fh) != nil {
		fh = nil
	}
	fs.encodeInodeRec(rec, fs.root, fh)
	if fs.root.tid, err = fs.inodes.Insert(fs.root.key, rec); err != nil {
		return fail("root record", err)
	}
	fs.byKey[fs.root.key] = fs.root
	if o.Session != nil && o.Session.Initialized {
		fs.setSession(*o.Session)
	}
	if err := fs.storeState(); err != nil {
		return fail("fd store", err)
	}
	return fs, nil
}

// Session returns the negotiated session (Initialized false before INIT and
// after DESTROY), for the worker to persist.
func (fs *FS) Session() fuse.Session {
	fs.smu.Lock()
	defer fs.smu.Unlock()
	return fs.sess
}

func (fs *FS) setSession(s fuse.Session) {
	fs.smu.Lock()
	fs.sess = s
	if fs.journal != nil {
		var b [sessionRecSize]byte
		encodeSession(b[:], &s)
		fs.journal.SetSession(b[:])
	}
	fs.smu.Unlock()
	fs.flags.Store(s.Flags)
	fs.inited.Store(s.Initialized)
}

func (fs *FS) has(flag uint64) bool { return fs.flags.Load()&flag != 0 }

// TableStats reports the inode and handle maps' entries and capacities (the
// root's record included), for the worker's metrics. Safe for concurrent
// use with requests; zero after Close.
func (fs *FS) TableStats() (inodes, inodesCap, handles, handlesCap int) {
	fs.imu.RLock()
	if t := fs.inodes; t != nil {
		inodes, inodesCap = t.Len(), t.Cap()
	}
	fs.imu.RUnlock()
	fs.hmu.RLock()
	if t := fs.handles; t != nil {
		handles, handlesCap = t.Len(), t.Cap()
	}
	fs.hmu.RUnlock()
	return
}

// Close releases every fd and both maps. Requests must have stopped.
func (fs *FS) Close() error {
	fs.flushAll() // queued removes and lazy stores
	fs.locks.cancelAll()
	fs.dropAllLocks(false) // the store's copies keep the locks for a successor
	fs.hmu.Lock()
	fs.hslots.each(func(_ uint32, h *handle) { fs.uncacheDir(h); h.kill() })
	fs.hslots.reset()
	fs.hmu.Unlock()
	fs.imu.Lock()
	fs.islots.each(func(_ uint32, in *inode) { in.kill() })
	fs.islots.reset()
	clear(fs.byKey)
	fs.imu.Unlock()
	var errs []error
	if fs.root != nil {
		fs.root.kill()
		fs.root = nil
	}
	if fs.procThread != nil {
		fs.procThread.stop()
		fs.procThread = nil
	}
	if fs.procfd >= 0 {
		unix.Close(fs.procfd)
		fs.procfd = -1
	}
	if fs.mountfd >= 0 {
		unix.Close(fs.mountfd)
		fs.mountfd = -1
	}
	// (Under the locks: TableStats may run meanwhile.)
	fs.imu.Lock()
	if fs.inodes != nil {
		errs = append(errs, fs.inodes.Close())
		fs.inodes = nil
	}
	fs.imu.Unlock()
	fs.hmu.Lock()
	if fs.handles != nil {
		errs = append(errs, fs.handles.Close())
		fs.handles = nil
	}
	fs.hmu.Unlock()
	if fs.journal != nil {
		errs = append(errs, fs.journal.Close())
		fs.journal = nil
	}
	fs.rmu.Lock()
	for name, fd := range fs.resumeFDs {
		unix.Close(fd)
		delete(fs.resumeFDs, name)
	}
	fs.rmu.Unlock()
	return errors.Join(errs...)
}

// opFunc handles one opcode; arg is the request's bytes after the in header
// (extensions stripped), at least the op's minimum length.
type opFunc func(fs *FS, x txn, req *fuse.Request, rep *fuse.Reply, arg []byte)

type opEntry struct {
	fn  opFunc
	min int // fixed argument bytes required
}

// ops is the dispatch table, indexed by opcode. Missing entries answer ENOSYS.
var ops = [fuse.OpMax]opEntry{
	fuse.OpInit:          {(*FS).opInit, fuse.InitInCompatSize},
	fuse.OpDestroy:       {(*FS).opDestroy, 0},
	fuse.OpLookup:        {(*FS).opLookup, 0},
	fuse.OpForget:        {(*FS).opForget, fuse.ForgetInSize},
	fuse.OpBatchForget:   {(*FS).opBatchForget, fuse.BatchForgetInSize},
	fuse.OpGetattr:       {(*FS).opGetattr, 0}, // 7.9+ sends fuse_getattr_in; tolerate older
	fuse.OpSetattr:       {(*FS).opSetattr, fuse.SetattrInSize},
	fuse.OpStatx:         {(*FS).opStatx, fuse.StatxInSize},
	fuse.OpReadlink:      {(*FS).opReadlink, 0},
	fuse.OpSymlink:       {(*FS).opSymlink, 0},
	fuse.OpMknod:         {(*FS).opMknod, fuse.MknodInSize},
	fuse.OpMkdir:         {(*FS).opMkdir, fuse.MkdirInSize},
	fuse.OpUnlink:        {(*FS).opUnlink, 0},
	fuse.OpRmdir:         {(*FS).opRmdir, 0},
	fuse.OpRename:        {(*FS).opRename, fuse.RenameInSize},
	fuse.OpRename2:       {(*FS).opRename2, fuse.Rename2InSize},
	fuse.OpLink:          {(*FS).opLink, fuse.LinkInSize},
	fuse.OpOpen:          {(*FS).opOpen, fuse.OpenInSize},
	fuse.OpCreate:        {(*FS).opCreate, fuse.CreateInSize},
	fuse.OpTmpfile:       {(*FS).opTmpfile, fuse.CreateInSize},
	fuse.OpRead:          {(*FS).opRead, fuse.ReadInSize},
	fuse.OpWrite:         {(*FS).opWrite, fuse.WriteInSize},
	fuse.OpFlush:         {(*FS).opFlush, fuse.FlushInSize},
	fuse.OpRelease:       {(*FS).opRelease, fuse.ReleaseInSize},
	fuse.OpFsync:         {(*FS).opFsync, fuse.FsyncInSize},
	fuse.OpOpendir:       {(*FS).opOpendir, fuse.OpenInSize},
	fuse.OpReaddir:       {(*FS).opReaddir, fuse.ReadInSize},
	fuse.OpReaddirplus:   {(*FS).opReaddirplus, fuse.ReadInSize},
	fuse.OpReleasedir:    {(*FS).opReleasedir, fuse.ReleaseInSize},
	fuse.OpFsyncdir:      {(*FS).opFsyncdir, fuse.FsyncInSize},
	fuse.OpStatfs:        {(*FS).opStatfs, 0},
	fuse.OpAccess:        {(*FS).opAccess, fuse.AccessInSize},
	fuse.OpFallocate:     {(*FS).opFallocate, fuse.FallocateInSize},
	fuse.OpLseek:         {(*FS).opLseek, fuse.LseekInSize},
	fuse.OpCopyFileRange: {(*FS).opCopyFileRange, fuse.CopyFileRangeInSize},
	fuse.OpSyncfs:        {(*FS).opSyncfs, 0},
	fuse.OpSetxattr:      {(*FS).opSetxattr, fuse.SetxattrInCompat},
	fuse.OpGetxattr:      {(*FS).opGetxattr, fuse.GetxattrInSize},
	fuse.OpListxattr:     {(*FS).opListxattr, fuse.GetxattrInSize},
	fuse.OpRemovexattr:   {(*FS).opRemovexattr, 0},
	fuse.OpGetlk:         {(*FS).opGetlk, fuse.LkInSize},
	fuse.OpSetlk:         {(*FS).opSetlk, fuse.LkInSize},
	fuse.OpSetlkw:        {(*FS).opSetlkw, fuse.LkInSize},
	fuse.OpInterrupt:     {(*FS).opInterrupt, fuse.InterruptInSize},
}

// noReplyOp reports opcodes that never get an answer.
func noReplyOp(op uint32) bool {
	return op == fuse.OpForget || op == fuse.OpBatchForget || op == fuse.OpInterrupt
}

// recoverPanics is cleared by tests so that a panic fails them loudly.
var recoverPanics = true

// Handle serves one request. It always leaves rep Done.
func (fs *FS) Handle(req *fuse.Request, rep *fuse.Reply) {
	if recoverPanics {
		defer func() {
			if recover() != nil {
				rep.Error(unix.EIO)
			}
		}()
	}
	op := req.Opcode
	arg := req.Arg
	if ext := int(req.TotalExtlen) * 8; ext > 0 {
		// Extensions (security context, supplementary group) are only sent
		// when negotiated, and we negotiate none: strip, never interpret.
		if ext > len(arg) || op == fuse.OpWrite {
			fs.fail(rep, op, unix.EINVAL)
			return
		}
		arg = arg[:len(arg)-ext]
	}
	if op >= fuse.OpMax || ops[op].fn == nil {
		fs.fail(rep, op, unix.ENOSYS)
		return
	}
	if !fs.inited.Load() && op != fuse.OpInit {
		fs.fail(rep, op, unix.EIO)
		return
	}
	e := &ops[op]
	if len(arg) < e.min {
		fs.fail(rep, op, unix.EINVAL)
		return
	}
	var x txn
	if fs.prepare(&x, req, rep) {
		return // replayed
	}
	e.fn(fs, x, req, rep, arg)
	if !rep.Done() {
		rep.Error(unix.EIO)
	}
}

// fail answers an error, or nothing for opcodes that get no reply.
func (fs *FS) fail(rep *fuse.Reply, op uint32, e unix.Errno) {
	if noReplyOp(op) {
		rep.NoReply()
		return
	}
	rep.Error(e)
}

// errno maps any error to the errno the guest sees (EIO when unknown).
func errno(err error) unix.Errno {
	if e, ok := err.(unix.Errno); ok { // most: no allocation
		return e
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, maptable.ErrFull):
		return unix.ENFILE
	case errors.Is(err, maptable.ErrStale):
		return unix.ESTALE
	}
	return unix.EIO
}

func (fs *FS) opInit(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	var in fuse.InitIn
	if !fuse.ParsePrefix(arg, &in, fuse.InitInCompatSize) {
		rep.Error(unix.EINVAL)
		return
	}
	var pre [journal.PreWords]uint64
	x.begin(&pre)
	if fs.inited.Load() && x.res == nil {
		// (A resubmitted INIT whose session was persisted answers again.)
		x.fail(rep, unix.EPROTO)
		return
	}
	out := fuse.InitOut{Major: fuse.KernelVersion, Minor: fuse.KernelMinorVersion}
	if in.Major > fuse.KernelVersion {
		// The guest retries with our major.
		x.ok(rep, fuse.Bytes(&out)[:fuse.InitOutCompat5], nil)
		return
	}
	if in.Major < fuse.KernelVersion || in.Minor < minMinor {
		x.fail(rep, unix.EPROTO)
		return
	}
	out.Minor = min(in.Minor, fuse.KernelMinorVersion)
	guest := uint64(in.Flags)
	if in.Flags&fuse.FlagInitExt != 0 && len(arg) >= 20 {
		guest |= uint64(in.Flags2) << 32
	}
	offer := uint64(offered)
	if fs.opts.Writeback {
		offer |= fuse.FlagWritebackCache
	}
	neg := guest & offer
	out.Flags = uint32(neg)
	out.Flags2 = uint32(neg >> 32)
	out.MaxReadahead = in.MaxReadahead
	out.MaxBackground = maxBackground
	out.CongestionThreshold = congestion
	out.MaxWrite = maxWrite
	out.TimeGran = 1
	out.MaxPages = maxPages
	size := fuse.InitOutSize
	if out.Minor < 23 {
		size = fuse.InitOutCompat22
	}
	fs.setSession(fuse.Session{Major: out.Major, Minor: out.Minor, Flags: neg,
		MaxReadahead: in.MaxReadahead, MaxWrite: maxWrite, MaxPages: maxPages, Initialized: true})
	x.ok(rep, fuse.Bytes(&out)[:size], nil)
}

// opDestroy ends the session: pending lock waits end, every lock owner's fd
// and every handle is closed
// and every inode but the root forgotten (records not loaded since a
// restart included, and their fds in the store). A new INIT may follow
// (remount). Idempotent: a resubmitted DESTROY does it again.
func (fs *FS) opDestroy(x txn, req *fuse.Request, rep *fuse.Reply, arg []byte) {
	fs.locks.cancelAll()
	fs.dropAllLocks(true)
	// Records of loaded handles and inodes are deleted from memory's view;
	// maptable.Range (which reads the memfd's written pages) runs only when
	// records remain that were never loaded since a restart.
	fs.hmu.Lock()
	fs.hslots.each(func(_ uint32, h *handle) {
		fs.handles.Delete(h.id)
		if fs.store != nil {
			fs.sq.remove(fhName(uint64(h.id)))
		}
		fs.uncacheDir(h)
		h.kill()
	})
	fs.hslots.reset()
	var ids []maptable.ID
	if fs.lazy && fs.handles.Len() > 0 {
		fs.handles.Range(func(id maptable.ID, _ maptable.Key, _ []byte) bool {
			ids = append(ids, id)
			return true
		})
	}
	for _, id := range ids {
		fs.handles.Delete(id)
		if fs.store != nil {
			fs.sq.remove(fhName(uint64(id)))
		}
	}
	fs.hmu.Unlock()
	fs.imu.Lock()
	fs.islots.each(func(_ uint32, in *inode) {
		fs.inodes.Delete(in.tid)
		if in.flags&recKept != 0 && fs.store != nil {
			fs.sq.remove(inoName(uint64(in.tid)))
		}
		in.kill()
	})
	fs.islots.reset()
	clear(fs.byKey)
	fs.byKey[fs.root.key] = fs.root
	ids = ids[:0]
	var kept []bool
	if fs.lazy && fs.inodes.Len() > 1 {
		fs.inodes.Range(func(id maptable.ID, _ maptable.Key, val []byte) bool {
			if id != fs.root.tid {
				ids = append(ids, id)
				kept = append(kept, binary.LittleEndian.Uint32(val[recFlags:])&recKept != 0)
			}
			return true
		})
	}
	for i, id := range ids {
		fs.inodes.Delete(id)
		if kept[i] && fs.store != nil {
			fs.sq.remove(inoName(uint64(id)))
		}
	}
	fs.imu.Unlock()
	fs.setSession(fuse.Session{})
	rep.Ok()
}
