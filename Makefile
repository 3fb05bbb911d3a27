# The two commands: `make demo` and `make test`. Both install what they need
# on a fresh Debian machine first (scripts/setup.sh), then do their job.

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build test demo demo-pi demo-vms man bench install install-files

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --locked

# The whole Nix matrix (scripts/test.sh); `make test NIX=sid TARGET_NIX=bookworm`
# runs one row: the deployer on sid's Nix, the targets on bookworm's
# (TARGET_INIT=systemd: every host booting systemd; PROTOCOL=daemon: every
# copy over the daemon protocol).
test: build
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) xtask gen --check
	$(CARGO) xtask layers
	bash scripts/shellcheck.sh
	NIX="$(NIX)" TARGET_NIX="$(TARGET_NIX)" TARGET_INIT="$(TARGET_INIT)" PROTOCOL="$(PROTOCOL)" bash scripts/test.sh

# web1 boots real systemd and runs sid's Nix (2.34); the deployer runs this
# machine's.
demo: build
	NIXPIPE_TEST_TARGET_NIX=sid target/debug/nixpipe-testbed --systemd web1 -- bash scripts/demo.sh

# The Raspberry Pi workflow: an aarch64-linux system built here through
# qemu-user, bundled, and switched on an aarch64 host (qemu too) as deploy,
# with one sudo password.
demo-pi: build
	target/debug/nixpipe-testbed --aarch64 pi -- bash scripts/demo-pi.sh

# The nixos-build-vms workflow with real VMs under qemu: a network of three
# started together from nixpipe-eval's runners, then updated in place.
demo-vms: build
	target/debug/nixpipe-testbed --vms -- bash scripts/demo-vms.sh

# Regenerate man/ and completions/ from the clap definitions.
man:
	$(CARGO) xtask gen

# Benchmarks on testbed hosts, against nix-copy-closure, nix copy and tar;
# prints markdown tables (see the README's Performance section).
bench: setup
	$(CARGO) build --release --workspace --locked
	target/release/nixpipe-bench

# Installing without Nix's package set: the commands, their man pages and
# their bash, zsh and fish completions where the FHS and each shell look.
#   make install PREFIX=/usr/local DESTDIR=/tmp/stage
# install-files installs what BUILT holds (target/release by default),
# without building: the tests install their debug build with it.
PREFIX ?= /usr/local
BUILT ?= target/release
COMMANDS := nixpipe-eval nixpipe-copy nixpipe-activate nixpipe-bundle nixpipe-microvm nixpipe-status nixpipe-vm

install:
	$(CARGO) build --release --locked $(addprefix --package=,$(COMMANDS))
	$(MAKE) install-files

install-files:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man7 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 755 $(addprefix $(BUILT)/,$(COMMANDS)) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/nixpipe.7 $(DESTDIR)$(PREFIX)/share/man/man7/
	for c in $(COMMANDS); do \
		install -m 644 completions/$$c.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$c && \
		install -m 644 completions/_$$c $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_$$c && \
		install -m 644 completions/$$c.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$c.fish || exit 1; \
	done
