#!/usr/bin/env bash
# bench-bundle.sh - `phyllome export` / `phyllome import` against `cp` and `tar`
# of the same files, in one run, and write the figures into docs/benchmarks.md
# (between the bench:bundle markers):
#
#   1. a Phyllome VM (`phyllome create`: LUKS-encrypted qcow2 4 GiB, UEFI NVRAM,
#      TPM, 512 MiB, no NIC) on the test guest, whose `phyllome.test=fill:2048`
#      writes 2 GiB of random data to its disk and powers off;
#   2. timed, one after the other, each run three times: `phyllome export`
#      (to a file on the same file system as the pool), `phyllome import` of that
#      bundle under another name (then deleted again), `cp --sparse=always` of
#      the disk image, NVRAM and TPM state, and `tar -cSf` of the same files
#      and `tar -xf` of that archive (the limit of this disk for the same bytes);
#   3. export's and import's memory: the largest USS (Private_Clean +
#      Private_Dirty) and PSS of the phyllome process, from /proc/PID/smaps_rollup
#      every 100 ms, beside tar's;
#   4. the bundle's size against the disk image's allocation.
#
# Names: phyllome-test-bench-bundle-PID and phyllome-test-bench-bundle-PID-in
# (the import); on exit, however it exits, both VMs are deleted (disks, keys,
# NVRAM, TPM state) and the bundle and copies removed. Nothing else is touched.
# Run as root after scripts/setup.sh.
#
#   PHYLLOME  the phyllome binary (default target/release/phyllome; build it with
#             CARGO_TARGET_DIR=target/bench cargo build --release and give
#             PHYLLOME=target/bench/release/phyllome)
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. scripts/lib/bench-section.sh
. scripts/lib/bench-mem.sh

P=$(realpath -m -- "${PHYLLOME:-target/release/phyllome}")
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
G=/var/lib/phyllome/test-guest
FILL_MIB=2048
RUNS=3
VM="phyllome-test-bench-bundle-$$"
IN="$VM-in"
POOL=/var/lib/libvirt/images/phyllome
QLOG=/var/log/libvirt/qemu
PASS="bench passphrase $$"

log() { printf 'bench-bundle: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"
[ -x "$P" ] || die "no phyllome binary at $P (set PHYLLOME)"
"$P" export --help >/dev/null 2>&1 || die "$P has no export command: build it again"
virsh -c "$URI" version >/dev/null || die "libvirtd does not answer: run scripts/setup.sh"
./scripts/build-test-guest.sh >/dev/null

# The work folder sits beside the pool (same file system), so every copy pays the same disk.
WORK=$(mktemp -d /var/lib/libvirt/images/.phyllome-bench-bundle.XXXXXX)
chmod 700 "$WORK"
cleanup() {
    set +e
    for d in "$VM" "$IN"; do
        case $d in phyllome-test-bench-bundle-*) ;; *) continue ;; esac
        if virsh -c "$URI" domstate "$d" >/dev/null 2>&1; then
            "$P" delete "$d" --force >/dev/null 2>"$WORK/delete.err" || "$P" delete "$d" >/dev/null 2>&1 ||
                log "could not delete $d: $(cat "$WORK/delete.err")"
        fi
        rm -f "$QLOG/$d-serial.log" "$QLOG/$d.log"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# timed KEY CMD...: runs CMD (standard input from $WORK/stdin), records wall seconds and peak memory.
timed() {
    local key=$1 t0 t1 pid
    shift
    t0=$(date +%s.%N)
    "$@" <"$WORK/stdin" >"$WORK/$key.out" 2>"$WORK/$key.err" &
    pid=$!
    peak "$pid" "$WORK/$key.mem" &
    wait "$pid" || die "$key ($*): $(tail -3 "$WORK/$key.err")"
    t1=$(date +%s.%N)
    wait
    awk -v k="$key" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s %.3f\n", k, b - a}' >>"$WORK/times"
    printf '%s %s\n' "$key" "$(cat "$WORK/$key.mem")" >>"$WORK/mems"
    log "$key: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
}
wait_off() {
    for _ in $(seq "$(($2 * 2))"); do
        [ "$(virsh -c "$URI" domstate "$1" 2>/dev/null | head -1)" = "shut off" ] && return 0
        sleep 0.5
    done
    die "$1 did not power off within $2 s"
}
alloc() { stat -c '%b %B' "$1" | awk '{print $1 * $2}'; }

log "creating $VM and filling $FILL_MIB MiB of its disk (minutes under TCG)"
"$P" create "$VM" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" \
    --cmdline "console=ttyS0 panic=-1 phyllome.test=fill:$FILL_MIB" --memory 512M --disk-size 4G --network none \
    --start >/dev/null 2>"$WORK/create.err" || die "create: $(cat "$WORK/create.err")"
