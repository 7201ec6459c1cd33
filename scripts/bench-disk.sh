#!/usr/bin/env bash
# bench-disk.sh - measure encrypted disks and write the figures into
# docs/benchmarks.md (between the bench:disk markers):
#
#   1. making a 1 GiB LUKS-encrypted qcow2: `qemu-img create -o encrypt.format=luks`
#      (QEMU's default PBKDF benchmark) against phyllome-disk (what `phyllome
#      create` uses for random-key disks): wall and CPU time, and how often
#      qemu-img fails its benchmark ("Unable to get accurate CPU usage");
#   2. cryptsetup's reading of a phyllome-disk header (cut out of the qcow2 at
#      the offsets of its crypto header extension);
#   3. what encryption costs the guest: the test guest writes then reads 512 MiB
#      of its disk with O_DIRECT (dd), on an encrypted and on an unencrypted disk,
#      both VMs made by phyllome in this run, alternating, RUNS_GUEST times each.
#
# Run as root after scripts/setup.sh. RUNS (default 7), FAIL_RUNS (default 20)
# and RUNS_GUEST (default 3) set the repetitions.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
FAIL_RUNS=${FAIL_RUNS:-20}
RUNS_GUEST=${RUNS_GUEST:-3}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y -q time >/dev/null
./scripts/build-test-guest.sh >/dev/null
cargo build --release -q
cargo build --release -q -p phyllome-disk --example create
P=$PWD/target/release/phyllome
MK=$PWD/target/release/examples/create
G=/var/lib/phyllome/test-guest
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
TMP=$(mktemp -d)
VMS=()
cleanup() {
    local vm
    for vm in "${VMS[@]}"; do
        virsh -c "$URI" destroy "$vm" >/dev/null 2>&1 || true
        "$P" delete "$vm" >/dev/null 2>&1 || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$TMP/$1" | median; }
range() { awk -v c="$2" '{print $c}' "$TMP/$1" | sort -n | awk 'NR==1{a=$1} {b=$1} END {print a "-" b}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# timed LABEL CMD: runs CMD (key on stdin) and appends "wall_s cpu_s status" to $TMP/LABEL.
timed() {
    local label=$1 cmd=$2 t0 t1 rc=0
    t0=$(date +%s%N)
    printf '%s' "$KEY" | /usr/bin/time -f '%U %S' -o "$TMP/cpu" bash -c "$cmd" >/dev/null 2>"$TMP/err" || rc=$?
    t1=$(date +%s%N)
    local cpu
    cpu=$(tail -1 "$TMP/cpu" | awk '{printf "%.2f", $1 + $2}')
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}') $cpu $rc" >>"$TMP/$label"
    if [ "$rc" != 0 ] && grep -q "Unable to get accurate CPU usage" "$TMP/err"; then
        echo >>"$TMP/$label.cpufail"
    fi
}

IMG=$TMP/bench.qcow2
QEMU_IMG="qemu-img create -q -f qcow2 --object secret,id=s0,file=/dev/stdin -o encrypt.format=luks,encrypt.key-secret=s0 $IMG 1G"
echo "bench: LUKS qcow2, qemu-img ($RUNS runs) and phyllome-disk ($RUNS runs)" >&2
: >"$TMP/qemu"; : >"$TMP/ours"
for _ in $(seq "$RUNS"); do
    rm -f "$IMG"; timed qemu "$QEMU_IMG"
    rm -f "$IMG"; timed ours "$MK $IMG 1"
done
echo "bench: qemu-img's PBKDF benchmark failures over $FAIL_RUNS runs" >&2
: >"$TMP/fails"
for _ in $(seq "$FAIL_RUNS"); do rm -f "$IMG"; timed fails "$QEMU_IMG"; done
FAILED=$(awk '$3 != 0' "$TMP/fails" | wc -l)
CPUFAIL=0
[ -f "$TMP/fails.cpufail" ] && CPUFAIL=$(wc -l <"$TMP/fails.cpufail")
QEMU_ITERS=$(rm -f "$IMG"; printf '%s' "$KEY" | $QEMU_IMG >/dev/null 2>&1; qemu-img info --output=json "$IMG" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin)["format-specific"]["data"]["encrypt"]; print(d["slots"][0]["iters"], d["master-key-iters"])')

echo "bench: cryptsetup luksDump of a phyllome-disk header" >&2
rm -f "$IMG"; printf '%s' "$KEY" | "$MK" "$IMG" 1
python3 - "$IMG" "$TMP/luks" <<'PY'
import struct, sys
img, out = sys.argv[1:3]
b = open(img, "rb").read()
at = struct.unpack(">I", b[100:104])[0]
while True:
    kind, length = struct.unpack(">II", b[at:at + 8])
    if kind == 0:
        sys.exit("no crypto header extension")
    if kind == 0x0537BE77:
        off, size = struct.unpack(">QQ", b[at + 8:at + 24])
        open(out, "wb").write(b[off:off + size])
        break
    at += 8 + (length + 7) // 8 * 8
PY
DUMP=$(cryptsetup luksDump "$TMP/luks")
field() { echo "$DUMP" | awk -F: -v k="$1" '$1 == k {sub(/^[ \t]+/, "", $2); print $2; exit}'; }
OPENS=$(printf '%s' "$KEY" | cryptsetup open --test-passphrase --key-file=- --type luks1 "$TMP/luks" && echo yes || echo no)
SLOT_ITERS=$(echo "$DUMP" | awk '/Key Slot 0: ENABLED/ {f=1} f && /Iterations:/ {print $2; exit}')

echo "bench: 512 MiB dd in the guest, encrypted and unencrypted ($RUNS_GUEST runs each)" >&2
: >"$TMP/dd-enc"; : >"$TMP/dd-plain"
dd_run() {
    local label=$1 vm=$2 extra=$3 log i
    VMS+=("$vm")
    # $extra is empty or one flag.
    # shellcheck disable=SC2086
    "$P" create "$vm" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" \
        --cmdline "console=ttyS0 phyllome.test=dd-bench" --memory 512M --cpus 2 --disk-size 4G \
        --network none $extra --start >/dev/null
    log=/var/log/libvirt/qemu/$vm-serial.log
    for i in $(seq 600); do
        grep -q 'PHYLLOME-DD-READ' "$log" 2>/dev/null && break
        sleep 0.5
    done
    grep -q 'PHYLLOME-DD-READ' "$log" || { echo "bench: $vm never finished dd" >&2; exit 1; }
    # "PHYLLOME-DD-WRITE: BYTES bytes from T0 to T1" (the guest's uptime clock); MiB/s from them.
    local w r
    w=$(sed -n 's/.*PHYLLOME-DD-WRITE: \([0-9]*\) bytes from \([0-9.]*\) to \([0-9.]*\).*/\1 \2 \3/p' "$log" | awk '{printf "%.1f", $1 / 1048576 / ($3 - $2)}')
    r=$(sed -n 's/.*PHYLLOME-DD-READ: \([0-9]*\) bytes from \([0-9.]*\) to \([0-9.]*\).*/\1 \2 \3/p' "$log" | awk '{printf "%.1f", $1 / 1048576 / ($3 - $2)}')
    [ -n "$w" ] && [ -n "$r" ] || { echo "bench: no dd figures from $vm" >&2; exit 1; }
    echo "$w $r" >>"$TMP/$label"
    for i in $(seq 120); do [ "$(virsh -c "$URI" domstate "$vm" 2>/dev/null)" = "shut off" ] && break; sleep 0.5; done
    virsh -c "$URI" destroy "$vm" >/dev/null 2>&1 || true
    "$P" delete "$vm" >/dev/null
}
for i in $(seq "$RUNS_GUEST"); do
    dd_run dd-enc "phyllome-test-bench-dd-enc-$i" ""
    dd_run dd-plain "phyllome-test-bench-dd-plain-$i" "--no-encrypt"
done
# The same encrypted-or-not qcow2 read and written by QEMU's block layer on the host alone
# (qemu-io, no guest, no TCG): what LUKS costs QEMU itself.
echo "bench: qemu-io on the host, LUKS and plain qcow2 ($RUNS_GUEST runs each)" >&2
: >"$TMP/qb-enc"; : >"$TMP/qb-qemu"; : >"$TMP/qb-plain"
# qbench LABEL IMAGE-OPTS [SECRET-OBJECT]: MiB/s of one 512 MiB write (a non-zero pattern) then its read, O_DIRECT.
qbench() {
    local label=$1 opts=$2 obj=${3:-}
    printf '%s' "$KEY" | qemu-io ${obj:+--object "$obj"} -t none --image-opts "$opts" \
        -c "write -P 0x5a 0 512M" -c "read -P 0x5a 0 512M" \
        | awk '/MiB\/sec|GiB\/sec/ {v = $0; sub(/.*\(/, "", v); split(v, a, " "); r = a[1] * (a[2] ~ /GiB/ ? 1024 : 1); printf "%.1f ", r} END {print ""}' \
        >>"$TMP/$label"
}
for _ in $(seq "$RUNS_GUEST"); do
    rm -f "$IMG"; printf '%s' "$KEY" | "$MK" "$IMG" 1
    qbench qb-enc "driver=qcow2,file.filename=$IMG,encrypt.key-secret=s0" "secret,id=s0,file=/dev/stdin"
    rm -f "$IMG"; printf '%s' "$KEY" | $QEMU_IMG
    qbench qb-qemu "driver=qcow2,file.filename=$IMG,encrypt.key-secret=s0" "secret,id=s0,file=/dev/stdin"
    rm -f "$IMG"; qemu-img create -q -f qcow2 "$IMG" 1G
    qbench qb-plain "driver=qcow2,file.filename=$IMG"
done
rm -f "$IMG"
QB_W=$(ratio "$(col qb-enc 1)" "$(col qb-plain 1)")
QB_R=$(ratio "$(col qb-enc 2)" "$(col qb-plain 2)")

W_RATIO=$(ratio "$(col dd-enc 1)" "$(col dd-plain 1)")
R_RATIO=$(ratio "$(col dd-enc 2)" "$(col dd-plain 2)")
target() { awk -v r="$1" 'BEGIN {print (r >= 0.8) ? "met" : "NOT met"}'; }

CPU=$(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')
MEM=$(free -g | awk '/Mem:/ {print $2}')
KVM=$(test -e /dev/kvm && echo "KVM" || echo "TCG (no usable KVM)")
SECTION=$(cat <<EOT
<!-- bench:disk:start -->
## Encrypted disks: making them, and what they cost the guest

Measured $(date -u +%Y-%m-%d) on $CPU, $(nproc) cores, ${MEM} GiB, $(. /etc/os-release; echo "$PRETTY_NAME"),
libvirt $(virsh -c $URI version | awk '/Using library/ {print $4}'), QEMU $(qemu-img --version | awk 'NR==1 {print $3}'),
$(cryptsetup --version), guests under $KVM. \`scripts/bench-disk.sh\` reproduces it.

### Making a 1 GiB LUKS-encrypted qcow2 (median of $RUNS runs)

| how | wall (median) | wall (min-max) | CPU, user + system (median) |
|---|---|---|---|
| \`qemu-img create -o encrypt.format=luks\` (QEMU's PBKDF benchmark: iter-time 2000 ms) | $(col qemu 1) s | $(range qemu 1) s | $(col qemu 2) s |
| \`phyllome-disk\` (LUKS1 minimum, 1000 iterations, for random 256-bit keys) | $(col ours 1) s | $(range ours 1) s | $(col ours 2) s |

- phyllome-disk is $(ratio "$(col qemu 1)" "$(col ours 1)")x faster. qemu-img chose $(echo "$QEMU_ITERS" | awk '{print $1}') PBKDF2 iterations for the key
  slot and $(echo "$QEMU_ITERS" | awk '{print $2}') for the master-key digest: seconds of CPU that add no security to a random
  256-bit key, which nobody can brute-force whatever the count. Typed passphrases still go through qemu-img.
- qemu-img's benchmark failed $FAILED of $FAIL_RUNS further runs ($CPUFAIL with "Unable to get accurate CPU usage") on this QEMU.
- Verdict: phyllome-disk $( [ "$(ratio "$(col qemu 1)" "$(col ours 1)" | cut -d. -f1)" -ge 2 ] && echo "still pays for itself: kept" || echo "no longer pays for itself" ).

### An independent LUKS implementation reads phyllome-disk's header

The LUKS area, cut out of the qcow2 at the offset its crypto header extension names, read by \`cryptsetup luksDump\`:
version $(field Version), cipher $(field "Cipher name")-$(field "Cipher mode"), hash $(field "Hash spec"), $(field "MK bits")-bit
master key, slot 0 enabled with $SLOT_ITERS PBKDF2 iterations, slots 1-7 disabled. \`cryptsetup open --test-passphrase\`
with the VM's key: $OPENS. (\`crates/phyllome-disk/tests/cryptsetup_reads.rs\` checks the same on every test run, and that a
wrong key is refused.)

### What encryption costs the guest (median of $RUNS_GUEST runs each)

The test guest (2 vCPUs, 512 MiB) writes 512 MiB of random data (a 64 MiB pattern from \`/dev/urandom\`, in RAM,
written 8 times: zeros would become qcow2 holes and never be encrypted) to its virtio disk, then reads it back,
with \`dd bs=1M\` and \`oflag=direct\` / \`iflag=direct\`; both VMs made by \`phyllome create\`, one LUKS-encrypted
(the default), one \`--no-encrypt\`.

| disk | write (median) | write (min-max) | read (median) | read (min-max) |
|---|---|---|---|---|
| LUKS-encrypted qcow2 | $(col dd-enc 1) MiB/s | $(range dd-enc 1) | $(col dd-enc 2) MiB/s | $(range dd-enc 2) |
| unencrypted qcow2 | $(col dd-plain 1) MiB/s | $(range dd-plain 1) | $(col dd-plain 2) MiB/s | $(range dd-plain 2) |

- Encrypted / plain in the guest: write ${W_RATIO}x, read ${R_RATIO}x (target: at least 0.8x: write $(target "$W_RATIO"), read $(target "$R_RATIO")).

The same kinds of qcow2 driven by QEMU's block layer on the host alone (\`qemu-io -t none\`: one 512 MiB write of a
non-zero pattern, then its read; no guest, no TCG), median of $RUNS_GUEST runs:

| image | write (median) | read (median) |
|---|---|---|
| LUKS-encrypted qcow2 (phyllome-disk) | $(col qb-enc 1) MiB/s | $(col qb-enc 2) MiB/s |
| LUKS-encrypted qcow2 (\`qemu-img create\`) | $(col qb-qemu 1) MiB/s | $(col qb-qemu 2) MiB/s |
| unencrypted qcow2 | $(col qb-plain 1) MiB/s | $(col qb-plain 2) MiB/s |

- Encrypted / plain in QEMU alone: write ${QB_W}x, read ${QB_R}x. QEMU encrypts and decrypts aes-256-xts in its
  block layer, on the thread that also serves the guest's I/O; on this 2-core host that thread competes with the
  two TCG vCPU threads, so the guest sees the cipher's cost in full. The header only holds the key: an image
  \`qemu-img\` made goes through the same data path (its row above).
<!-- bench:disk:end -->
EOT
)
. scripts/lib/bench-section.sh
write_section disk "$SECTION"
echo "bench: wrote docs/benchmarks.md" >&2
sed -n '/bench:disk:start/,/bench:disk:end/p' docs/benchmarks.md
