package main

import (
	"os"
	"testing"
)

// TestMain lets the test binary stand in for vfsd when the supervisor
// (run in-process by the tests) starts it as "vfsd worker ...".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
