#!/usr/bin/env bash
# run.sh - set up this host, build phyllome, and show the VM model it builds here.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
./scripts/setup.sh --kvm-aside-if-broken
cargo build --release
bin=target/release/phyllome
"$bin" host facts
echo
"$bin" os list
echo
"$bin" xml --os linux --name phyllome-demo --explain
