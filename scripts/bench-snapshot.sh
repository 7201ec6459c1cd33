#!/usr/bin/env bash
# bench-snapshot.sh - Phyllome's whole-VM snapshots against libvirt's internal
# qcow2 snapshots, in one run, side by side, and write the figures into
# docs/benchmarks.md (between the bench:snapshot markers):
#
#   1. a Phyllome VM (`phyllome create`: LUKS-encrypted qcow2, UEFI NVRAM, TPM,
#      512 MiB, no NIC) on the test guest, whose `phyllome.test=fill:1024`
#      writes 1 GiB of random data to its disk and powers off. Timed: a
#      snapshot of it shut off and its revert; then, booted again at the
#      guest's shell, a disk-only snapshot of it running, a snapshot with
#      memory, the memory revert (--force, running) and the revert to the
#      running disk-only snapshot (--force). Each snapshot's size on disk
#      (`phyllome snapshot list --json`) and the disk's allocation.
#   2. the peer, plain libvirt at its best: a domain defined here from a
#      minimal XML (BIOS, no TPM, unencrypted 4 GiB qcow2, same kernel, initrd,
#      memory and vCPU), filled with the same 1 GiB. Timed: `virsh
#      snapshot-create-as` (internal) shut off and `virsh snapshot-revert`;
#      booted at the shell, an internal snapshot with memory and its revert.
#      An internal disk-only snapshot of the running domain is tried too (libvirt
#      refuses it) and its answer shown.
#   3. for context, `cp --sparse=always` of the encrypted image to the same file
#      system (and the same followed by an fsync, as Phyllome's copy does).
#
# Wall time of each command, from the clock (date +%s.%N), one run each: the
# fills and boots take minutes under TCG, and a snapshot can only be taken once.
# Names: phyllome-test-bench-snap-PID (the Phyllome VM),
# phyllome-test-bench-plain-PID (libvirt's) and their files; on exit, however it
# exits, it destroys and deletes both VMs (snapshots, disks, secrets, NVRAM and
# TPM state with them), the plain disk, the copies and the serial logs; nothing
# else is touched. Run as root after scripts/setup.sh.
#
#   PHYLLOME  the phyllome binary (default target/release/phyllome; build it with
#             CARGO_TARGET_DIR=target/bench cargo build --release and give
#             PHYLLOME=target/bench/release/phyllome)
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. scripts/lib/bench-section.sh

P=$(realpath -m -- "${PHYLLOME:-target/release/phyllome}")
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
G=/var/lib/phyllome/test-guest
FILL_MIB=1024
FILL_CMDLINE="console=ttyS0 panic=-1 phyllome.test=fill:$FILL_MIB"
SHELL_CMDLINE="console=ttyS0 panic=-1"
VM="phyllome-test-bench-snap-$$"
PLAIN="phyllome-test-bench-plain-$$"
PLAIN_DISK="/var/lib/libvirt/images/$PLAIN.qcow2"
QLOG=/var/log/libvirt/qemu

log() { printf 'bench-snapshot: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"
[ -x "$P" ] || die "no phyllome binary at $P (set PHYLLOME)"
"$P" snapshot --help >/dev/null 2>&1 || die "$P has no snapshot command: build it again"
virsh -c "$URI" version >/dev/null || die "libvirtd does not answer: run scripts/setup.sh"
command -v qemu-img >/dev/null || die "qemu-img is missing"
./scripts/build-test-guest.sh >/dev/null

WORK=$(mktemp -d /tmp/phyllome-bench-snapshot.XXXXXX)
chmod 700 "$WORK"
COPY=
cleanup() {
    set +e
    for d in "$VM" "$PLAIN"; do
        case $d in phyllome-test-bench-*) ;; *) continue ;; esac
        virsh -c "$URI" domstate "$d" >/dev/null 2>&1 || continue
        [ "$(virsh -c "$URI" domstate "$d" 2>/dev/null)" = "shut off" ] || virsh -c "$URI" destroy "$d" >/dev/null 2>&1
    done
    if virsh -c "$URI" domstate "$VM" >/dev/null 2>&1; then
        "$P" delete "$VM" >/dev/null 2>"$WORK/delete.err" || log "could not delete $VM: $(cat "$WORK/delete.err")"
    fi
    if virsh -c "$URI" domstate "$PLAIN" >/dev/null 2>&1; then
        virsh -c "$URI" undefine --nvram --tpm --snapshots-metadata "$PLAIN" >/dev/null 2>"$WORK/undefine.err" ||
            log "could not undefine $PLAIN: $(cat "$WORK/undefine.err")"
    fi
    rm -f "$PLAIN_DISK"
    [ -n "$COPY" ] && rm -f "$COPY"
    for d in "$VM" "$PLAIN"; do
        rm -f "$QLOG/$d-serial.log" "$QLOG/$d.log"
    done
    left=$(virsh -c "$URI" vol-list phyllome 2>/dev/null | grep -c "$VM" || true)
    [ "$left" -eq 0 ] || log "warning: $left volumes of $VM are left in pool phyllome"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# timed KEY CMD...: runs CMD, its output in $WORK/KEY.out and .err, and records
