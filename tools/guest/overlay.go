package guest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
)

// AppendInit writes to out the base initramfs followed by a second
// (gzip-compressed newc cpio) archive holding script as /name; the kernel
// unpacks both, so /init and everything else stay as built, and the scenario
// is booted with rdinit=/name. The crash, conformance and benchmark scenarios
// use it.
func AppendInit(base, out, name string, script []byte) error {
	b, err := os.ReadFile(base)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.Write(b)
	for buf.Len()%4 != 0 { // the unpacker skips zero padding between archives
		buf.WriteByte(0)
	}
	zw := gzip.NewWriter(&buf)
	CpioEntry(zw, name, 0o100755, script)
	CpioEntry(zw, "TRAILER!!!", 0, nil)
	if err := zw.Close(); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// CpioEntry writes one newc ("070701") entry.
func CpioEntry(w io.Writer, name string, mode uint32, data []byte) {
	nlink := 1
	if mode == 0 {
		nlink = 0
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		1, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	pad := func(n int) []byte { return make([]byte, (4-n%4)%4) }
	w.Write([]byte(hdr))
	w.Write(append([]byte(name), 0))
	w.Write(pad(len(hdr) + len(name) + 1))
	w.Write(data)
	w.Write(pad(len(data)))
}
