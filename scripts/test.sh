#!/usr/bin/env bash
# test.sh - set up this host and run Phyllome's whole test suite.
#
# Installs what the tests need (scripts/setup.sh), builds the tiny test guest
# (scripts/build-test-guest.sh), then runs the format check, clippy and every
# test: unit tests, golden files with libvirt schema validation, and the
# end-to-end tests that define and boot real VMs in the real libvirtd.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

./scripts/setup.sh --kvm-aside-if-broken
./scripts/build-test-guest.sh

cargo fmt --check
cargo clippy --workspace --all-targets -- -D warnings
mkdir -p target
set +e
cargo test --workspace 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo's own last line is a doc-test binary's count).
awk '/^test result:/ {p += $4; f += $6} END {printf "cargo test: %d passed, %d failed\n", p, f}' target/test-output.log
exit "$status"
