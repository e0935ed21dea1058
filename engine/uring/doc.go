// Package uring submits a batch of file reads with one io_uring_enter(2).
//
// On the development VM a syscall costs about 1.1 µs of entry and exit alone
// (the host is itself a paravirtualized guest), and a 4 KiB READ from the page
// cache is one preadv(2): a queue thread that found 32 READs in the ring paid
// 32 kernel entries for them. A Ring takes the batch's reads as SQEs and one
// io_uring_enter submits them all and waits for them; the kernel serves reads
// from the page cache inline, in the same call. (fio on this VM, 4 KiB random
// reads of a cached file: psync 210k-280k reads/s, io_uring with batches of 32
// 870k-1040k/s on one core.) Writes are not sent here: ext4 cannot take a
// buffered write without blocking, so io_uring hands each to a worker thread,
// which costs more than the pwritev it replaces (fio: 200k-225k against
// 355k-375k writes/s).
//
// A Ring is owned by one thread (IORING_SETUP_SINGLE_ISSUER): the thread that
// called New makes every other call. It is created disabled, restricted to
// IORING_OP_READV (IORING_REGISTER_RESTRICTIONS: the ring can do nothing
// else even if a bug wrote another opcode), and then enabled. io_uring
// operations do not pass through seccomp; the restriction is what bounds them.
//
// The SQ and CQ rings are shared with the kernel: the producer's tail and the
// consumer's head are published with atomic stores after the entries they
// cover are written, and the other side's index is read with an atomic load
// (ring_unsafe.go).
package uring
