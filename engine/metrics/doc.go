// Package metrics is the worker's metrics registry and its Prometheus text
// exposition (format 0.0.4, written by hand: no client library).
//
// Per queue (Queue, one per ring, made up front by New): request counts,
// error counts and latency histograms per FUSE opcode, a histogram of batch
// sizes (chains served per wake-up of the queue thread), and the number of
// requests in flight. Every figure is an atomic counter in a fixed-size
// array: recording allocates nothing and takes no lock, so the data plane
// records on its hot path (the queue thread and the blocking pool both
// record into the queue's shard). Histograms keep per-bucket counts and are
// made cumulative when scraped.
//
// Process-wide values (restarts, stored fds, map table occupancy, ...) are
// registered as functions (Gauge, Counter) before serving and read at each
// scrape. The Registry is an http.Handler for /metrics.
package metrics
