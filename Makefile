# vfsd — build, test, guest rig, demo.
#
#   make deps         host packages (apt), the guest kernel (build/kernel/), go modules
#   make build        build/vfsd and the other binaries under build/
#   make initramfs    build/initramfs.cpio.gz for the guest
#   make test         deps, vet, unit + host end-to-end tests, then the guest tests (not skippable)
#   make test-unit    go vet + go test ./... (no guest boot)
#   make test-guest   boot the guest on $(DAEMON) and run the verifying workloads
#   make demo         boot the guest on vfsd with build/demo-share and show what happens
#   make bench        benchmarks (bench/ harness when present, else the host load generator)
#   make clean
#
# DAEMON=vfsd|virtiofsd selects the virtio-fs daemon the guest talks to
# (/usr/lib/qemu/virtiofsd is the reference). It defaults to vfsd once cmd/vfsd exists.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:

# Go lives in /usr/local/go on these machines; a non-interactive shell may
# not have it on PATH (the recipes' scripts and tests run go too).
ifeq ($(shell command -v go 2>/dev/null),)
ifneq ($(wildcard /usr/local/go/bin/go),)
export PATH := /usr/local/go/bin:$(PATH)
endif
endif
GO ?= go
BUILD := build
APT_PACKAGES := qemu-system-x86 fio busybox-static stress-ng cpio util-linux attr
# Pinned guest kernel; fetch-kernel.sh falls back to what linux-image-amd64 depends on
# when the archive no longer has it.
KERNEL_PKG ?= linux-image-6.1.0-56-amd64
KERNEL_DIR := $(BUILD)/kernel
INITRAMFS := $(BUILD)/initramfs.cpio.gz
VFSD_BIN := $(BUILD)/vfsd
# vfsd is linked statically (pure Go): --sandbox=chroot re-executes it inside
# the shared directory, where no dynamic loader can be found.
GO_VFSD := CGO_ENABLED=0 $(GO)