# KEY's wall time in seconds in $WORK/times; fails the run if CMD fails.
timed() {
    local key=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    "$@" >"$WORK/$key.out" 2>"$WORK/$key.err" || die "$key ($*): $(tail -3 "$WORK/$key.err")"
    t1=$(date +%s.%N)
    awk -v k="$key" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s %.3f\n", k, b - a}' >>"$WORK/times"
    log "$key: $(awk -v k="$key" '$1 == k {print $2}' "$WORK/times" | tail -1) s"
}
# put KEY VALUE: a figure for the table.
put() { printf '%s %s\n' "$1" "$2" >>"$WORK/figures"; }
state() { virsh -c "$URI" domstate "$1" 2>/dev/null | head -1; }
alloc() { stat -c '%b %B' "$1" | awk '{print $1 * $2}'; }
# wait_line NAME TEXT SECS: until the serial log of NAME shows TEXT.
wait_line() {
    local f="$QLOG/$1-serial.log"
    for _ in $(seq "$(($3 * 2))"); do
        grep -aq "$2" "$f" 2>/dev/null && return 0
        grep -aqE 'PHYLLOME-FILL-FAILED|PHYLLOME-UNKNOWN-ACTION|Kernel panic' "$f" 2>/dev/null &&
            die "$1: $(grep -aE 'PHYLLOME-FILL-FAILED|PHYLLOME-UNKNOWN-ACTION|Kernel panic' "$f" | head -1)"
        sleep 0.5
    done
    die "$1 did not print $2 within $3 s"
}
wait_off() {
    for _ in $(seq "$(($2 * 2))"); do
        [ "$(state "$1")" = "shut off" ] && return 0
        sleep 0.5
    done
    die "$1 did not power off within $2 s"
}
# set_cmdline NAME CMDLINE: the kernel command line of NAME's inactive definition.
set_cmdline() {
    virsh -c "$URI" dumpxml --inactive "$1" >"$WORK/$1.xml"
    python3 - "$WORK/$1.xml" "$2" <<'PY'
import re, sys
path, cmdline = sys.argv[1:3]
text = open(path).read()
new, n = re.subn(r"<cmdline>.*?</cmdline>", "<cmdline>%s</cmdline>" % cmdline, text, flags=re.S)
if n != 1:
    sys.exit("no single <cmdline> in the domain XML")
open(path, "w").write(new)
PY
    virsh -c "$URI" define "$WORK/$1.xml" >/dev/null
}
# snap_sizes: each Phyllome snapshot's size_bytes and consistency, as figures size-NAME, consistency-NAME.
snap_sizes() {
    "$P" snapshot list "$VM" --json >"$WORK/list.json"
    python3 - "$WORK/list.json" >>"$WORK/figures" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1])):
    print(f"size-{s['name']} {s['size_bytes']}")
    print(f"consistency-{s['name']} {s['consistency']}")
