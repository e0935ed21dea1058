package passthrough

import (
	"golang.org/x/sys/unix"

	"vfsd/engine/crashpoint"
	"vfsd/engine/fuse"
	"vfsd/engine/journal"
	"vfsd/maptable"
)

// Exactly-once results across worker crashes.
//
// A request the dataplane resubmits after a restart (fuse.Request.Resumed)
// may have had all, some or none of its effects before the old worker died.
// Every opcode has one rule, in the table below, saying how such a request
// is answered so that the guest sees what a crash-free run would have
// answered. The journal entry of (Queue, Head) tells the phase:
//
//   - Free (no whole begin record, or one of another request): nothing
//     happened, execute normally.
//   - Done: replay the stored errno and reply bytes, never re-execute.
//   - Started: the opcode's started-rule below, using the pre-state the
//     begin record holds and the ref record (reference counts).
//
// Reference counts are exact: each inode record has one lookup counter per
// queue (nlookup split per queue; the total is the sum; the inode is freed
// when it reaches 0). A queue's counter is changed only by that queue's
// thread (the counting opcodes are not Blocking), so before changing it a
// request writes the counter's value to its ref record, and a resubmitted
// request, served on the same queue before any new request of that queue,
// knows its change happened exactly when the counter is pre+1 (pre-n for
// FORGET), the inode record being the one the ref record names. A torn or
// stale ref record means the change did not happen (it is written first).
//
// Rule kinds:
//
//	idempotent  re-execute: same effect, same answer (modulo timestamps).
//	ref         LOOKUP: the ref rule only.
//	forget      FORGET, BATCH_FORGET: per entry, a progress word (entries
//	            before it applied) and the ref rule (counter == pre-n, or
//	            the record gone: applied).
//	make        MKDIR, MKNOD, SYMLINK: pre = start time (coarse realtime,
//	            the clock of file timestamps). Started: re-execute; EEXIST is
//	            ours when the entry's birth time (ctime without btime) is not
//	            before the start, its owner is the requester, its type is the
//	            requested one (and a symlink's target / a device's rdev
//	            match): then answer the entry (ref rule), else EEXIST.
//	link        LINK: pre = start, source key. EEXIST is ours when the name
//	            holds the source inode.
//	remove      UNLINK, RMDIR: pre = the target's key (statx before). Started:
//	            the name gone, or holding another inode → success (our unlink
//	            happened; never remove a newer file); holding the target →
//	            re-execute.
//	rename      RENAME, RENAME2: pre = source and destination keys. Started:
//	            applied when the new name holds the source inode and the old
//	            name does not (EXCHANGE: the names hold each other's inodes)
//	            → success; else re-execute.
//	open        OPEN, OPENDIR: handle records are keyed by (queue, head,
//	            journal generation, unique); a resubmitted open finds its
//	            handle with one lookup and answers that fh (its fd is in the
//	            fd store, "fh.<id>"; a record whose fd never reached the
//	            store, still queued when the worker died, is re-opened from
//	            its inode, see storeQueue; one that cannot be is deleted and
//	            the open re-executed). No handle leaks.
//	create      CREATE: pre = start. Handle found → answer it. Else, when the
//	            ref record shows the inode counted, re-open that inode via
//	            procfs (no second create, no O_TRUNC). Else re-execute with
//	            the make rule for EEXIST (O_EXCL).
//	tmpfile     TMPFILE: as create; the unnamed inode is kept alive by its
//	            O_PATH fd in the store ("ino.<id>", nlink 0), so a counted
//	            inode is re-opened; one not counted died with the worker.
//	release     RELEASE, RELEASEDIR: started + no such handle → success (and
//	            the store's "fh.<id>" is removed again, idempotently).
//	append      WRITE on an O_APPEND handle: pre = size before, length.
//	            Started: size == pre+len → the write landed, reply len;
//	            size == pre → re-execute; size in between → a short write
//	            landed (the kill stopped the kernel's write): when the bytes
//	            at pre are the start of the data (still in guest RAM), the
//	            ref record journals (bytes landed, offset of the rest) and
//	            the rest is appended, reply len (a crash during that
//	            completion resolves from the ref record the same way);
//	            larger → landed iff the bytes at pre equal the data;
//	            otherwise EIO (never write twice). Writes with an offset are
//	            idempotent. See appendResume.
//	shift       FALLOCATE with COLLAPSE_RANGE/INSERT_RANGE: pre = size.
//	            Started: size == pre∓len → success; == pre → re-execute;
//	            else EIO. Other modes are idempotent.
//	xcreate     SETXATTR: started + EEXIST (XATTR_CREATE) and the stored value
//	            equals the requested one → success.
//	xremove     REMOVEXATTR: started + ENODATA → success.
//	init        INIT: started → answer from the request again, ignoring that
//	            the session is already initialized (it was persisted).
//
// Locks are idempotent. POSIX locks (SETLK, SETLKW) are OFD locks on the
// lock owner's own open file description of the inode, which reaches the fd
// store ("lk.<nodeid>.<owner>") before any lock is taken on it, and flocks
// are on the handle's open file description ("fh.<id>"): re-acquiring or
// re-releasing a lock on the same description gives the same state and
// answer. FLUSH closes the owner's lock fd and removes its stored copy;
// re-executed, it finds the copy the next worker took back and drops it. READDIRPLUS re-executes
// and may count the references of the entries of a reply the guest never got
// a second time: an over-count keeps an inode known longer (until FORGET of
// what the guest holds leaves it above 0, at worst until DESTROY), never an
// ESTALE; it is accepted to keep READDIRPLUS journal-free.