HAVE_VFSD := $(if $(wildcard cmd/vfsd/*.go),yes,)
DAEMON ?= $(if $(HAVE_VFSD),vfsd,virtiofsd)
GUEST_TIMEOUT ?= 15m
# Binaries besides vfsd: every tools/* command that exists (package main).
TOOL_CMDS = $(shell $(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./tools/... ./bench/... 2>/dev/null | grep -v '^vfsd/tools/guest/cmd/')

.PHONY: all deps deps-apt deps-go kernel build initramfs test test-unit test-fuzz test-guest test-audit test-guest-ref \
	demo bench clean

all: build initramfs

# --- dependencies ----------------------------------------------------------

deps: deps-apt kernel deps-go

# apt-get update only when a package is missing; install only what is missing.
deps-apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "deps: host packages present"; \
	fi

kernel: $(KERNEL_DIR)/release

$(KERNEL_DIR)/release: tools/guest/fetch-kernel.sh
	@mkdir -p $(BUILD)
	tools/guest/fetch-kernel.sh $(KERNEL_DIR) $(KERNEL_PKG)
	@touch $@

deps-go:
	$(GO) mod download

# --- build -----------------------------------------------------------------

build:
	@mkdir -p $(BUILD)
	@if [ -n "$(HAVE_VFSD)" ]; then \
		echo "CGO_ENABLED=0 go build -o $(VFSD_BIN) ./cmd/vfsd"; \
		$(GO_VFSD) build -o $(VFSD_BIN) ./cmd/vfsd; \
	else \
		echo "build: cmd/vfsd has no Go files yet; skipping $(VFSD_BIN)"; \
	fi
	@for pkg in $(TOOL_CMDS); do \
		echo "go build -o $(BUILD)/$${pkg##*/} $$pkg"; \
		$(GO) build -o $(BUILD)/$${pkg##*/} $$pkg; \
	done

initramfs: $(INITRAMFS)

$(INITRAMFS): $(KERNEL_DIR)/release tools/guest/init tools/guest/mkinitramfs.sh
	tools/guest/mkinitramfs.sh $(KERNEL_DIR) $@

# --- tests -----------------------------------------------------------------

# Both halves run even when the first fails; the exit status is a failure if
# either failed. Skipped tests are listed at the end (never silent).
test: deps
	@rc=0; fails=; \
	rm -f $(AUDIT_FILES); \
	$(MAKE) --no-print-directory test-unit || fails="$$fails test-unit"; \
	$(MAKE) --no-print-directory test-fuzz || fails="$$fails test-fuzz"; \
	$(MAKE) --no-print-directory test-guest || fails="$$fails test-guest"; \
	$(MAKE) --no-print-directory test-audit || fails="$$fails test-audit"; \
	echo; echo "==== make test summary"; \
	grep -h -- '--- SKIP' $(BUILD)/test-unit.log $(BUILD)/test-guest.log 2>/dev/null | sed 's/^ */skipped: /' || true; \
	if [ -z "$$fails" ]; then \
		echo "make test: PASS (unit, host end-to-end, fuzz, guest tests and the syscall audit)"; \
	else \
		echo "make test: FAIL in$$fails"; exit 1; \
	fi

# Unit and host end-to-end tests. The guest boot tests in tools/guest skip here
# (VFSD_GUEST_BOOT=0, they say so) because test-guest runs them right after.
UNIT_TIMEOUT ?= 10m
test-unit:
	@mkdir -p $(BUILD)
	$(GO) vet ./...
	$(GO) build -o $(BUILD)/testsum ./.ci/testsum
	$(GO) build -o $(BUILD)/sysaudit ./tools/sysaudit
	@# Both runs always happen; testsum judges them from the test events.
	{ VFSD_GUEST_BOOT=0 $(GO) test -json -timeout $(UNIT_TIMEOUT) $$($(GO) list ./... | grep -v -x -e vfsd/tools/e2e -e vfsd/tools/crash) || true; \
	  $(AUDIT) -save $(BUILD)/audit-host.json -- \
	    $(GO) test -json -count=1 -timeout $(UNIT_TIMEOUT) ./tools/e2e ./tools/crash || true; \
	} 2>&1 | $(BUILD)/testsum -log $(BUILD)/test-unit.log

# The guest tests (TestGuest: the full step list; TestGuestWorkerCrash: vfsd's
# worker killed during I/O). VFSD_GUEST_REQUIRED=1 turns a missing kernel,
# initramfs, QEMU or daemon into a failure instead of a skip.
test-guest: initramfs
	@mkdir -p $(BUILD)
	@if [ "$(DAEMON)" = vfsd ]; then \
		echo "CGO_ENABLED=0 go build -o $(VFSD_BIN) ./cmd/vfsd"; $(GO_VFSD) build -o $(VFSD_BIN) ./cmd/vfsd; \
	fi
	VFSD_GUEST_DAEMON=$(DAEMON) VFSD_BIN=$(abspath $(VFSD_BIN)) \
	VFSD_GUEST_KERNEL=$(abspath $(KERNEL_DIR)/vmlinuz) VFSD_GUEST_INITRAMFS=$(abspath $(INITRAMFS)) \
	VFSD_GUEST_REQUIRED=1 \
		$(AUDIT) -save $(BUILD)/audit-guest.json -- \
		$(GO) test -count=1 -v -timeout $(GUEST_TIMEOUT) -run 'TestGuest' ./tools/guest 2>&1 | tee $(BUILD)/test-guest.log

# The syscall audit (tools/sysaudit, eBPF on raw_syscalls:sys_enter): the
# host end-to-end and crash tests (test-unit) and the guest tests
# (test-guest) run under it, each saving the syscalls vfsd's workers made
# after installing their seccomp filter; this judges the union: a syscall
# outside the allowlist, or an allowlist entry never used (unless marked
# Rare in seccomp/rules.go, with the reason), fails. Where BPF is
# unavailable (not root, old kernel) the runs say so and this reports
# SKIPPED. Run test-unit and test-guest first.
AUDIT = $(BUILD)/sysaudit -optional -q
AUDIT_FILES = $(BUILD)/audit-host.json $(BUILD)/audit-guest.json
test-audit:
	$(GO) build -o $(BUILD)/sysaudit ./tools/sysaudit
	$(BUILD)/sysaudit -strict -merge $(AUDIT_FILES)

# Every fuzz target runs a fixed number of executions (about 10 s each on
# the 2-core dev machine) on top of its committed corpus (testdata/fuzz);
# `go test` alone replays only the corpus. Counts, not durations: a
# duration -fuzztime can fail with a bare "context deadline exceeded" in Go
# 1.26 (golang/go#75804, fixed in 1.27). FUZZSCALE multiplies the counts.
FUZZSCALE ?= 1
FUZZ_TARGETS = vring:FuzzPop:250000 vring/inflight:FuzzResume:500000 engine/fuse:FuzzDecode:500000 \
	engine/vhostuser:FuzzMessage:120000 engine/passthrough:FuzzHandle:150000 maptable:FuzzOpen:120000 \
	engine/journal:FuzzJournalMap:120000
test-fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=./$${t%%:*}; rest=$${t#*:}; fn=$${rest%%:*}; n=$$(( $${rest##*:} * $(FUZZSCALE) )); \
		echo "go test -run '^$$' -fuzz '^$$fn\$$' -fuzztime $${n}x $$pkg"; \
		start=$$(date +%s); \
		if out=$$($(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $${n}x -fuzzminimizetime 5x $$pkg 2>&1); \
		then echo "$$out" | grep -E '^ok' | sed "s/\$$/ ($$(( $$(date +%s) - start )) s wall)/"; else echo "$$out"; exit 1; fi; \
	done

# The same guest tests against the reference daemon, to tell a rig problem from a vfsd one.
test-guest-ref:
	$(MAKE) test-guest DAEMON=virtiofsd

# --- demo, bench -----------------------------------------------------------

demo: deps initramfs
	@if [ "$(DAEMON)" = vfsd ]; then \
		mkdir -p $(BUILD); echo "CGO_ENABLED=0 go build -o $(VFSD_BIN) ./cmd/vfsd"; $(GO_VFSD) build -o $(VFSD_BIN) ./cmd/vfsd; \
	fi
	$(GO) run ./tools/guest/cmd/demo -daemon $(DAEMON) -vfsd $(abspath $(VFSD_BIN)) \
		-kernel $(abspath $(KERNEL_DIR)/vmlinuz) -initramfs $(abspath $(INITRAMFS)) \
		-share $(abspath $(BUILD)/demo-share) -workdir $(abspath $(BUILD)/demo)

# The benchmark harness (bench/) is another engineer's; until it has a main
# package this runs the host load generator (tools/loadgen) on $(DAEMON).
# BENCH_ARGS are passed through (e.g. BENCH_ARGS='-op read4k -depth 32').
BENCH_ARGS ?=
bench: build
	@main=$$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./bench/... 2>/dev/null | head -n1); \
	if [ -n "$$main" ]; then \
		echo "go run $$main $(BENCH_ARGS)"; $(GO) run $$main $(BENCH_ARGS); \
	elif $(GO) list -f '{{.Name}}' ./tools/loadgen 2>/dev/null | grep -qx main; then \
		echo "bench: no bench/ main package yet; running tools/loadgen on $(DAEMON)"; \
		$(GO) run ./tools/loadgen -daemon $(DAEMON) $(BENCH_ARGS); \
	else \
		echo "bench: neither bench/ nor tools/loadgen has a main package yet" >&2; exit 1; \
	fi

clean:
	rm -rf $(BUILD)

# --- install ---------------------------------------------------------------

# make install [PREFIX=/usr/local] [DESTDIR=]: the binary in $(LIBEXECDIR)
# with a symlink in $(BINDIR), the systemd units, libvirt's vhost-user
# description (50-vfsd.json) and the manual page generated from the option
# table (vfsd --man). Paths inside the installed files are without DESTDIR.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
SYSTEMDUNITDIR ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/systemd/system,$(PREFIX)/lib/systemd/system)
INSTALL_BUILD := $(BUILD)/install
INSTALL ?= install

.PHONY: install
install:
	@mkdir -p $(INSTALL_BUILD)
	$(GO_VFSD) build -o $(INSTALL_BUILD)/vfsd ./cmd/vfsd
	$(INSTALL_BUILD)/vfsd --man > $(INSTALL_BUILD)/vfsd.1
	sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' packaging/systemd/vfsd@.service.in > $(INSTALL_BUILD)/vfsd@.service
	sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' share/qemu/vhost-user/50-vfsd.json.in > $(INSTALL_BUILD)/50-vfsd.json
	$(INSTALL) -D -m 0755 $(INSTALL_BUILD)/vfsd $(DESTDIR)$(LIBEXECDIR)/vfsd
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	ln -sfn $(LIBEXECDIR)/vfsd $(DESTDIR)$(BINDIR)/vfsd
	$(INSTALL) -D -m 0644 $(INSTALL_BUILD)/vfsd@.service $(DESTDIR)$(SYSTEMDUNITDIR)/vfsd@.service
	$(INSTALL) -D -m 0644 packaging/systemd/vfsd@.socket $(DESTDIR)$(SYSTEMDUNITDIR)/vfsd@.socket
	$(INSTALL) -D -m 0644 $(INSTALL_BUILD)/50-vfsd.json $(DESTDIR)$(DATADIR)/qemu/vhost-user/50-vfsd.json
	$(INSTALL) -D -m 0644 $(INSTALL_BUILD)/vfsd.1 $(DESTDIR)$(MANDIR)/man1/vfsd.1