PY
}
# qemu_snaps FILE: the internal snapshots of a qcow2 (vm-state-size), as figures vmstate-NAME.
qemu_snaps() {
    qemu-img info -U --output=json "$1" >"$WORK/qinfo.json"
    python3 - "$WORK/qinfo.json" >>"$WORK/figures" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1])).get("snapshots", []):
    print(f"vmstate-{s['name']} {s['vm-state-size']}")
PY
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
OTHERS=$(virsh -c "$URI" list --name | grep -c . || true)
T0=$(date +%s)

# --- 1. Phyllome ---------------------------------------------------------------------------
log "creating $VM and filling $FILL_MIB MiB of its encrypted disk"
"$P" create "$VM" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" --cmdline "$FILL_CMDLINE" \
    --memory 512M --disk-size 4G --network none --start >/dev/null 2>"$WORK/create.err" ||
    die "create: $(cat "$WORK/create.err")"
F0=$(date +%s)
wait_line "$VM" "PHYLLOME-FILLED: $FILL_MIB" 1200
wait_off "$VM" 120
put fill-phyllome "$(($(date +%s) - F0))"
# The disk image, NVRAM and TPM state behind the VM.
virsh -c "$URI" dumpxml --inactive "$VM" >"$WORK/vm.xml"
python3 - "$WORK/vm.xml" >"$WORK/vm.vars" <<'PY'
import sys, xml.etree.ElementTree as ET
d = ET.parse(sys.argv[1]).getroot()
disk = next(x for x in d.findall("devices/disk") if x.get("device") == "disk")
src = disk.find("source")
enc = disk.find("source/encryption")
nv = d.find("os/nvram")
print(f"DISK_FILE={src.get('file', '')!r}")
print(f"DISK_POOL={src.get('pool', '')!r}")
print(f"DISK_VOL={src.get('volume', '')!r}")
print(f"DISK_ENC={enc.get('format') if enc is not None else 'none'!r}")
print(f"NVRAM={(nv.text or '').strip() if nv is not None else ''!r}")
print(f"FIRMWARE={d.find('os').get('firmware', '') or ('uefi' if nv is not None else 'bios')!r}")
print(f"MACHINE={d.find('os/type').get('machine', '')!r}")
print(f"TPM={'yes' if d.find('devices/tpm') is not None else 'no'!r}")
print(f"UUID={d.findtext('uuid')!r}")
PY
. "$WORK/vm.vars"
IMG=$DISK_FILE
[ -n "$IMG" ] || IMG=$(virsh -c "$URI" vol-path --pool "$DISK_POOL" "$DISK_VOL")
[ -f "$IMG" ] || die "the disk image of $VM ($IMG) is not a file"
put disk-alloc "$(alloc "$IMG")"
put disk-virtual "$(qemu-img info -U --output=json "$IMG" | python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')"
put nvram-size "$([ -n "$NVRAM" ] && [ -f "$NVRAM" ] && alloc "$NVRAM" || echo 0)"
put tpm-size "$(du -sB1 "/var/lib/libvirt/swtpm/$UUID" 2>/dev/null | cut -f1 || echo 0)"

log "$VM shut off: snapshot disk1, then the floor (cp --sparse=always)"
COPY="$(dirname "$IMG")/phyllome-test-bench-copy-$$.qcow2"
timed cp-cold cp --sparse=always "$IMG" "$COPY"
rm -f "$COPY"
timed ph-off-create "$P" snapshot create "$VM" disk1
timed cp-warm cp --sparse=always "$IMG" "$COPY"
timed cp-sync sync "$COPY"
put copy-alloc "$(alloc "$COPY")"
rm -f "$COPY"
timed ph-off-revert "$P" snapshot revert "$VM" disk1
put ph-off-revert-state "$(state "$VM" | tr ' ' _)"

