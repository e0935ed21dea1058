// Package guestfio is the in-guest half of the benchmark harness: it boots
// the project's guest (tools/guest: QEMU TCG, Debian kernel, the Makefile's
// initramfs) on vfsd and on the reference virtiofsd, once per cache mode,
// runs fio and a metadata workload inside (bench-init.sh, appended to the
// initramfs as /bench-init), and reads the jobs' JSON/YAML output back from
// the share after the guest powered off.
package guestfio
