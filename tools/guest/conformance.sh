#!/bin/sh
# POSIX conformance battery of the vfsd guest rig (busybox sh).
#
# The same script runs twice (tools/guest/conformance_test.go,
# TestGuestConformance), and the two outputs are compared line by line:
#   - in the guest on the virtiofs mount: appended to the initramfs as
#     /conformance-init and booted with rdinit=/conformance-init (as PID 1 it
#     mounts the share on /mnt and runs the battery in /mnt/conformance);
#   - on the host on a directory of the host's file system:
#     `busybox sh conformance.sh DIR` with PATH holding only busybox applets
#     (and CONF_SH naming busybox's sh), so both runs use the same programs.
# Each check prints one line `CHECK name result`; a result is a value (a mode
# string, a link count, owner:group, "changed"/"same"), "ok", or, for a
# command that failed, the error text after the last ": " of its message
# (e.g. "Permission denied"). The battery runs as root; checks of an
# unprivileged user run through `su -s SH nobody -c CMD` (uid/gid 65534).
#
# Differences allowed between the two runs (with the reason; the table in
# conformance_test.go, allowedDiffs, is authoritative and must agree):
#   suid-nobody-write-sgid-nogx-mode: a kernel-version difference, not the
#     daemon's: the guest kernel (6.1) strips set-id bits on a write itself and
#     keeps S_ISGID without S_IXGRP (mode 2767) when nobody (not in the file's
#     group) writes; Linux 6.2+ strips it too, so a newer host shows -rwxrw-rwx
#     where the guest shows -rwxrwSrwx.
#
# Kernel command line in the guest: vfsd.tag=TAG.

CHECKS=0

check() {
	CHECKS=$((CHECKS + 1))
	echo "CHECK $1 $2"
}

# errmsg TEXT: the error description of a command's message (after the last
# ": " of its last line).
errmsg() {
	m=$(printf '%s\n' "$1" | tail -n 1)
	[ -n "$m" ] || m="failed without a message"
	echo "${m##*: }"
}

# try NAME CMD...: "ok", or the error of the failing command.
try() {
	n=$1
	shift
	if out=$("$@" 2>&1 >/dev/null); then
		check "$n" ok
	else
		check "$n" "$(errmsg "$out")"
	fi
}

# asnobody CMDLINE: runs CMDLINE with sh as uid/gid 65534 in the current directory.
asnobody() {
	su -s "$SH" nobody -c "$1"
}

# trynobody NAME CMDLINE
trynobody() {
	try "$1" asnobody "$2"
}

mode() { stat -c %A "$1"; }

