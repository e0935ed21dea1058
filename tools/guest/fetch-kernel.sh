#!/usr/bin/env bash
# fetch-kernel.sh OUTDIR PINNED_PKG
#
# Downloads the Debian guest kernel package and unpacks it into OUTDIR (once).
# PINNED_PKG (e.g. linux-image-6.1.0-56-amd64) is used when the archive still has
# it; otherwise the package that linux-image-amd64 currently depends on is used.
#
# Result:
#   OUTDIR/vmlinuz   -> boot/vmlinuz-<release>
#   OUTDIR/release   the kernel release (e.g. 6.1.0-56-amd64), names lib/modules/<release>
#   OUTDIR/package   the package name and version that was unpacked
set -euo pipefail

out=${1:?usage: fetch-kernel.sh OUTDIR PINNED_PKG}
pinned=${2:?usage: fetch-kernel.sh OUTDIR PINNED_PKG}

if [[ -f $out/release && -e $out/vmlinuz && -d $out/lib/modules/$(cat "$out/release") ]]; then
	echo "kernel: $(cat "$out/package") already unpacked in $out"
	exit 0
fi

have_candidate() {
	local c
	c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
	[[ -n $c && $c != "(none)" ]]
}

pkg=$pinned
if ! have_candidate "$pkg"; then
	apt-get update -qq || true
fi
if ! have_candidate "$pkg"; then
	resolved=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	if [[ -z $resolved ]]; then
		echo "fetch-kernel: $pinned is not available and linux-image-amd64 does not resolve" >&2
		exit 1
	fi
	echo "fetch-kernel: pinned $pinned is gone from the archive; using $resolved (update KERNEL_PKG in the Makefile)" >&2
	pkg=$resolved
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download writes to the current directory; _apt cannot read a root-owned
# mktemp dir, which only costs a warning.
(cd "$tmp" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
deb=$(ls "$tmp"/"$pkg"_*.deb 2>/dev/null | head -n1)
if [[ -z $deb ]]; then
	echo "fetch-kernel: apt-get download $pkg produced no .deb" >&2
	exit 1
fi

rm -rf "$out"
mkdir -p "$out"
dpkg-deb -x "$deb" "$out"
release=${pkg#linux-image-}
if [[ ! -f $out/boot/vmlinuz-$release || ! -d $out/lib/modules/$release ]]; then
	echo "fetch-kernel: $deb does not contain boot/vmlinuz-$release and lib/modules/$release" >&2
	exit 1
fi
ln -sfn "boot/vmlinuz-$release" "$out/vmlinuz"
echo "$pkg $(dpkg-deb -f "$deb" Version)" >"$out/package"
echo "$release" >"$out/release"
echo "kernel: unpacked $(cat "$out/package") into $out"
