#!/usr/bin/env bash
# mkinitramfs.sh KERNELDIR OUT.cpio.gz
#
# Builds the guest initramfs: busybox-static (shell and tools), the dynamic
# binaries the guest tests need (fio, stress-ng, util-linux flock, attr's
# setfattr/getfattr) with every shared library ldd names and the dynamic loader,
# the virtio/fuse/virtiofs modules of the kernel unpacked in KERNELDIR (see
# fetch-kernel.sh), and tools/guest/init as /init.
set -euo pipefail

kdir=${1:?usage: mkinitramfs.sh KERNELDIR OUT.cpio.gz}
out=${2:?usage: mkinitramfs.sh KERNELDIR OUT.cpio.gz}
here=$(cd "$(dirname "$0")" && pwd)

release=$(cat "$kdir/release")
moddir=$kdir/lib/modules/$release
# Load order matters: each module needs the ones before it.
modules=(virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci fuse virtiofs)
dynbins=(fio stress-ng flock setfattr getfattr)

stage=$(mktemp -d "${out%/*}/.initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,mnt,tmp,etc,root,run}
chmod 1777 "$stage/tmp"
# The kernel opens /dev/console for init before /init can mount devtmpfs.
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3

# busybox and one symlink per applet, at the path busybox itself reports.
busybox=$(command -v busybox)
if ldd "$busybox" >/dev/null 2>&1; then
	echo "mkinitramfs: $busybox is not static; install busybox-static" >&2
	exit 1
fi
cp "$busybox" "$stage/bin/busybox"
while read -r applet; do
	[[ $applet == /bin/busybox || -z $applet ]] && continue
	mkdir -p "$stage/$(dirname "$applet")"
	ln -sf /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full | sed 's,^,/,')

# Dynamic binaries go to /usr/bin (replacing any busybox applet of the same
# name); their libraries keep the paths ldd resolved, so RUNPATHs still work.
copy_file() { # src dst-in-stage: copies the file (dereferenced)
	mkdir -p "$(dirname "$stage/$2")"
	cp -L "$1" "$stage/$2"
}
declare -A seen=()
for b in "${dynbins[@]}"; do
	path=$(command -v "$b") || { echo "mkinitramfs: $b not installed (make deps)" >&2; exit 1; }
	rm -f "$stage/usr/bin/$b" "$stage/bin/$b" "$stage/sbin/$b" "$stage/usr/sbin/$b"
	copy_file "$path" "/usr/bin/$b"
	if ldd "$path" | grep -q 'not found'; then
		echo "mkinitramfs: $path has libraries ldd cannot find:" >&2
		ldd "$path" | grep 'not found' >&2
		exit 1
	fi
	while read -r lib; do
		[[ -z $lib || -n ${seen[$lib]:-} ]] && continue
		seen[$lib]=1
		copy_file "$lib" "$lib"
	done < <(ldd "$path" | awk '
		$2 == "=>" && $3 ~ /^\// { print $3; next }
		$1 ~ /^\// { print $1 }')
done

# Kernel modules, flat, plus the order to load them in. A module built into the
# kernel is listed in modules.builtin and needs no .ko.
: >"$stage/lib/modules/load-order"
for m in "${modules[@]}"; do
	ko=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
	if [[ -z $ko ]]; then
		if grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
			echo "mkinitramfs: $m is built into $release"
			continue
		fi
		echo "mkinitramfs: module $m not found under $moddir/kernel" >&2
		exit 1
	fi
	case $ko in
	*.ko) cp "$ko" "$stage/lib/modules/$m.ko" ;;
	*.ko.xz) xz -dc "$ko" >"$stage/lib/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$ko" >"$stage/lib/modules/$m.ko" ;;
	esac
	echo "$m" >>"$stage/lib/modules/load-order"
done
echo "$release" >"$stage/etc/kernel-release"

cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF

install -m 0755 "$here/init" "$stage/init"

tmpout=$out.tmp
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
	cpio --null --create --format=newc --reproducible --quiet) | gzip -n -6 >"$tmpout"
mv "$tmpout" "$out"
echo "initramfs: $out ($(du -h "$out" | cut -f1), kernel $release, modules: $(tr '\n' ' ' <"$stage/lib/modules/load-order"))"