type rule uint8

const (
	ruleIdempotent rule = iota
	ruleRef
	ruleForget
	ruleMake
	ruleLink
	ruleRemove
	ruleRename
	ruleOpen
	ruleCreate
	ruleTmpfile
	ruleRelease
	ruleAppend
	ruleShift
	ruleXattrCreate
	ruleXattrRemove
	ruleInit
)

// exactlyOnce is the rule table, indexed by opcode. Opcodes not listed are
// idempotent (or answered ENOSYS).
var exactlyOnce = [fuse.OpMax]rule{
	fuse.OpInit:        ruleInit,
	fuse.OpLookup:      ruleRef,
	fuse.OpForget:      ruleForget,
	fuse.OpBatchForget: ruleForget,
	fuse.OpMkdir:       ruleMake,
	fuse.OpMknod:       ruleMake,
	fuse.OpSymlink:     ruleMake,
	fuse.OpLink:        ruleLink,
	fuse.OpUnlink:      ruleRemove,
	fuse.OpRmdir:       ruleRemove,
	fuse.OpRename:      ruleRename,
	fuse.OpRename2:     ruleRename,
	fuse.OpOpen:        ruleOpen,
	fuse.OpOpendir:     ruleOpen,
	fuse.OpCreate:      ruleCreate,
	fuse.OpTmpfile:     ruleTmpfile,
	fuse.OpRelease:     ruleRelease,
	fuse.OpReleasedir:  ruleRelease,
	fuse.OpWrite:       ruleAppend,
	fuse.OpFallocate:   ruleShift,
	fuse.OpSetxattr:    ruleXattrCreate,
	fuse.OpRemovexattr: ruleXattrRemove,
	// Idempotent, re-executed: DESTROY, GETATTR, SETATTR, STATX, READLINK,
	// READ, FLUSH, FSYNC, FSYNCDIR, SYNCFS, READDIR, READDIRPLUS (over-count,
	// see above), STATFS, ACCESS, LSEEK, COPY_FILE_RANGE (explicit offsets),
	// GETXATTR, LISTXATTR, GETLK, SETLK, SETLKW, INTERRUPT.
}

// crashHook, set by tests, is called at named points of journaled requests;
// a test panics out of it to simulate the worker dying there.
var crashHook func(point string)

// Crash points.
const (
	cpStarted  = "started"  // journal begin record written
	cpSyscall  = "syscall"  // the opcode's main syscall returned
	cpRef      = "ref"      // ref record written, count not yet changed
	cpMaptable = "maptable" // a maptable update returned
	cpStore    = "store"    // an fd store call returned
	cpDone     = "done"     // journal done record written, reply not yet pushed
)

// crash is a crash point of a journaled request: the test hook, and the
// process-wide crash points (engine/crashpoint) the tools/crash tests arm
// with VFSD_CRASHPOINT: after-syscall (the host syscall ran, its result
// not yet journaled) and after-journal (the done record is written, the
// reply not yet handed back). mid-maptable-insert and mid-fd-handover are
// hit where maptable insertions and fd store hand-overs happen.
func crash(point string) {
	if crashHook != nil {
		crashHook(point)
	}
	switch point {
	case cpSyscall:
		crashpoint.Hit(crashpoint.AfterSyscall)
	case cpDone:
		crashpoint.Hit(crashpoint.AfterJournal)
	}
}