log "booting $VM at the guest's shell"
set_cmdline "$VM" "$SHELL_CMDLINE"
B0=$(date +%s)
"$P" start "$VM" >/dev/null 2>"$WORK/start.err" || die "start: $(cat "$WORK/start.err")"
wait_line "$VM" PHYLLOME-READY 600
put boot-phyllome "$(($(date +%s) - B0))"
sleep 5
timed ph-live-create "$P" snapshot create "$VM" live1
[ "$(state "$VM")" = running ] || die "$VM is not running after the live snapshot"
timed ph-mem-create "$P" snapshot create "$VM" mem1 --memory
[ "$(state "$VM")" = running ] || die "$VM is not running after the memory snapshot"
timed ph-mem-revert "$P" snapshot revert "$VM" mem1 --force
put ph-mem-revert-state "$(state "$VM" | tr ' ' _)"
timed ph-live-revert "$P" snapshot revert "$VM" live1 --force
put ph-live-revert-state "$(state "$VM" | tr ' ' _)"
snap_sizes
put disk-alloc-end "$(alloc "$IMG")"
[ "$(state "$VM")" = "shut off" ] || virsh -c "$URI" destroy "$VM" >/dev/null

# --- 2. plain libvirt ------------------------------------------------------------------------
log "defining $PLAIN (BIOS, no TPM, unencrypted qcow2) and filling $FILL_MIB MiB of its disk"
qemu-img create -q -f qcow2 "$PLAIN_DISK" 4G
cat >"$WORK/plain.xml" <<EOF
<domain type='qemu'>
  <name>$PLAIN</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>$G/vmlinuz</kernel>
    <initrd>$G/initrd.img</initrd>
    <cmdline>$FILL_CMDLINE</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$PLAIN_DISK'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'>
      <log file='$QLOG/$PLAIN-serial.log' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
EOF
virsh -c "$URI" define "$WORK/plain.xml" >/dev/null
F0=$(date +%s)
virsh -c "$URI" start "$PLAIN" >/dev/null
wait_line "$PLAIN" "PHYLLOME-FILLED: $FILL_MIB" 1200
wait_off "$PLAIN" 120
put fill-plain "$(($(date +%s) - F0))"
PLAIN_MACHINE=$(virsh -c "$URI" dumpxml --inactive "$PLAIN" | sed -n "s/.*<type arch='x86_64' machine='\([^']*\)'.*/\1/p")
put plain-alloc "$(alloc "$PLAIN_DISK")"

log "$PLAIN shut off: internal snapshot disk1"
timed lv-off-create virsh -c "$URI" snapshot-create-as "$PLAIN" disk1
put plain-alloc-disk1 "$(alloc "$PLAIN_DISK")"
timed lv-off-revert virsh -c "$URI" snapshot-revert "$PLAIN" disk1
put lv-off-revert-state "$(state "$PLAIN" | tr ' ' _)"

log "booting $PLAIN at the guest's shell"
set_cmdline "$PLAIN" "$SHELL_CMDLINE"
B0=$(date +%s)
virsh -c "$URI" start "$PLAIN" >/dev/null
wait_line "$PLAIN" PHYLLOME-READY 600
put boot-plain "$(($(date +%s) - B0))"
sleep 5
# libvirt refuses internal disk-only snapshots of a running domain; its answer goes in the table.
if virsh -c "$URI" snapshot-create-as "$PLAIN" live1 --disk-only --diskspec vda,snapshot=internal \
        >"$WORK/lv-live.out" 2>"$WORK/lv-live.err"; then
    LV_LIVE="accepted (unexpected)"
    virsh -c "$URI" snapshot-delete "$PLAIN" live1 >/dev/null 2>&1 || true
else
    LV_LIVE=$(sed -n 's/^error: //p' "$WORK/lv-live.err" | grep -v '^Operation not supported$\|^unsupported configuration$' | tail -1)
    [ -n "$LV_LIVE" ] || LV_LIVE=$(grep . "$WORK/lv-live.err" | tail -1)
