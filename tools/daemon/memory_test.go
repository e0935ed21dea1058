package daemon

import (
	"os"
	"testing"
)

const smapsSample = `55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234                       /usr/bin/x
Size:                  4 kB
Rss:                   4 kB
Pss:                   2 kB
Pss_Dirty:             0 kB
VmFlags: rd mr mw me sd
7f0000000000-7f0004000000 rw-s 00000000 00:01 77                         /memfd:vfsd-guest-ram (deleted)
Size:              65536 kB
Rss:                 512 kB
Pss:                 256 kB
VmFlags: rd wr sh mr mw me ms sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
Pss:                  16 kB
7ffd10000000-7ffd10001000 rw-p 00000000 00:00 0 
Rss:                   8 kB
Pss:                   8 kB
`

func TestParseSmaps(t *testing.T) {
	m, err := parseSmaps([]byte(smapsSample), "memfd:vfsd-guest-ram")
	if err != nil {
		t.Fatal(err)
	}
	if m.PSS != 26<<10 || m.RSS != 28<<10 || m.Skipped != 256<<10 || m.File != 2<<10 {
		t.Fatalf("got %+v, want PSS 26 KiB (2 of file), RSS 28 KiB, skipped 256 KiB", m)
	}
	m, err = parseSmaps([]byte(smapsSample), "")
	if err != nil || m.PSS != 282<<10 || m.Skipped != 0 || m.File != 2<<10 {
		t.Fatalf("without skip: %+v, %v", m, err)
	}
	if _, err := parseSmaps([]byte("Rss: 4 MB\n"), ""); err == nil {
		t.Fatal("bad unit accepted")
	}
	if _, err := parseSmaps([]byte("garbage line\n"), ""); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestTreeMemorySelf(t *testing.T) {
	m, err := TreeMemory(os.Getpid(), "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Procs != 1 || m.PSS == 0 || m.RSS < m.PSS || m.FDs < 3 {
		t.Fatalf("implausible memory of this test: %+v", m)
	}
}
