#!/usr/bin/env bash
# run.sh - set up this host and run Phyllome's main job on an embedded default:
# build phyllome and the tiny test guest, then create and start an encrypted
# Linux VM from it (or start it again when it already exists).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
NAME=${1:-phyllome-demo}

./scripts/setup.sh --kvm-aside-if-broken
./scripts/build-test-guest.sh
cargo build --release
P=$PWD/target/release/phyllome
G=/var/lib/phyllome/test-guest

if "$P" info "$NAME" >/dev/null 2>&1; then
    "$P" start "$NAME"
else
    # The test guest boots straight into a shell on its serial console; no NIC.
    "$P" create "$NAME" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" \
        --cmdline "console=ttyS0" --memory 1G --disk-size 8G --network none --start
fi
"$P" list
cat <<EOT

$NAME is running. See its console:  $P console $NAME   (leave with Ctrl-])
Its screen:                          $P display $NAME
Stop it:                             $P stop $NAME
Remove it (disk, key and all):       $P delete $NAME
EOT