fi
[ "$(state "$PLAIN")" = running ] || die "$PLAIN is not running after the refused disk-only snapshot"
timed lv-mem-create virsh -c "$URI" snapshot-create-as "$PLAIN" mem1
put plain-alloc-mem1 "$(alloc "$PLAIN_DISK")"
[ "$(state "$PLAIN")" = running ] || die "$PLAIN is not running after the memory snapshot"
timed lv-mem-revert virsh -c "$URI" snapshot-revert "$PLAIN" mem1
put lv-mem-revert-state "$(state "$PLAIN" | tr ' ' _)"
qemu_snaps "$PLAIN_DISK"
virsh -c "$URI" destroy "$PLAIN" >/dev/null
put plain-alloc-end "$(alloc "$PLAIN_DISK")"
TOTAL=$(($(date +%s) - T0))
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table ---------------------------------------------------------------------------------
log "raw figures: $(tr '\n' ';' <"$WORK/times") $(tr '\n' ';' <"$WORK/figures")"
python3 - "$WORK/times" "$WORK/figures" "$LV_LIVE" >"$WORK/table.md" <<'PY'
import sys
t = {k: float(v) for k, v in (l.split() for l in open(sys.argv[1]))}
f = {}
for l in open(sys.argv[2]):
    k, v = l.split(None, 1)
    f[k] = v.strip()
lv_live = sys.argv[3]
def size(n):
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"
def mib(k):
    return size(int(f[k])) if k in f else "?"
def grow(a, b):
    return f"+{size(int(f[b]) - int(f[a]))} to the qcow2"
def s(k):
    return f"{t[k]:.2f} s" if k in t else "-"
def ratio(a, b):
    return f"{t[a] / t[b]:.0f}x" if a in t and b in t and t[b] > 0 else "-"
def st(k):
    return f.get(k, "?").replace("_", " ")
rows = [
    ("snapshot, shut off", f"`snapshot create NAME disk1`: **{s('ph-off-create')}**; {mib('size-disk1')}",
     f"`snapshot-create-as NAME disk1`: **{s('lv-off-create')}**; {grow('plain-alloc', 'plain-alloc-disk1')}",
     ratio("ph-off-create", "lv-off-create")),
    ("revert to it, shut off", f"`snapshot revert NAME disk1`: **{s('ph-off-revert')}**; then {st('ph-off-revert-state')}",
     f"`snapshot-revert NAME disk1`: **{s('lv-off-revert')}**; then {st('lv-off-revert-state')}",
     ratio("ph-off-revert", "lv-off-revert")),
    ("disk-only snapshot, running", f"`snapshot create NAME live1`: **{s('ph-live-create')}**; {mib('size-live1')}; {st('consistency-live1')}",
     f"not possible: `--disk-only --diskspec vda,snapshot=internal` is refused (\"{lv_live}\")", "-"),
    ("snapshot with memory, running", f"`snapshot create NAME mem1 --memory`: **{s('ph-mem-create')}**; {mib('size-mem1')} (disk copy and RAM)",
     f"`snapshot-create-as NAME mem1`: **{s('lv-mem-create')}**; {grow('plain-alloc-disk1', 'plain-alloc-mem1')} (VM state {mib('vmstate-mem1')})",
     ratio("ph-mem-create", "lv-mem-create")),
    ("revert to it, from running", f"`snapshot revert NAME mem1 --force`: **{s('ph-mem-revert')}**; then {st('ph-mem-revert-state')}",
     f"`snapshot-revert NAME mem1`: **{s('lv-mem-revert')}**; then {st('lv-mem-revert-state')}",
     ratio("ph-mem-revert", "lv-mem-revert")),
    ("revert to the disk-only one, from running", f"`snapshot revert NAME live1 --force`: **{s('ph-live-revert')}**; then {st('ph-live-revert-state')}",
     "no such snapshot", "-"),
    ("floor: `cp --sparse=always` of the encrypted image, same file system",
     f"{s('cp-cold')} (before the snapshot), {s('cp-warm')} (after it); then `sync FILE`: {s('cp-sync')}; {mib('copy-alloc')}",
     "", ""),
]
print("| operation | Phyllome (LUKS qcow2, UEFI NVRAM, TPM): wall; size on disk | libvirt internal qcow2 (unencrypted, BIOS, no TPM): wall; size | Phyllome / libvirt |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
with open(sys.argv[2] + ".vars", "w") as out:
    for k, v in f.items():
        out.write(f"{k.upper().replace('-', '_')}={v!r}\n")
    for k, v in t.items():
        out.write(f"T_{k.upper().replace('-', '_')}={v:.2f}\n")
PY
. "$WORK/figures.vars"
cat "$WORK/table.md" >&2

CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
OS=$(. /etc/os-release && echo "$PRETTY_NAME")
STACK=$(virsh -c "$URI" version | sed -n 's/^Using library: //p; s/^Running hypervisor: //p' | paste -sd, - | sed 's/,/, /')
VERSION=$("$P" --version 2>/dev/null | head -1 || true)
OTHERS_NOTE=""
[ "$OTHERS" -gt 0 ] && OTHERS_NOTE="; $OTHERS other domain(s), not this script's, were running at its start"
mibv() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }
kibv() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1024}'; }
calc() { awk "BEGIN {printf \"%.2f\", $1}"; }
CP_SYNCED=$(calc "$T_CP_WARM + $T_CP_SYNC")
CP_SPREAD=$(awk -v a="$T_CP_COLD" -v b="$T_CP_WARM" 'BEGIN {if (a > 1.25 * b || b > 1.25 * a) print ", the same bytes twice: the spread of single runs on this host"}')
REVERTS_NOTE="Every revert left its VM as it should: shut off, or running for the memory snapshots."
[ "$PH_OFF_REVERT_STATE $PH_MEM_REVERT_STATE $PH_LIVE_REVERT_STATE $LV_OFF_REVERT_STATE $LV_MEM_REVERT_STATE" = \
    "shut_off running shut_off shut_off running" ] || REVERTS_NOTE="A revert left its VM in another state than it should (the table's \"then\")."
