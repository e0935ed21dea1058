// Package hostload is the host-side half of the benchmark harness: it
// drives one workload against one virtio-fs daemon (vfsd or the reference
// /usr/lib/qemu/virtiofsd) through the project's vhost-user frontend
// (tools/frontend) and FUSE client (tools/fuseclient), and runs the same
// workload as plain syscalls in this process (the "floor": what the host
// kernel alone costs, no daemon and no virtqueue in between).
//
// One Share (a data file, a directory of many entries, an empty directory
// for creates) is prepared once and served in turn by every daemon run, so
// runs differ only in the daemon. Every run starts its own daemon, measures
// after a warm-up, and reports throughput, every latency sample (sorted) and
// CPU time per operation: the daemon process tree's from /proc for a daemon
// run, the worker threads' RUSAGE_THREAD for the floor.
//
// What one operation is, per workload (Workloads):
//   - getattr: GETATTR of the data file / fstatat(fd, "", AT_EMPTY_PATH)
//   - lookup: LOOKUP of "data" in the root / openat(O_PATH)+fstatat+close
//   - read4k, write4k: 4 KiB READ/WRITE at random aligned offsets / pread, pwrite
//   - read128k, write128k, read1m, write1m: sequential, each worker streaming
//     through its own part of the file
//   - create: CREATE+RELEASE+UNLINK (+FORGET) / openat(O_CREAT|O_EXCL)+close+unlinkat
//   - readdirplus: one READDIRPLUS (4 KiB of room by default, as a Linux
//     guest asks: about 24 entries) walking the big directory through the
//     worker's open handle and around again, a BATCH_FORGET every 256 nodes
//     looked up / getdents64 into a buffer for as many entries plus fstatat
//     of each, seeking back to the start at the end
//
// MeasureMemory starts a daemon, samples its memory after INIT and again
// after READDIRPLUS handed out every entry of the big directory (nothing
// forgotten): user memory per node from the processes' PSS, kernel memory
// per node from the slab objects still in use after dropping the
// reclaimable caches (see memory.go), and fds per node.
//
// Nothing here asserts on timing: callers decide what the numbers mean.
package hostload
