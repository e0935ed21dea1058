// Command testsum reads `go test -json` from stdin and prints a short report:
// package results, the full output of every failed test, and every skipped
// test with its reason (a skip is never silent). With -log FILE it also writes
// the whole human-readable output there. It exits 1 when anything failed.
//
// It lives under .ci/ so that ./... patterns (vet, test) leave it alone; the
// Makefile runs it with `go run ./.ci/testsum`.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	logPath := flag.String("log", "", "write the full test output to this file")
	flag.Parse()
	var logw io.Writer = io.Discard
	if *logPath != "" {
		f, err := os.Create(*logPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer f.Close()
		logw = f
	}

	out := map[string][]string{} // "pkg\x00test" -> output lines
	var skips, fails []string
	failed := false
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not JSON (e.g. a vet or build message): show it as is.
			fmt.Println(string(line))
			fmt.Fprintln(logw, string(line))
			if strings.Contains(string(line), "FAIL") {
				failed = true
			}
			continue
		}
		key := e.Package + "\x00" + e.Test
		switch e.Action {
		case "output", "build-output":
			fmt.Fprint(logw, e.Output)
			if e.Test == "" {
				// Package level: results, build errors, timeouts, panics.
				s := e.Output
				if !strings.HasPrefix(s, "=== ") && s != "PASS\n" && s != "FAIL\n" && !strings.HasPrefix(s, "testing: warning: no tests") {
					fmt.Print(s)
				}
				continue
			}
			out[key] = append(out[key], e.Output)
		case "fail":
			failed = true
			if e.Test != "" {
				fails = append(fails, key)
				fmt.Printf("--- FAIL: %s %s (%.2fs)\n", e.Package, e.Test, e.Elapsed)
				for _, l := range out[key] {
					fmt.Print("    " + l)
				}
			}
		case "skip":
			if e.Test != "" {
				reason := ""
				for _, l := range out[key] {
					l = strings.TrimSpace(l)
					if l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- SKIP") {
						reason = l
					}
				}
				skips = append(skips, fmt.Sprintf("%s %s: %s", e.Package, e.Test, reason))
			}
			delete(out, key)
		case "pass":
			delete(out, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		failed = true
	}
	sort.Strings(skips)
	if len(skips) > 0 {
		fmt.Printf("\n%d skipped:\n", len(skips))
		for _, s := range skips {
			fmt.Println("  SKIP " + s)
		}
	}
	if len(fails) > 0 {
		fmt.Printf("\n%d failed:\n", len(fails))
		for _, f := range fails {
			fmt.Println("  FAIL " + strings.Replace(f, "\x00", " ", 1))
		}
	}
	if failed {
		os.Exit(1)
	}
}
