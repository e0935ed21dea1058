// Command fakevfsd stands in for a vfsd with --pprof-addr in the harness
// test: it serves net/http/pprof (its own profile) on the address given and
// runs the real daemon ($FAKE_VFSD_REAL) with the other arguments.
package main

import (
	"errors"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"strings"
)

func main() {
	var args []string
	addr := ""
	for _, a := range os.Args[1:] {
		if a == "--help" {
			fmt.Println("fakevfsd: the real vfsd's options, plus\n  --pprof-addr=ADDR   serve net/http/pprof on ADDR")
			return
		}
		if v, ok := strings.CutPrefix(a, "--pprof-addr="); ok {
			addr = v
			continue
		}
		args = append(args, a)
	}
	if addr != "" {
		go func() {
			if err := http.ListenAndServe(addr, nil); err != nil {
				fmt.Fprintln(os.Stderr, "fakevfsd:", err)
			}
		}()
	}
	cmd := exec.Command(os.Getenv("FAKE_VFSD_REAL"), args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(max(ee.ExitCode(), 1))
		}
		fmt.Fprintln(os.Stderr, "fakevfsd:", err)
		os.Exit(1)
	}
}
