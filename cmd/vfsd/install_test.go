package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// make install PREFIX=/usr DESTDIR=tmp puts the binary in libexec with a
// symlink in bin, the units, libvirt's JSON and the manual page, with the
// installed paths (not DESTDIR) inside them.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dest := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", "../..", "install", "PREFIX=/usr", "DESTDIR="+dest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	at := func(p string) string { return filepath.Join(dest, p) }
	fi, err := os.Stat(at("usr/libexec/vfsd"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("usr/libexec/vfsd: %v %v", fi, err)
	}
	if l, err := os.Readlink(at("usr/bin/vfsd")); err != nil || l != "/usr/libexec/vfsd" {
		t.Fatalf("usr/bin/vfsd -> %q, %v", l, err)
	}
	out, err := exec.Command(at("usr/libexec/vfsd"), "--print-capabilities").Output()
	if err != nil {
		t.Fatalf("installed vfsd --print-capabilities: %v", err)
	}

	var desc struct {
		Description, Type, Binary string
		Features                  []string
	}
	b, err := os.ReadFile(at("usr/share/qemu/vhost-user/50-vfsd.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &desc); err != nil {
		t.Fatal(err)
	}
	var caps struct{ Features []string }
	json.Unmarshal(out, &caps)
	if desc.Type != "fs" || desc.Binary != "/usr/libexec/vfsd" || desc.Description == "" ||
		strings.Join(desc.Features, ",") != strings.Join(caps.Features, ",") {
		t.Fatalf("50-vfsd.json %+v (binary's capabilities %v)", desc, caps.Features)
	}

	svc, err := os.ReadFile(at("usr/lib/systemd/system/vfsd@.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "NotifyAccess=main", "WatchdogSec=", "FileDescriptorStoreMax=",
		"Restart=on-failure", "ExecStart=/usr/libexec/vfsd ", "ExecReload="} {
		if !strings.Contains(string(svc), "\n"+want) {
			t.Errorf("vfsd@.service lacks %q", want)
		}
	}
	if strings.Contains(string(svc), "@LIBEXECDIR@") || strings.Contains(string(svc), dest) {
		t.Errorf("vfsd@.service not substituted:\n%s", svc)
	}
	sock, err := os.ReadFile(at("usr/lib/systemd/system/vfsd@.socket"))
	if err != nil || !strings.Contains(string(sock), "\nListenStream=/run/vfsd/%i.sock") {
		t.Errorf("vfsd@.socket: %v\n%s", err, sock)
	}

	man, err := os.ReadFile(at("usr/share/man/man1/vfsd.1"))
	if err != nil {
		t.Fatal(err)
	}
	if string(man) != manPage(extractVersion(string(man))) {
		t.Errorf("installed vfsd.1 is not vfsd --man")
	}
	for _, d := range optionDocs {
		for _, n := range d.names {
			if !strings.Contains(string(man), `\fB`+roff(dashes(n))+`\fR`) {
				t.Errorf("vfsd.1 lacks %s", dashes(n))
			}
		}
	}
}

// extractVersion is the version in a vfsd.1 .TH line.
func extractVersion(man string) string {
	line, _, _ := strings.Cut(man, "\n")
	_, v, _ := strings.Cut(line, `"vfsd `)
	v, _, _ = strings.Cut(v, `"`)
	return strings.ReplaceAll(v, `\-`, "-")
}
