// Package journal owns vfsd's request journal: one fixed-size entry per
// (virtqueue, descriptor head) in a memfd that outlives the worker (the
// supervisor keeps it in its fd store under FDName), so that a restarted
// worker can tell, for every request resubmitted from the vhost-user
// inflight region, whether its effect happened and what its reply was.
// The passthrough filesystem writes it; engine/passthrough/exactlyonce.go
// holds the rules that read it.
//
// # Layout
//
// A 4096-byte header, then Queues*QueueSize entries of EntrySize bytes,
// entry (q, h) at HeaderSize + (q*QueueSize + h)*EntrySize. Integers are
// little-endian. Header:
//
//	0    magic      u64  "VFSDJRNL"
//	8    version    u32  (Version)
//	12   entry size u32  (EntrySize)
//	16   queues     u32
//	20   queue size u32  (heads per queue)
//	64   session copy 0: seq u32, len u32, data [SessionMax]  (128 bytes)
//	192  session copy 1: same
//
// An entry is three records, each with its own sequence word (odd while
// it is written, so a torn record is recognisable after a crash) and the
// entry's generation (bumped by every Begin, so records left over from the
// previous request at that head never count for the new one):
//
//	0    begin:  seq u32, opcode u32, gen u32, pad u32, unique u64,
//	             pre [PreWords]u64        (written once, by Begin)
//	96   progress: gen u32 | index u32 as one atomic u64 (BATCH_FORGET)
//	128  ref:    seq u32, gen u32, ID u64, pre u64, key [3]u64, index u64
//	192  done:   seq u32, gen u32, errno i32, len u32, reply [ReplyMax]
//
// Phases: an entry is Free when its begin record is torn or absent,
// Started when the begin record is whole, Done when the done record is
// whole and carries the begin record's generation. Effects of a request
// happen only after Begin returned, so a torn begin means "nothing
// happened"; the ref record is written before the reference count it
// describes changes, so a torn or stale ref record means "that change did
// not happen"; a torn done record means "started, all effects happened
// but the reply may be missing", which the opcode's started-rule resolves.
//
// # Concurrency
//
// No locks. Entry (q, h) is written only by whoever owns head h of queue q:
// the queue's thread, or for a Blocking request the pool goroutine running
// it, which owns the head until the reply is pushed (the dataplane does not
// reuse a head before that). The session copies are written by the caller
// under its own lock (INIT/DESTROY are serialised by the filesystem).
// Readers run only in a new worker after the writer died (Map, Read).
//
// A mapped journal is untrusted input: Map checks magic, version and
// geometry against the memfd's size and refuses anything else; Read checks
// lengths and never panics on any byte pattern.
package journal
