// Package load is the core of the host-side load generator: it starts a
// backend (vfsd or the reference virtiofsd) on a prepared directory, drives
// one operation at a fixed number of outstanding requests per request queue
// through tools/frontend and tools/fuseclient, and reports throughput,
// latency percentiles and the backend's CPU time per operation. The
// loadgen command and the bench/ harness call Run.
package load