// txn is one request's journal context, passed by value to the opcode
// handler (pointers to it do not escape: no allocation per request).
type txn struct {
	slot   journal.Slot
	gen    uint32
	q      int  // the request's counter index (its queue)
	on     bool // the request has a journal slot and its opcode a rule
	begun  bool
	unique uint64
	op     uint32
	// res, for a resubmitted request whose entry is Started, is that
	// entry: the crashed run's pre-state and ref record.
	res *journal.Entry
}

// begin writes the begin record with pre. For a resubmitted request the
// original begin record stays and *pre is set to its pre-state, so that a
// second crash resolves against the same facts.
func (x *txn) begin(pre *[journal.PreWords]uint64) {
	if !x.on {
		return
	}
	if x.res != nil {
		*pre = x.res.Pre
		x.begun = true
		return
	}
	x.gen = x.slot.Begin(x.op, x.unique, pre)
	x.begun = true
	crash(cpStarted)
}

// setRef writes the ref record before a reference count changes.
func (x *txn) setRef(id uint64, pre int64, k maptable.Key, index uint32) {
	if !x.begun {
		return
	}
	x.slot.SetRef(x.gen, &journal.Ref{ID: id, Pre: uint64(pre), Key: k, Index: uint64(index)})
	crash(cpRef)
}

// progress records that entries before index are applied.
func (x *txn) progress(index uint32) {
	if x.begun {
		x.slot.SetProgress(x.gen, index)
	}
}

// finish writes the done record (errno positive, 0 for success).
func (x *txn) finish(errno int32, a, b []byte) {
	if !x.begun {
		return
	}
	x.slot.Finish(x.gen, errno, a, b)
	crash(cpDone)
}

// counted reports whether the crashed run of this resubmitted request
// already added its reference to in (whose key is k): the ref record names
// k, the same record (or none yet: a new inode) and in's counter of this
// queue is one above what the record saw.
// Precondition: fs.imu held.
func (x *txn) counted(in *inode, k maptable.Key) bool {
	if x.res == nil || !x.res.RefValid || in == nil || in.cnt == nil {
		return false
	}
	r := &x.res.Ref
	if r.Key != k || r.ID != 0 && r.ID != uint64(in.tid) {
		return false
	}
	return in.cnt[x.q] == int64(r.Pre)+1
}

// ok answers success with payload a+b and journals it.
func (x *txn) ok(rep *fuse.Reply, a, b []byte) {
	x.finish(0, a, b)
	rep.Ok(a, b)
}

// fail answers e and journals it.
func (x *txn) fail(rep *fuse.Reply, e unix.Errno) {
	x.finish(int32(e), nil, nil)
	rep.Error(e)
}

// replay answers a Done entry.
func replay(rep *fuse.Reply, op uint32, e *journal.Entry) {
	switch {
	case noReplyOp(op):
		rep.NoReply()
	case e.Errno != 0:
		rep.Error(unix.Errno(e.Errno))
	default:
		rep.Ok(e.Reply)
	}
}

// prepare sets up x for req and answers a resubmitted request whose entry
// is Done (true: answered).
func (fs *FS) prepare(x *txn, req *fuse.Request, rep *fuse.Reply) bool {
	x.q = req.Queue
	if x.q < 0 || x.q >= fs.nq {
		x.q = fs.nq - 1 // outside the journal: counted, not journaled
	}
	op := req.Opcode
	if exactlyOnce[op] == ruleIdempotent {
		return false
	}
	s, ok := fs.journal.Slot(req.Queue, req.Head)
	if !ok {
		return false
	}
	x.slot, x.on, x.unique, x.op = s, true, req.Unique, op
	if !req.Resumed {
		return false
	}
	e := new(journal.Entry) // resubmissions only
	switch s.Read(e) {
	case journal.Done:
		if e.Opcode == op && e.Unique == req.Unique {
			replay(rep, op, e)
			return true
		}
	case journal.Started:
		if e.Opcode == op && e.Unique == req.Unique {
			x.res, x.gen = e, e.Gen
		}
	}
	return false
}