# range PATTERN: min-max of the timed commands whose key matches PATTERN.
range() { awk -v p="$1" '$1 ~ p {v = $2 + 0; if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++} END {printf "%.2f-%.2f", lo, hi}' "$WORK/times"; }
PH_RANGE=$(range '^ph-')
LV_OFF_RANGE=$(range '^lv-off-')
FLOOR_RATIO=$(calc "$T_PH_OFF_CREATE / ($T_CP_WARM + $T_CP_SYNC)")
MEM_PART=$(mibv "$((SIZE_MEM1 - SIZE_DISK1))")
SECTION=$(cat <<EOT
<!-- bench:snapshot:start -->
## Snapshots: Phyllome's whole-VM copies against libvirt's internal qcow2 snapshots

Measured $(date -u +%Y-%m-%d) on ${CPU}, $(nproc) cores, ${MEM}, ${OS}; ${STACK}, guests under TCG;
${VERSION:-phyllome} (release build). \`PHYLLOME=target/bench/release/phyllome bash scripts/bench-snapshot.sh\` reproduces it:
one run of each command, in one run of the script, wall time from the clock (the whole run took $TOTAL s; load average
$LOAD0 at its start and $LOAD1 at its end$OTHERS_NOTE).

Both VMs run the test guest (512 MiB, 1 vCPU, no NIC, direct kernel boot), whose \`phyllome.test=fill:$FILL_MIB\` writes
$FILL_MIB MiB of random data to its 4 GiB disk and powers off ($FILL_PHYLLOME s and $FILL_PLAIN s, boot included); for
the running rows each was booted again at the guest's shell (\`PHYLLOME-READY\` after $BOOT_PHYLLOME s and $BOOT_PLAIN s) and
left 5 s. Phyllome's VM is what \`phyllome create --os linux\` makes: a LUKS-encrypted qcow2 pool volume
($(mibv "$DISK_ALLOC") MiB allocated after the fill, $(mibv "$DISK_ALLOC_END") MiB after the last revert), firmware $FIRMWARE with its
NVRAM ($(kibv "$NVRAM_SIZE") KiB) and an emulated TPM 2.0 ($(kibv "$TPM_SIZE") KiB of swtpm state), machine $MACHINE. libvirt's is a
minimal domain the script defines: SeaBIOS, machine $PLAIN_MACHINE, no TPM, an unencrypted qcow2 made by \`qemu-img create\`
($(mibv "$PLAIN_ALLOC") MiB allocated after the fill), internal snapshots (\`virsh snapshot-create-as\`, \`virsh snapshot-revert\`).
Sizes: Phyllome's from \`phyllome snapshot list --json\` (\`size_bytes\`: blocks on disk); libvirt's as what the qcow2's
allocation grew by, and the VM state \`qemu-img info\` gives.

$(cat "$WORK/table.md")

- What Phyllome pays for is the full copy. Each snapshot copies the disk image, every allocated cluster
  ($(mibv "$SIZE_DISK1") MiB for the $FILL_MIB MiB the guest wrote), and a revert copies it back: the shut-off snapshot
  (${T_PH_OFF_CREATE} s, fsynced) took ${FLOOR_RATIO}x the floor, \`cp --sparse=always\` followed by \`sync\` of the same image
  (${CP_SYNCED} s; cp alone took ${T_CP_COLD} s before the snapshot and ${T_CP_WARM} s after it${CP_SPREAD}). The NVRAM
  ($(kibv "$NVRAM_SIZE") KiB) and the TPM state ($(kibv "$TPM_SIZE") KiB) add next to nothing. Encryption costs nothing in a
  shut-off copy (the ciphertext is copied as it is, under the disk's own key); it costs in a running one (below) and
  in the RAM's encryption with age (${MEM_PART} MiB beyond the disk copy in \`mem1\`, against libvirt's $(mibv "$VMSTATE_MEM1") MiB
  VM state: both hold the RAM the guest used). libvirt's internal snapshots copy no data: \`qemu-img snapshot\` (shut off)
  or QEMU's \`savevm\` (running) writes a snapshot table entry and an L1 table and raises the clusters' refcounts inside
  the same qcow2 (+$(kibv "$((PLAIN_ALLOC_DISK1 - PLAIN_ALLOC))") KiB), and old clusters are copied only when the guest later
  writes over them; so their time should not grow with the data, where Phyllome's does (one fill measured here).
- The running disk-only snapshot (${T_PH_LIVE_CREATE} s, against ${T_PH_OFF_CREATE} s shut off) goes through QEMU's block
  layer: libvirt's push-mode backup reads each cluster, decrypting it, and writes it to the copy, encrypting it again
  under the disk's key (QEMU's LUKS path alone moves 325-440 MiB/s on this host: "Encrypted disks" above), while the
  guest runs on, on the same 2 cores (it is paused only for the NVRAM and TPM copies). libvirt has no internal
  snapshot for this case. A Phyllome memory snapshot saves the RAM to a tmpfs and the guest stays stopped until the
  disk copy, the RAM's encryption and the restore are done, the whole ${T_PH_MEM_CREATE} s; \`savevm\` stops the guest too,
  for its ${T_LV_MEM_CREATE} s. $REVERTS_NOTE
- libvirt's internal snapshots cannot be used on Phyllome's encrypted VMs, which is why Phyllome copies: on
  libvirt 11.3 the shut-off snapshot runs \`qemu-img snapshot -c\` without the disk's secret ("Parameter
  'encrypt.key-secret' is required for cipher"), and with memory QEMU 10.0 aborts writing the RAM into the encrypted
  qcow2 (\`qcow2_co_encdec: Assertion QEMU_IS_ALIGNED(len, sector_size)\`), killing the guest. The libvirt VM here is its
  best case, not an equal one: no encryption, no NVRAM, no TPM, its snapshots inside the disk image (they share its
  fate), where Phyllome's are separate files beside it.
- One run of each under TCG on 2 shared cores: the absolute times carry little beyond this host; what carries is that
  Phyllome's snapshots and reverts are copies, seconds per GiB the disk holds (${PH_RANGE} s here), where
  libvirt's are metadata in the same file (${LV_OFF_RANGE} s shut off) plus, with memory, the RAM
  (${T_LV_MEM_CREATE} s to save it, ${T_LV_MEM_REVERT} s to load it back).
<!-- bench:snapshot:end -->
EOT
)
write_section snapshot "$SECTION"
log "wrote docs/benchmarks.md in $TOTAL s"
sed -n '/bench:snapshot:start/,/bench:snapshot:end/p' docs/benchmarks.md