battery() {
	D=$1
	export TZ=UTC0
	umask 022
	rm -rf "$D"
	mkdir -p "$D" || { echo "CHECK setup mkdir-failed"; return; }
	chmod 755 "$D"
	cd "$D" || { echo "CHECK setup cd-failed"; return; }

	# --- ownership and permissions ------------------------------------------
	echo secret >o600 && chmod 600 o600
	echo public >o644 && chmod 644 o644
	echo readonly >o444 && chmod 444 o444
	trynobody perm-nobody-read-0600 "cat o600"
	trynobody perm-nobody-read-0644 "cat o644"
	trynobody perm-nobody-write-0644 "echo x >>o644"
	trynobody perm-nobody-read-0444 "cat o444"
	try perm-root-write-0444 sh -c 'echo root-wrote >>o444'
	check perm-0444-content "$(tr '\n' ' ' <o444)"
	check perm-0444-mode-after "$(mode o444)"
	trynobody perm-nobody-chmod-foreign "chmod 666 o644"
	trynobody perm-nobody-chown-foreign "chown 65534 o644"
	trynobody perm-nobody-create-in-0755 "touch newfile"
	trynobody perm-nobody-unlink-in-0755 "rm -f o644"
	touch nb && chown 65534:65534 nb && chmod 600 nb
	trynobody perm-nobody-write-own "echo mine >nb"
	trynobody perm-nobody-read-own "cat nb"
	trynobody perm-nobody-chmod-own "chmod 640 nb"
	check perm-nobody-chmod-own-mode "$(mode nb)"
	trynobody perm-nobody-chown-own-to-root "chown 0 nb"
	trynobody perm-nobody-chgrp-own-to-root "chgrp 0 nb"
	check perm-own-after "$(stat -c %u:%g nb)"
	mkdir o777 && chmod 777 o777
	trynobody perm-nobody-create-in-0777 "touch o777/f && mkdir o777/d"
	check perm-nobody-new-file-owner "$(stat -c %u:%g:%A o777/f)"
	check perm-nobody-new-dir-owner "$(stat -c %u:%g:%A o777/d)"
	mkdir o700 && chmod 700 o700 && echo in >o700/f && chmod 644 o700/f
	trynobody perm-nobody-traverse-0700 "cat o700/f"
	trynobody perm-nobody-list-0700 "ls o700"
	mkdir o711 && chmod 711 o711 && echo in >o711/f && chmod 644 o711/f
	trynobody perm-nobody-traverse-0711 "cat o711/f"
	trynobody perm-nobody-list-0711 "ls o711"
	chown 0:65534 o600
	chmod 640 o600
	trynobody perm-nobody-read-group-0640 "cat o600"

	# --- sticky directory ----------------------------------------------------
	mkdir st && chmod 1777 st && echo root >st/rootf
	check sticky-mode "$(mode st)"
	trynobody sticky-nobody-rm-root-file "rm -f st/rootf"
	trynobody sticky-nobody-rename-root-file "mv st/rootf st/moved"
	trynobody sticky-nobody-write-root-file "echo x >>st/rootf"
	trynobody sticky-nobody-own-file "touch st/nbf && mv st/nbf st/nbf2 && rm st/nbf2"
	check sticky-root-file-still "$(cat st/rootf)"
	try sticky-root-rm-root-file rm st/rootf

	# --- setgid directory ----------------------------------------------------
	mkdir sg && chown 0:65534 sg && chmod 2775 sg
	check sgid-dir-mode "$(mode sg)"
	touch sg/f
	check sgid-new-file "$(stat -c %g:%A sg/f)"
	mkdir sg/sub
	check sgid-new-subdir "$(stat -c %g:%A sg/sub)"
	mkdir sg/sub/deeper
	check sgid-new-subsubdir "$(stat -c %g:%A sg/sub/deeper)"
	mkfifo sg/fifo
	check sgid-new-fifo "$(stat -c %g:%A sg/fifo)"
	mkdir sg2 && chmod 2777 sg2
	trynobody sgid-nobody-create "touch sg2/nf && mkdir sg2/nd"
	check sgid-nobody-new-file "$(stat -c %u:%g:%A sg2/nf)"
	check sgid-nobody-new-dir "$(stat -c %u:%g:%A sg2/nd)"
	touch sgnm && chown 65534:0 sgnm
	trynobody sgid-nonmember-chmod-g+s "chmod 2755 sgnm"
	check sgid-nonmember-chmod-mode "$(mode sgnm)"

	# --- link counts ---------------------------------------------------------
	mkdir lc
	check nlink-empty-dir "$(stat -c %h lc)"
	mkdir lc/a lc/b lc/c
	check nlink-dir-3-subdirs "$(stat -c %h lc)"
	touch lc/file
	check nlink-dir-after-file "$(stat -c %h lc)"
	rmdir lc/b
	check nlink-dir-after-rmdir "$(stat -c %h lc)"
	mv lc/a lc/c/a
	check nlink-dir-after-move-out "$(stat -c %h lc):$(stat -c %h lc/c)"
	check nlink-file "$(stat -c %h lc/file)"
	ln lc/file lc/link1
	check nlink-after-link "$(stat -c %h lc/file)"
	ln lc/file lc/c/link2
	check nlink-after-link2 "$(stat -c %h lc/file):$(stat -c %h lc/c/link2)"
	rm lc/link1
	check nlink-after-unlink "$(stat -c %h lc/file)"
	rm lc/file
	check nlink-last-name "$(stat -c %h lc/c/link2)"
	try nlink-link-dir ln lc/c lc/dirlink
	try nlink-rmdir-nonempty rmdir lc/c
	rm -r lc/c
	check nlink-after-rm-r "$(stat -c %h lc)"

	# --- timestamps ----------------------------------------------------------
	echo a >ts
	touch -d '2001-02-03 04:05:06' ts
	check ts-touch-d "$(stat -c %Y ts)"
	check ts-touch-d-full "$(stat -c %y ts)"
	echo b >>ts
	[ "$(stat -c %Y ts)" = 981173106 ] && r=same || r=changed
	check ts-mtime-on-write "$r"
	touch -d '2001-02-03 04:05:06' ts
	: >ts
	[ "$(stat -c %Y ts)" = 981173106 ] && r=same || r=changed
	check ts-mtime-on-truncate "$r"
	mkdir tsd && touch -d '2001-02-03 04:05:06' tsd
	touch tsd/new
	[ "$(stat -c %Y tsd)" = 981173106 ] && r=same || r=changed
	check ts-dir-mtime-on-create "$r"
	touch -d '2001-02-03 04:05:06' tsd
	rm tsd/new
	[ "$(stat -c %Y tsd)" = 981173106 ] && r=same || r=changed
	check ts-dir-mtime-on-unlink "$r"
	echo c >tc && echo c >tr && echo c >tl && echo c >tw
	touch -d '2001-02-03 04:05:06' tc tr tl tw
	c_tc=$(stat -c %Z tc) c_tr=$(stat -c %Z tr) c_tl=$(stat -c %Z tl) c_tw=$(stat -c %Z tw)
	sleep 1
	chmod 600 tc
	mv tr tr2
	ln tl tl2
	echo more >>tw
	[ "$(stat -c %Z tc)" = "$c_tc" ] && r=same || r=changed
	check ts-ctime-on-chmod "$r"
	check ts-mtime-on-chmod "$(stat -c %Y tc)"
	[ "$(stat -c %Z tr2)" = "$c_tr" ] && r=same || r=changed
	check ts-ctime-on-rename "$r"
	check ts-mtime-on-rename "$(stat -c %Y tr2)"
	[ "$(stat -c %Z tl)" = "$c_tl" ] && r=same || r=changed
	check ts-ctime-on-link "$r"
	[ "$(stat -c %Z tw)" = "$c_tw" ] && r=same || r=changed
	check ts-ctime-on-write "$r"
	touch -d '2001-02-03 04:05:06' tc
	touch -r tc tref
	check ts-touch-r "$(stat -c %Y tref)"
	touch -t 199912312359.59 tt
	check ts-touch-t "$(stat -c %y tt)"

	# --- rename --------------------------------------------------------------
	echo one >ra && echo two >rb
	try ren-over-file mv ra rb
	check ren-over-file-result "$(cat rb):$([ -e ra ] && echo ra-exists || echo ra-gone)"
	mkdir rd1 rd2 && touch rd1/x
	try ren-dir-over-empty-dir mv -T rd1 rd2
	check ren-dir-over-empty-dir-result "$(ls rd2):$([ -e rd1 ] && echo rd1-exists || echo rd1-gone)"
	mkdir rd3 rd4 && touch rd4/y
	try ren-dir-over-nonempty-dir mv -T rd3 rd4
	check ren-dir-over-nonempty-result "$(ls rd4):$([ -d rd3 ] && echo rd3-exists || echo rd3-gone)"
	echo self >rf
	try ren-onto-itself mv rf rf
	check ren-onto-itself-result "$(cat rf)"
	ln rf rfl
	try ren-onto-hardlink mv rf rfl
	check ren-onto-hardlink-result "$([ -e rf ] && echo rf-exists || echo rf-gone):$(stat -c %h rfl)"
	mkdir -p rs/sub
	try ren-into-own-subdir mv rs rs/sub/x
	try ren-into-itself mv -T rs rs/sub
	try ren-file-over-dir mv -T rfl rd2
	try ren-dir-over-file mv -T rd4 rb
	try ren-missing mv nosuch nosuch2
	try ren-over-symlink sh -c 'ln -s rb rsl && echo new >rnew && mv rnew rsl'
	check ren-over-symlink-result "$(stat -c %F rsl):$(cat rb)"
	try ren-dot mv -T rs/. rs2

	# --- open flags through the shell ----------------------------------------
	printf abcdef >of
	printf x >of
	check open-trunc "$(wc -c <of | tr -d ' ')"
	printf yz >>of
	check open-append "$(cat of)"
	out=$( (set -C; echo clobber >of) 2>&1) && check open-noclobber-existing ok ||
		check open-noclobber-existing "$(errmsg "$out")"
	check open-noclobber-content "$(cat of)"
	out=$( (set -C; echo fresh >of-new) 2>&1) && check open-noclobber-new ok ||
		check open-noclobber-new "$(errmsg "$out")"
	out=$( (set -C; echo forced >|of) 2>&1) && check open-noclobber-force ok ||
		check open-noclobber-force "$(errmsg "$out")"
	check open-noclobber-force-content "$(cat of)"
	mkdir odir
	out=$( (echo x >odir) 2>&1) && check open-write-dir ok || check open-write-dir "$(errmsg "$out")"
	out=$( (cat <nosuchfile) 2>&1) && check open-read-missing ok || check open-read-missing "$(errmsg "$out")"
	try open-enotdir cat of/x

	# --- umask ---------------------------------------------------------------
	(
		umask 027
		touch um-f
		echo x >um-r
		mkdir um-d
		mkfifo um-p
		mkdir -p um-p1/p2
	)
	check umask-touch "$(mode um-f)"
	check umask-redirect "$(mode um-r)"
	check umask-mkdir "$(mode um-d)"
	check umask-mkfifo "$(mode um-p)"
	check umask-mkdir-p "$(mode um-p1):$(mode um-p1/p2)"
	(umask 0 && touch um0 && mkdir um0d)
	check umask-0 "$(mode um0):$(mode um0d)"

	# --- setuid/setgid bits and writes ---------------------------------------
	echo a >su1 && chmod u+s su1
	check suid-chmod-u+s "$(mode su1)"
	echo b >>su1
	check suid-root-write "$(mode su1)"
	echo a >su2 && chmod 4755 su2
	echo b >>su2
	check suid-exec-root-write "$(mode su2)"
	echo a >su3 && chmod 6777 su3
	trynobody suid-nobody-write "echo n >>su3"
	check suid-nobody-write-mode "$(mode su3)"
	echo a >su4 && chmod 4777 su4
	trynobody suid-nobody-truncate "truncate -s 0 su4"
	check suid-nobody-truncate-mode "$(mode su4)"
	echo a >su5 && chmod 2767 su5
	trynobody suid-nobody-write-sgid-nogx "echo n >>su5"
	check suid-nobody-write-sgid-nogx-mode "$(mode su5)"
	echo a >su6 && chmod 6755 su6
	chown 65534 su6
	check suid-root-chown "$(stat -c %u:%A su6)"
	echo a >su7 && chmod 6755 su7
	truncate -s 100 su7
	check suid-root-truncate "$(mode su7)"

	cd / || true
	rm -rf "$D" && check cleanup ok || check cleanup failed
	echo "CONFORMANCE-DONE $CHECKS"
}

