#!/bin/sh
# /crash-init of the vfsd guest (busybox sh): the worker-crash scenario.
#
# Not part of the Makefile's initramfs: tools/guest/crash_test.go appends a
# small cpio archive holding this file as /crash-init to build/initramfs.cpio.gz
# and boots with rdinit=/crash-init, so the regular /init and its steps stay as
# they are. It reuses the conventions of /init: "=== STEP name" lines, one
# result line (the marker below), a per-step watchdog, poweroff at the end.
#
# Scenario (while the host SIGKILLs vfsd's worker after every
# "vfsd-crash: kill" line this script prints, every 2-4 s):
#   - a background process holds flock(LOCK_EX) on crash/lockfile for the
#     whole run ("vfsd-crash: lock held crash/lockfile" tells the host, which
#     then checks the host file with flock LOCK_NB until "vfsd-crash: releasing
#     lock"); after every kill the guest checks with `flock -n` that nobody
#     else can take it;
#   - fio --verify=crc32c (O_DIRECT random writes, buffered sequential writes),
#     then a second pass with --verify_only after dropping the page cache, so
#     the data is read back through the (restarted) daemon;
#   - at the same time a metadata loop: create, rename, hard link, unlink,
#     setfattr/getfattr, O_APPEND, mkdir/rmdir, each result checked.
# Rounds repeat until at least vfsd.crashkills kill lines were printed (at
# least one round, at most 30 or vfsd.crashkills if more: a round sees about
# two kills). Any failed command, a lock that could be taken,
# or a virtiofs/fuse error in the kernel log fails the run.
#
# Kernel command line: vfsd.tag=TAG, vfsd.crashkills=N (default 8; 0: no kill
# lines, to try the scenario on a daemon that cannot survive kills),
# vfsd.steplimit=SECONDS (default 200, or 6 s per kill if more: a kill comes
# every 2-4 s).

export PATH=/usr/bin:/usr/sbin:/bin:/sbin
export HOME=/root TERM=dumb TZ=UTC0
umask 022

MNT=/mnt
STEP=init
TAG=vfsd
KILLS=8
STEP_LIMIT=
W=$MNT/crash

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
	touch /tmp/stop
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

# err MSG: a background loop's failure, picked up by the main script.
err() {
	echo "$*" >>/tmp/errors
	echo "guest: ERROR: $*"
}

# lock_taken: true when a new open file description gets the lock, i.e. the
# holder's flock was lost.
lock_taken() {
	flock -n -x "$W/lockfile" true
}

# killer: prints the host's kill trigger every 2, 3 or 4 seconds while
# /tmp/work exists, and checks the lock after each kill.
killer() {
	n=0
	gap=2
	while [ -e /tmp/work ] && [ ! -e /tmp/stop ]; do
		n=$((n + 1))
		echo $n >/tmp/kills
		echo "vfsd-crash: kill $n (t=$(cut -d' ' -f1 /proc/uptime)s)"
		sleep 1
		if lock_taken; then
			err "flock -n got crash/lockfile after kill $n: the holder's lock was lost"
		else
			echo "guest: lock still held after kill $n"
		fi
		sleep $((gap - 1))
		gap=$((gap % 3 + 2))
	done
}

# meta_loop: metadata operations with a check after each, until /tmp/stop.
meta_loop() {
	D=$W/meta
	mkdir -p "$D" || { err "meta: mkdir $D"; return; }
	i=0
	while [ ! -e /tmp/stop ]; do
		i=$((i + 1))
		echo "meta $i" >"$D/a.$i" || { err "meta $i: create a.$i"; return; }
		mv "$D/a.$i" "$D/b.$i" || { err "meta $i: rename a.$i b.$i"; return; }
		[ -e "$D/a.$i" ] && { err "meta $i: a.$i exists after rename"; return; }
		[ "$(cat "$D/b.$i")" = "meta $i" ] || { err "meta $i: b.$i content '$(cat "$D/b.$i")'"; return; }
		mkdir "$D/d.$i" || { err "meta $i: mkdir d.$i"; return; }
		ln "$D/b.$i" "$D/d.$i/hl" || { err "meta $i: link"; return; }
		[ "$(stat -c %h "$D/b.$i")" = 2 ] || { err "meta $i: nlink $(stat -c %h "$D/b.$i") after link, want 2"; return; }
		rm "$D/b.$i" || { err "meta $i: unlink b.$i"; return; }
		[ "$(stat -c %h "$D/d.$i/hl")" = 1 ] || { err "meta $i: nlink $(stat -c %h "$D/d.$i/hl") after unlink, want 1"; return; }
		setfattr -n user.i -v "v$i" "$D/d.$i/hl" || { err "meta $i: setfattr"; return; }
		[ "$(getfattr --only-values -n user.i "$D/d.$i/hl")" = "v$i" ] || { err "meta $i: getfattr"; return; }
		echo "appended" >>"$D/d.$i/hl" || { err "meta $i: append"; return; }
		[ "$(wc -l <"$D/d.$i/hl")" = 2 ] || { err "meta $i: $(wc -l <"$D/d.$i/hl") lines after one append, want 2"; return; }
		mkdir "$D/d.$i" 2>/dev/null && { err "meta $i: mkdir of an existing directory succeeded"; return; }
		rm -r "$D/d.$i" || { err "meta $i: rm -r d.$i"; return; }
		[ -e "$D/d.$i" ] && { err "meta $i: d.$i exists after rm -r"; return; }
		left=$(ls -A "$D" | wc -l)
		[ "$left" = 0 ] || { err "meta $i: $left entries left in meta/: $(ls -A "$D" | head -n 5 | tr '\n' ' ')"; return; }
		echo $i >/tmp/meta.count
	done
}

