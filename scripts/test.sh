#!/usr/bin/env bash
# test.sh - set up this host and run Phyllome's whole test suite.
#
#   scripts/test.sh          what CI runs: installs what the tests need (scripts/setup.sh), builds the tiny
#                            test guest (scripts/build-test-guest.sh), then runs the format check, clippy and
#                            every test: unit tests, golden files with libvirt schema validation, and the
#                            end-to-end tests that define and boot real VMs in the real libvirtd.
#   scripts/test.sh --pure   only the tests that need no libvirtd, VM, second host, server or browser (seconds
#                            once built; no setup, no format check or clippy): every crate's unit tests, the
#                            fixture and golden tests of phyllome-model, -host, -disk and -system, and the
#                            phyllome crate's `pure` test binary. They read fixtures and run the tools setup.sh
#                            installs (xmllint and libvirt's schemas, qemu-img, cryptsetup, ksvalidator).
#
# The phyllome crate's other test binaries are named by what they need (ARCHITECTURE.md, "Tests"):
# libvirt_* this host's libvirtd and the test guest, two_hosts_* a second libvirtd too, web_* the server too.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

pure=false
case "${1:-}" in
    "") ;;
    --pure) pure=true ;;
    *)
        echo "usage: $0 [--pure]" >&2
        exit 2
        ;;
esac

mkdir -p target
log=target/test-output.log
$pure && log=target/test-output-pure.log
: >"$log"
status=0
# cargo test with ARGS, its output also in the log; the first failure's status is kept, and the run goes on.
tests() {
    set +e
    cargo test "$@" 2>&1 | tee -a "$log"
    local s=${PIPESTATUS[0]}
    set -e
    if [ "$s" != 0 ] && [ "$status" = 0 ]; then status=$s; fi
}

if $pure; then
    tests --workspace --lib --bins
    tests -p phyllome-model -p phyllome-host -p phyllome-disk -p phyllome-system -p phyllome-engine --test '*'
    tests -p phyllome --test pure
else
    ./scripts/setup.sh --kvm-aside-if-broken
    ./scripts/build-test-guest.sh

    cargo fmt --check
    cargo clippy --workspace --all-targets -- -D warnings
    tests --workspace
fi
# One closing line for the whole run (cargo's own last line is a doc-test binary's count).
awk '/^test result:/ {p += $4; f += $6} END {printf "cargo test: %d passed, %d failed\n", p, f}' "$log"
exit "$status"
