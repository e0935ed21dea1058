// Package report holds the benchmark harness's results (what goes into the
// JSON file), renders them as text tables, and draws the latency
// distribution plots (PNG, one per host workload, every configuration's CDF).
package report