FIO_JOBS="--directory=$W/fio --ioengine=psync --verify=crc32c --verify_fatal=1 --verify_state_save=0
	--name=direct-rand --rw=randwrite --bs=4k --size=2m --direct=1
	--name=buffered-seq --rw=write --bs=64k --size=4m --end_fsync=1"

# --- main ----------------------------------------------------------------

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
echo 0 >/proc/sys/kernel/printk_ratelimit 2>/dev/null

for arg in $(cat /proc/cmdline); do
	case $arg in
	vfsd.tag=*) TAG=${arg#vfsd.tag=} ;;
	vfsd.crashkills=*) KILLS=${arg#vfsd.crashkills=} ;;
	vfsd.steplimit=*) STEP_LIMIT=${arg#vfsd.steplimit=} ;;
	esac
done
MAX_ROUNDS=30
[ "$KILLS" -gt $MAX_ROUNDS ] && MAX_ROUNDS=$KILLS
if [ -z "$STEP_LIMIT" ]; then
	STEP_LIMIT=200
	[ $((6 * KILLS)) -gt $STEP_LIMIT ] && STEP_LIMIT=$((6 * KILLS))
fi

log "vfsd guest init: crash scenario, kernel $(uname -r), $(nproc) cpus, tag: $TAG, kills: $KILLS"
watchdog &

step modules "insmod $(tr '\n' ' ' </lib/modules/load-order)"
while read -r m; do
	[ -n "$m" ] || continue
	grep -q "^$m " /proc/modules || insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done </lib/modules/load-order
step mount "mount -t virtiofs $TAG $MNT"
run mount -t virtiofs "$TAG" "$MNT"
grep -q " $MNT virtiofs " /proc/mounts || fail "$MNT is not a virtiofs mount"

step crash-lock "hold flock(LOCK_EX) on crash/lockfile in the background"
rm -rf "$W"
run mkdir -p "$W/fio"
: >"$W/lockfile" || fail "create lockfile"
flock -n -x "$W/lockfile" sh -c 'touch /tmp/lock.held; while [ ! -e /tmp/lock.release ]; do sleep 0.2; done' &
HOLDER=$!
i=0
while [ ! -e /tmp/lock.held ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && fail "lock holder did not start"
	sleep 0.1
done
lock_taken && fail "flock -n got the lock the holder has"
echo "vfsd-crash: lock held crash/lockfile"

step crash-work "fio verify + metadata loop while the worker is killed every 2-4 s (at least $KILLS kills)"
echo 0 >/tmp/kills
echo 0 >/tmp/meta.count
: >/tmp/errors
touch /tmp/work
if [ "$KILLS" -gt 0 ]; then
	killer &
	KILLER=$!
fi
meta_loop &
META=$!
round=0
while :; do
	round=$((round + 1))
	# shellcheck disable=SC2086
	fio --output-format=terse --terse-version=3 $FIO_JOBS >/tmp/fio.out 2>&1 ||
		fail "fio round $round failed: $(tail -n 20 /tmp/fio.out)"
	awk -F';' 'NF > 47 { n++; if ($5 != 0) bad = 1 } END { exit bad || n != 2 }' /tmp/fio.out ||
		fail "fio round $round reported errors: $(cat /tmp/fio.out)"
	drop_caches
	# shellcheck disable=SC2086
	fio --output-format=terse --terse-version=3 --verify_only $FIO_JOBS >/tmp/fio-verify.out 2>&1 ||
		fail "fio --verify_only round $round (read back after drop_caches) failed: $(tail -n 20 /tmp/fio-verify.out)"
	log "fio round $round: written, verified, read back and verified again; kills so far $(cat /tmp/kills), meta iterations $(cat /tmp/meta.count)"
	[ -s /tmp/errors ] && fail "$(head -n 3 /tmp/errors)"
	[ "$(cat /tmp/kills)" -ge "$KILLS" ] && break
	[ $round -ge $MAX_ROUNDS ] && break
done
rm -f /tmp/work
[ -n "${KILLER:-}" ] && wait "$KILLER"
touch /tmp/stop
wait "$META"
[ -s /tmp/errors ] && fail "$(head -n 3 /tmp/errors)"
kills=$(cat /tmp/kills)
[ "$kills" -ge "$KILLS" ] || fail "only $kills kill triggers in $round rounds, want $KILLS"
[ "$(cat /tmp/meta.count)" -ge 3 ] || fail "metadata loop ran only $(cat /tmp/meta.count) iterations"
log "crash-work: $round fio rounds, $(cat /tmp/meta.count) metadata iterations, $kills kill triggers"

step crash-unlock "the lock is still held; release it; then it can be taken"
lock_taken && fail "flock -n got the lock after the crashes: the holder's lock was lost"
kill -0 "$HOLDER" 2>/dev/null || fail "the lock holder died"
echo "vfsd-crash: releasing lock"
sleep 2
touch /tmp/lock.release
wait "$HOLDER" || fail "the lock holder failed"
lock_taken || fail "flock -n cannot get the lock after the holder released it"

step crash-clean "kernel log, cleanup, umount"
if dmesg | grep -iE 'virtio.?fs|fuse' | grep -iE 'error|fail|timeout|abort|bad'; then
	fail "virtiofs/fuse errors in the kernel log"
fi
run rm -rf "$W"
cd /
run umount "$MNT"
T1=$(cut -d' ' -f1 /proc/uptime)
finish 0 "steps=crash kills=$kills rounds=$round meta=$(cat /tmp/meta.count) uptime=${T1}s"
