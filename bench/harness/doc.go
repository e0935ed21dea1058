// Package harness runs the whole benchmark: every host workload on vfsd and
// on the reference virtiofsd (interleaved, repeated), the syscall floor, a
// CPU profile of vfsd per workload when it offers --pprof-addr, and the
// in-guest fio runs; then it prints the tables and writes the JSON and the
// plots. bench/cmd/vfsdbench is its command line.
package harness
