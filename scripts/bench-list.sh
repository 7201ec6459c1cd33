#!/usr/bin/env bash
# bench-list.sh - `phyllome list` against `virsh list --all` with many VMs
# defined (BENCH_VMS, default 300), and write the figures into
# docs/benchmarks.md (between the bench:list markers). Target: phyllome at
# most 1.5x virsh's wall time.
#
# The VMs are real phyllome VMs (encrypted disk, secret, UEFI NVRAM where the
# profile has it), named phyllome-test-bench-list-NNN-PID, never started, and
# removed on exit however it exits. The two commands run in turn, A B A B...,
# RUNS times each (default 11); the median wall time of each and the median of
# the pair-by-pair ratios are reported. Run as root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export LC_ALL=C
. scripts/lib/bench-section.sh
VMS=${BENCH_VMS:-300}
RUNS=${RUNS:-11}
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
log() { printf 'bench-list: %s\n' "$*" >&2; }
./scripts/build-test-guest.sh >/dev/null
cargo build --release -q -p phyllome
P=$PWD/target/release/phyllome
G=/var/lib/phyllome/test-guest
TAG="phyllome-test-bench-list"
cleanup() {
    for v in $(virsh -c "$URI" list --all --name | grep "^$TAG-[0-9]*-$$\$" || true); do
        "$P" delete "$v" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
log "creating $VMS VMs (linux, encrypted 4 GiB disks, no NIC)"
T0=$(date +%s)
for i in $(seq -w 1 "$VMS"); do
    "$P" create "$TAG-$i-$$" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" --cmdline console=ttyS0 \
        --memory 512M --disk-size 4G --network none >/dev/null 2>&1 || { log "create $i failed"; exit 1; }
done
log "made in $(($(date +%s) - T0)) s"
COUNT=$(virsh -c "$URI" list --all --name | grep -c . || true)
OUT=$(mktemp)
python3 - "$P" "$URI" "$RUNS" >"$OUT" <<'PY'
import statistics, subprocess, sys, time
p, uri, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
a_cmd, b_cmd = [p, "list"], ["virsh", "-c", uri, "list", "--all"]
def once(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t
once(a_cmd); once(b_cmd)  # warm-up
a, b = [], []
for _ in range(runs):
    a.append(once(a_cmd)); b.append(once(b_cmd))
ratios = [x / y for x, y in zip(a, b)]
print(f"{statistics.median(a):.3f} {min(a):.3f} {max(a):.3f} {statistics.median(b):.3f} {min(b):.3f} {max(b):.3f} {statistics.median(ratios):.2f}")
PY
read -r A AMIN AMAX B BMIN BMAX RATIO <"$OUT"
rm -f "$OUT"
VERDICT=$(awk -v r="$RATIO" 'BEGIN {print (r <= 1.5) ? "met" : "not met"}')
log "phyllome list $A s, virsh list --all $B s, ratio $RATIO ($VERDICT)"
MACHINE="$(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
STACK=$(virsh -c "$URI" version 2>/dev/null | sed -n 's/^Running hypervisor: //p; s/^Using library: //p' | paste -sd, -)
write_section list "<!-- bench:list:start -->
## \`phyllome list\` with $VMS VMs, against \`virsh list --all\`

$(date -u +%F), $MACHINE; $STACK. $COUNT domains defined ($VMS of them phyllome VMs with encrypted
disks, never started). $RUNS runs of each in turn after one warm-up, wall time of the whole process
(\`scripts/bench-list.sh\`).

| command | median | min | max |
|---|---|---|---|
| \`phyllome list\` | $A s | $AMIN s | $AMAX s |
| \`virsh list --all\` | $B s | $BMIN s | $BMAX s |

Median ratio phyllome/virsh, pair by pair: **${RATIO}x** (target at most 1.5x: $VERDICT). \`phyllome list\`
shows more than virsh (OS, vCPUs, memory, disk size, encryption, why a VM is paused): it lists every state in
three listings, then reads each VM's XML and its disk's size, one round trip each, instead of looking each VM
up by name and asking its state, XML and volume separately.
<!-- bench:list:end -->"
