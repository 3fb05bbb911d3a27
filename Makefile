# The two commands: `make demo` and `make test`. Both install what they need
# on a fresh Debian machine first (scripts/setup.sh), then do their job.

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build test demo man bench

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --locked

test: build
	$(CARGO) fmt --all --check
	$(CARGO) xtask gen --check
	$(CARGO) test --workspace --locked

demo: build
	target/debug/nixpipe-testbed web1 -- bash scripts/demo.sh

# Regenerate man/ and completions/ from the clap definitions.
man:
	$(CARGO) xtask gen

# Benchmarks on testbed hosts, against nix-copy-closure, nix copy and tar;
# prints markdown tables (see the README's Performance section).
bench: setup
	$(CARGO) build --release --workspace --locked
	target/release/nixpipe-bench