# --- guest: run as /conformance-init (PID 1) -------------------------------

guest_main() {
	export PATH=/usr/bin:/usr/sbin:/bin:/sbin
	export HOME=/root TERM=dumb TZ=UTC0
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev 2>/dev/null
	mount -t tmpfs tmpfs /tmp
	exec </dev/console >/dev/console 2>&1
	TAG=vfsd
	for arg in $(cat /proc/cmdline); do
		case $arg in
		vfsd.tag=*) TAG=${arg#vfsd.tag=} ;;
		esac
	done
	echo "guest: vfsd guest init: conformance battery, kernel $(uname -r), tag: $TAG"
	res=PASS
	while read -r m; do
		[ -n "$m" ] || continue
		grep -q "^$m " /proc/modules || insmod "/lib/modules/$m.ko" || res="FAIL insmod $m"
	done </lib/modules/load-order
	if [ $res = PASS ]; then
		mount -t virtiofs "$TAG" /mnt || res="FAIL mount -t virtiofs $TAG /mnt"
	fi
	if [ $res = PASS ]; then
		SH=/bin/sh
		T0=$(cut -d' ' -f1 /proc/uptime)
		(battery /mnt/conformance)
		T1=$(cut -d' ' -f1 /proc/uptime)
		echo "guest: battery from ${T0}s to ${T1}s"
		umount /mnt || res="FAIL umount"
	fi
	if [ "$res" = PASS ]; then
		echo "VFSD-GUEST-RESULT: PASS steps=conformance"
	else
		echo "VFSD-GUEST-RESULT: $res"
	fi
	sync
	poweroff -f
	echo o >/proc/sysrq-trigger
	sleep 30
	exit 1
}

if [ "$$" = 1 ]; then
	guest_main
fi
[ $# = 1 ] || {
	echo "usage: busybox sh conformance.sh DIR (DIR is removed and re-created)" >&2
	exit 2
}
SH=${CONF_SH:-/bin/sh}
battery "$1"
