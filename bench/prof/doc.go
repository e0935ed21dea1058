// Package prof collects CPU profiles from a daemon's net/http/pprof endpoint
// (vfsd's --pprof-addr) and reduces them to the functions where the time
// went, with github.com/google/pprof's profile package.
package prof