wait_off "$VM" 1800
grep -aq PHYLLOME-FILLED "$QLOG/$VM-serial.log" || die "the guest did not fill its disk: $(tail -3 "$QLOG/$VM-serial.log")"
UUID=$(virsh -c "$URI" domuuid "$VM")
DISK="$POOL/$VM.qcow2"
NVRAM="/var/lib/libvirt/qemu/nvram/${VM}_VARS.qcow2"
TPM="/var/lib/libvirt/swtpm/$UUID/tpm2"
DISK_ALLOC=$(alloc "$DISK")
printf '%s\n%s\n' "$PASS" "$PASS" >"$WORK/stdin"

for i in $(seq "$RUNS"); do
    rm -f "$WORK/b.phyllome"
    timed "export-$i" "$P" export "$VM" -o "$WORK/b.phyllome" --passphrase-stdin
    sync
    timed "import-$i" "$P" import "$WORK/b.phyllome" --name "$IN" --passphrase-stdin
    sync
    "$P" delete "$IN" >/dev/null
    rm -rf "$WORK/cp" "$WORK/t.tar" "$WORK/x"
    mkdir "$WORK/cp" "$WORK/x"
    timed "cp-$i" sh -c 'cp --sparse=always "$1" "$2" "$4/" && cp -r "$3" "$4/tpm" && sync' sh "$DISK" "$NVRAM" "$TPM" "$WORK/cp"
    timed "tar-c-$i" sh -c 'tar -cSf "$1" -C / "${2#/}" "${3#/}" "${4#/}" && sync' sh "$WORK/t.tar" "$DISK" "$NVRAM" "$TPM"
    timed "tar-x-$i" sh -c 'tar -xSf "$1" -C "$2" && sync' sh "$WORK/t.tar" "$WORK/x"
done
BUNDLE=$(stat -c %s "$WORK/b.phyllome")
TAR=$(stat -c %s "$WORK/t.tar")

median() { awk -v k="$1" '$1 ~ "^"k"-[0-9]+$" {print $2}' "$WORK/times" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
maxmem() { awk -v k="$1" -v f="$2" '$1 ~ "^"k"-[0-9]+$" {print $f}' "$WORK/mems" | sort -g | tail -1; }
runs() { awk -v k="$1" '$1 ~ "^"k"-[0-9]+$" {printf "%s%s", s, $2; s=", "}' "$WORK/times"; }
mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }
rate() { awk -v b="$DISK_ALLOC" -v t="$1" 'BEGIN {printf "%.0f", b / 1048576 / t}'; }

row() {
    local key=$1 label=$2 t
    t=$(median "$key")
    printf '| %s | %s s | %s MiB/s | %s | %s MiB / %s MiB |\n' "$label" "$t" "$(rate "$t")" "$(runs "$key")" \
        "$(awk -v k="$(maxmem "$key" 2)" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$(awk -v k="$(maxmem "$key" 3)" 'BEGIN {printf "%.1f", k / 1024}')"
}

SECTION=$(cat <<EOF
<!-- bench:bundle:start -->
## Export and import (\`scripts/bench-bundle.sh\`)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"),
$(virsh -c "$URI" version 2>/dev/null | awk -F': ' '/Running hypervisor/ {print $2} /Using library/ {print $2}' | paste -sd, -),
guests under TCG. Date: $(date -u +%Y-%m-%d). One VM: 4 GiB LUKS disk with $FILL_MIB MiB of random data written by the
guest ($(mib "$DISK_ALLOC") MiB allocated), UEFI NVRAM, TPM. Each command $RUNS times; the median, every run, and the
largest USS (private memory) and PSS seen over the runs (\`/proc/PID/smaps_rollup\` every 100 ms). Throughput is the
disk's allocation over the time. Copies go to the same file system as the pool, and each ends with \`sync\`.

| command | median | throughput | runs (s) | peak USS / PSS |
|---|---|---|---|---|
$(row export "\`phyllome export\` (QEMU re-encrypts into a staging copy, then the bundle is written)")
$(row import "\`phyllome import\` (read, checksums checked, disk moved into the pool, VM defined)")
$(row cp "\`cp --sparse=always\` of disk, NVRAM and TPM state")
$(row tar-c "\`tar -cSf\` of the same files")
$(row tar-x "\`tar -xSf\` of that archive")

- Sizes: the bundle is $(mib "$BUNDLE") MiB for $(mib "$DISK_ALLOC") MiB allocated on the disk (the tar of the same
  files: $(mib "$TAR") MiB). Phyllome's disk part is the backup's qcow2, which holds only the clusters the guest wrote.
- Export writes the disk twice (the re-encrypted staging copy, then the bundle), and import once (staging; the
  move into the pool is a rename): that, and the checksums (SHA-256 of every byte, on export and on import), are
  what the bundle pays against \`tar\` for never holding plaintext or the disk's own key.
- Memory: about 256 MiB of export's and import's peak is scrypt's (work factor 2^18, fixed, for the passphrase
  that seals the keys); it does not grow with the disk, which streams through 1 MiB buffers.
<!-- bench:bundle:end -->
EOF
)
write_section bundle "$SECTION"
log "written into docs/benchmarks.md"
