#!/bin/sh
# /bench-init of the vfsd guest (busybox sh): the in-guest benchmark.
#
# Not part of the Makefile's initramfs: bench/guestfio appends a small cpio
# archive holding this file as /bench-init to build/initramfs.cpio.gz and boots
# with rdinit=/bench-init (a later rdinit= wins over the rig's rdinit=/init), so
# /init and its steps stay as they are. It follows /init's conventions: "===
# STEP name" lines, one result line (the marker below) that tools/guest waits
# for, a per-step watchdog, poweroff at the end.
#
# It mounts the virtio-fs share at /mnt, lays out one data file, then runs the
# jobs named by vfsd.bench.jobs, one after the other, dropping the guest's
# caches before each; every job's machine-readable output goes to
# /mnt/bench-out/JOB.json (fio --output-format=json) or JOB.yaml (stress-ng
# --yaml), which the host reads after the guest powered off.
#
# Kernel command line: vfsd.tag=TAG, vfsd.bench.jobs=JOB[,JOB...],
# vfsd.bench.runtime=SECONDS per job (default 5), vfsd.bench.size=MIB of the
# data file (default 64), vfsd.steplimit=SECONDS (default 120).
#
# Jobs: randread-4k-psync randwrite-4k-psync (buffered, iodepth 1),
# randread-4k-libaio16 randwrite-4k-libaio16 (O_DIRECT, libaio iodepth 16),
# seqread-1m seqwrite-1m (buffered psync), dentry (stress-ng --dentry).

export PATH=/usr/bin:/usr/sbin:/bin:/sbin
export HOME=/root TERM=dumb TZ=UTC0
umask 022

MNT=/mnt
STEP=init
TAG=vfsd
JOBS=randread-4k-psync
RT=5
SIZE=64
STEP_LIMIT=120
W=$MNT/bench-work
OUT=$MNT/bench-out

log() { echo "guest: $*"; }

finish() {
	cd /
	if [ "$1" = 0 ]; then
		echo "VFSD-GUEST-RESULT: PASS $2"
	else
		echo "VFSD-GUEST-RESULT: FAIL $2"
	fi
	sync
	poweroff -f
	echo o >/proc/sysrq-trigger
	sleep 30
	exit 1
}

fail() {
	echo "guest: FAIL in step $STEP: $*"
	echo "guest: --- last kernel messages ---"
	dmesg 2>/dev/null | tail -n 40
	finish 1 "step=$STEP $*"
}

step() {
	STEP=$1
	shift
	now=$(cut -d' ' -f1 /proc/uptime)
	echo "$STEP ${now%.*}" >/tmp/step
	echo "=== STEP $STEP: $* (t=${now}s)"
}

watchdog() {
	while sleep 5; do
		[ -f /tmp/step ] || continue
		read -r name start </tmp/step
		now=$(cut -d. -f1 /proc/uptime)
		[ $((now - start)) -gt "$STEP_LIMIT" ] || continue
		echo "guest: step $name has run for $((now - start))s (limit ${STEP_LIMIT}s); blocked tasks:"
		echo w >/proc/sysrq-trigger
		sleep 1
		dmesg | grep -A 30 -E 'task:|blocked' | tail -n 120
		echo "VFSD-GUEST-RESULT: FAIL step=$name timed out after ${STEP_LIMIT}s"
		sync
		poweroff -f
	done
}

run() {
	"$@" || fail "command failed (exit $?): $*"
}

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

load_modules() {
	while read -r m; do
		[ -n "$m" ] || continue
		grep -q "^$m " /proc/modules && continue
		insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
	done </lib/modules/load-order
}

# fio_job NAME ARGS...: one time-based fio job on the data file; its JSON
# output goes to $OUT/NAME.json.
fio_job() {
	name=$1
	shift
	step "$name" "fio $*"
	drop_caches
	fio --name="$name" --directory="$W" --filename=data --size="${SIZE}m" \
		--time_based --runtime="$RT" --invalidate=1 --eta=never \
		--output-format=json --output="/tmp/$name.json" "$@" >/tmp/fio.err 2>&1 ||
		fail "fio $name failed: $(tail -n 20 /tmp/fio.err) $(tail -n 20 "/tmp/$name.json" 2>/dev/null)"
	run cp "/tmp/$name.json" "$OUT/$name.json"
	log "$name done"
}

job_dentry() {
	step dentry "stress-ng --dentry 1 --dentries 256 --timeout ${RT}s"
	drop_caches
	run mkdir -p "$W/stress"
	stress-ng --dentry 1 --dentries 256 --timeout "${RT}s" --temp-path "$W/stress" \
		--metrics-brief --yaml /tmp/dentry.yaml >/tmp/stress.out 2>&1 ||
		fail "stress-ng --dentry failed: $(tail -n 20 /tmp/stress.out)"
	sed 's/^/guest: stress-ng: /' /tmp/stress.out | grep -E 'metrc|info' | tail -n 4
	run cp /tmp/dentry.yaml "$OUT/dentry.yaml"
	run rm -rf "$W/stress"
}

# --- main ----------------------------------------------------------------

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
T0=$(cut -d' ' -f1 /proc/uptime)

for arg in $(cat /proc/cmdline); do
	case $arg in
	vfsd.tag=*) TAG=${arg#vfsd.tag=} ;;
	vfsd.bench.jobs=*) JOBS=${arg#vfsd.bench.jobs=} ;;
	vfsd.bench.runtime=*) RT=${arg#vfsd.bench.runtime=} ;;
	vfsd.bench.size=*) SIZE=${arg#vfsd.bench.size=} ;;
	vfsd.steplimit=*) STEP_LIMIT=${arg#vfsd.steplimit=} ;;
	esac
done

log "vfsd guest init (bench): kernel $(uname -r), $(nproc) cpus, boot took ${T0}s, jobs: $JOBS, ${RT}s each, ${SIZE} MiB file, tag: $TAG"

watchdog &
step modules "insmod $(tr '\n' ' ' </lib/modules/load-order)"
load_modules
step mount "mount -t virtiofs $TAG $MNT"
run mount -t virtiofs "$TAG" "$MNT"
grep -q " $MNT virtiofs " /proc/mounts || fail "$MNT is not a virtiofs mount after mount"
log "$(grep " $MNT " /proc/mounts)"
run mkdir -p "$W" "$OUT"

step layout "lay out the ${SIZE} MiB data file"
run fio --name=layout --directory="$W" --filename=data --size="${SIZE}m" --rw=write --bs=1m \
	--ioengine=psync --end_fsync=1 --eta=never --output=/dev/null

for job in $(echo "$JOBS" | tr ',' ' '); do
	cd / || fail "cd /"
	case $job in
	randread-4k-psync) fio_job "$job" --rw=randread --bs=4k --ioengine=psync ;;
	randwrite-4k-psync) fio_job "$job" --rw=randwrite --bs=4k --ioengine=psync ;;
	randread-4k-libaio16) fio_job "$job" --rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1 ;;
	randwrite-4k-libaio16) fio_job "$job" --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1 ;;
	seqread-1m) fio_job "$job" --rw=read --bs=1m --ioengine=psync ;;
	seqwrite-1m) fio_job "$job" --rw=write --bs=1m --ioengine=psync ;;
	dentry) job_dentry ;;
	*) STEP=args; fail "unknown job '$job' in vfsd.bench.jobs=$JOBS" ;;
	esac
done

step cleanup "remove the data file, unmount"
cd /
run rm -rf "$W"
sync
run umount "$MNT"
T1=$(cut -d' ' -f1 /proc/uptime)
finish 0 "bench jobs=$JOBS uptime=${T1}s"
