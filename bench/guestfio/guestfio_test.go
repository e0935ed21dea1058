package guestfio

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"vfsd/bench/report"
	"vfsd/tools/guest"
)

func TestParseFio(t *testing.T) {
	b, err := os.ReadFile("testdata/fio-randread.json")
	if err != nil {
		t.Fatal(err)
	}
	// fio can print a warning before the JSON.
	v, err := ParseFio(append([]byte("fio: some warning\n"), b...))
	if err != nil {
		t.Fatal(err)
	}
	if v.IOPS < 15648 || v.IOPS > 15649 || v.MBPerSec < 64 || v.MBPerSec > 64.1 || v.P99 != 9371648*time.Nanosecond || v.P50 <= 0 || v.P50 > v.P99 {
		t.Fatalf("parsed %+v", v)
	}
	for _, bad := range []string{"", "{", `{"jobs":[]}`, `{"jobs":[{"jobname":"x","error":5}]}`, `{"jobs":[{"jobname":"x"}]}`} {
		if _, err := ParseFio([]byte(bad)); err == nil {
			t.Errorf("ParseFio(%q) accepted", bad)
		}
	}
}

func TestParseStressYAML(t *testing.T) {
	b, err := os.ReadFile("testdata/stress-dentry.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParseStressYAML(b, "dentry")
	if err != nil {
		t.Fatal(err)
	}
	if v.IOPS < 680 || v.IOPS > 681 {
		t.Fatalf("parsed %+v", v)
	}
	if _, err := ParseStressYAML(b, "hdd"); err == nil {
		t.Fatal("missing stressor accepted")
	}
}

func TestAppendInit(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.cpio.gz")
	var bb bytes.Buffer
	zw := gzip.NewWriter(&bb)
	guest.CpioEntry(zw, "init", 0o100755, []byte("#!/bin/sh\n"))
	guest.CpioEntry(zw, "TRAILER!!!", 0, nil)
	zw.Close()
	bb.WriteByte(0) // a base whose length is not a multiple of 4
	if err := os.WriteFile(base, bb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.cpio.gz")
	if err := guest.AppendInit(base, out, InitName, benchInit); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, bb.Bytes()) {
		t.Fatal("base archive not kept as it was")
	}
	second := (bb.Len() + 3) &^ 3
	for _, c := range got[bb.Len():second] {
		if c != 0 {
			t.Fatal("padding is not zeros")
		}
	}
	zr, err := gzip.NewReader(bytes.NewReader(got[second:]))
	if err != nil {
		t.Fatal(err)
	}
	cpio, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(cpio, []byte("070701")) || !bytes.Contains(cpio, []byte(InitName+"\x00")) ||
		!bytes.Contains(cpio, benchInit) || !bytes.Contains(cpio, []byte("TRAILER!!!")) {
		t.Fatal("appended archive lacks the script")
	}
	if len(cpio)%4 != 0 {
		t.Fatalf("cpio length %d not 4-aligned", len(cpio))
	}
}

// The script knows every job the Go side offers, and prints the marker only
// through finish (the rig stops at the first marker).
func TestScriptJobs(t *testing.T) {
	s := string(benchInit)
	for _, j := range Jobs {
		if !strings.Contains(s, "\t"+j+")") {
			t.Errorf("bench-init.sh has no case for job %s", j)
		}
	}
	if n := strings.Count(s, "VFSD-GUEST-RESULT: PASS"); n != 1 {
		t.Errorf("PASS marker appears %d times", n)
	}
}

// The boot order alternates between cache modes, both daemons each time.
func TestBootOrder(t *testing.T) {
	a, b := bootOrder(0), bootOrder(1)
	if len(a) != 2 || len(b) != 2 || a[0] != b[1] || a[1] != b[0] || a[0] == a[1] {
		t.Fatalf("boot orders %v then %v", a, b)
	}
	if c := bootOrder(2); c[0] != a[0] {
		t.Fatalf("third cache mode boots %v, the first %v", c, a)
	}
}

// With several boots a daemon's value is its best boot, an error only when
// every boot failed, and every successful boot's IOPS is kept; a second
// round of boots starts with the other daemon (ABBA).
func TestBestBoot(t *testing.T) {
	var v *report.GuestValue
	v = better(v, &report.GuestValue{Error: "boot 1 failed"})
	if v.Error == "" || len(v.BootsIOPS) != 0 {
		t.Fatalf("after a failed boot: %+v", v)
	}
	v = better(v, &report.GuestValue{IOPS: 100, P99: 9})
	v = better(v, &report.GuestValue{IOPS: 300, P99: 7})
	v = better(v, &report.GuestValue{IOPS: 200, P99: 5})
	v = better(v, &report.GuestValue{Error: "boot 5 failed"})
	if v.Error != "" || v.IOPS != 300 || v.P99 != 7 || !slices.Equal(v.BootsIOPS, []float64{100, 300, 200}) {
		t.Fatalf("best of the boots: %+v", v)
	}
	if m := mean(v.BootsIOPS); m != 200 || mean(nil) != 0 {
		t.Fatalf("mean of the boots %v", m)
	}
	if a, b := bootOrder(0+0), bootOrder(0+1); a[0] != b[1] {
		t.Fatalf("rounds boot %v then %v, want the order swapped", a, b)
	}
}
