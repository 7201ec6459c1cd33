#!/usr/bin/env bash
# bench-share.sh - a shared folder (virtiofs) against the guest's virtio disk:
# the test guest writes 256 MiB of random data through the share (fsync) and
# reads it back (caches dropped), then does the same on its encrypted virtio
# disk, RUNS times (default 3) in one VM made by phyllome, writable share.
# Figures go into docs/benchmarks.md between the bench:share markers.
# Run as root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export LC_ALL=C
. scripts/lib/bench-section.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
./scripts/build-test-guest.sh >/dev/null
cargo build --release -q -p phyllome
P=$CARGO_TARGET_DIR/release/phyllome
G=/var/lib/phyllome/test-guest
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
VM="phyllome-test-bench-share-$$"
DIR="/var/tmp/phyllome-test-bench-share-$$"
cleanup() {
    virsh -c "$URI" destroy "$VM" >/dev/null 2>&1 || true
    "$P" delete "$VM" >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
mkdir -p "$DIR" && chmod 0777 "$DIR"
"$P" create "$VM" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" \
    --cmdline "console=ttyS0 panic=-1 phyllome.test=share-bench:data" \
    --memory 1G --disk-size 4G --network none --share "$DIR:data:rw" >/dev/null
LOG=/var/log/libvirt/qemu/$VM-serial.log
RESULTS=$(mktemp)
for run in $(seq 1 "$RUNS"); do
    "$P" start "$VM" >/dev/null
    for _ in $(seq 1 600); do
        grep -aq PHYLLOME-BENCH-DONE "$LOG" 2>/dev/null && break
        grep -aq PHYLLOME-SHARE-MOUNT-FAILED "$LOG" 2>/dev/null && { echo "bench-share: mount failed" >&2; exit 1; }
        sleep 1
    done
    grep -a '^PHYLLOME-BENCH-[A-Z-]*:' "$LOG" | tr -d '\r' >>"$RESULTS"
    for _ in $(seq 1 120); do
        [ "$(virsh -c "$URI" domstate "$VM")" = "shut off" ] && break
        sleep 1
    done
done
TABLE=$(python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"PHYLLOME-BENCH-([A-Z-]+): (\d+) bytes from ([\d.]+) to ([\d.]+)", line.strip())
    if m:
        name, n, t0, t1 = m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))
        rows.setdefault(name, []).append(n / max(t1 - t0, 0.01) / 2**20)
def med(k):
    return statistics.median(rows[k]) if k in rows else float("nan")
out = ["| 256 MiB, in the guest | shared folder (virtiofs) | virtio disk (LUKS qcow2) | share / disk |", "|---|---|---|---|"]
for op, label in (("WRITE", "write (fsync)"), ("READ", "read (caches dropped)")):
    s, d = med("SHARE-" + op), med("DISK-" + op)
    runs = ", ".join(f"{v:.0f}" for v in rows.get("SHARE-" + op, []))
    druns = ", ".join(f"{v:.0f}" for v in rows.get("DISK-" + op, []))
    out.append(f"| {label} | {s:.0f} MiB/s ({runs}) | {d:.0f} MiB/s ({druns}) | {s / d:.2f}x |")
print("\n".join(out))
PY
)
rm -f "$RESULTS"
STACK="$(virsh -c "$URI" version 2>/dev/null | sed -n 's/^Running hypervisor: //p; s/^Using library: //p' | paste -sd ', ')"
VFSD=$( (/usr/local/libexec/virtiofsd --version 2>/dev/null || /usr/libexec/virtiofsd --version 2>/dev/null || echo unknown) | head -1)
SECTION="<!-- bench:share:start -->
## Shared folders: virtiofs against the virtio disk

\`scripts/bench-share.sh\` (RUNS=$RUNS), $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r), $STACK, $VFSD, guests under TCG.
The test guest (1 GiB RAM, 1 vCPU) writes 256 MiB of random data with \`dd bs=1M conv=fsync\` and reads it back
after dropping its caches, through a writable share and then on its encrypted virtio disk, in one boot; the
median of RUNS boots, each run's figure in brackets.

$TABLE

Under TCG both paths are bound by the emulated CPU; the ratio, not the absolute figure, is what carries to a KVM host.
<!-- bench:share:end -->"
write_section share "$SECTION"
echo "$TABLE"
