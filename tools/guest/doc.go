// Package guest is the guest end-to-end rig: it starts a virtio-fs daemon (vfsd,
// or the reference /usr/lib/qemu/virtiofsd) on a shared directory, boots QEMU
// (TCG, q35, vhost-user-fs-pci) with the Debian kernel and the initramfs that
// the Makefile builds (`make initramfs`), captures the guest's serial console,
// and waits for the result line that the guest's /init (tools/guest/init)
// prints after running the steps named on the kernel command line.
//
// Files:
//   - rig.go:    Config, Run, Result: daemon + QEMU lifecycle, serial capture.
//   - files.go:  the files the host puts into the share for the guest to check
//     (host-in/) and the checks of what the guest left behind (guest-out/).
//   - env.go:    locating the repository, the build artifacts and the daemon.
//   - init, mkinitramfs.sh, fetch-kernel.sh: the guest side and its build.
//   - cmd/demo:  `make demo`.
//
// The test (guest_test.go) skips when the kernel or initramfs is missing unless
// VFSD_GUEST_REQUIRED=1, which `make test` sets.
//
// Nothing in the project imports this package.
package guest
