# cella: the two commands of the README, and a few more for developers.
#   make run    install what is needed, build, and start the server with its embedded defaults
#   make test   install what is needed, build once, and run every test

CARGO ?= cargo
JOBS ?= 2
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup build run test test-rust test-clients test-guest bench lint

setup:
	./scripts/setup.sh

build:
	$(CARGO) build --release --workspace

run: setup build
	./target/release/cella serve

test: setup build
	$(MAKE) test-rust
	$(MAKE) test-clients
	$(MAKE) test-guest
	$(MAKE) lint

# Unit tests and end-to-end tests against a real server (release, the profile just built),
# then their count.
test-rust:
	$(CARGO) test --release --workspace 2>&1 | tee target/test-rust.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "== host: %d passed, %d failed\n", p, f}' target/test-rust.log

# The real client packages from PyPI against a real server.
test-clients:
	.venv/bin/pytest tests/clients -q -n $(JOBS)

# The host-dependent end-to-end tests in a cgroup v2 guest with Debian 12's stock kernel, in
# three layouts of the server's cgroup (qemu, software emulation: a few minutes).
test-guest:
	./scripts/guest-tests.sh

bench: setup build
	./scripts/bench.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --release --all-targets -- -D warnings
