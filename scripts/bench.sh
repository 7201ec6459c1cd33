#!/usr/bin/env bash
# bench.sh - measure phyllome's CLI against virt-install and plain virsh, and
# write the figures into docs/benchmarks.md (between the bench:cli markers).
#
#   phyllome xml              vs  virt-install --print-xml       (same OS)
#   phyllome create --start   vs  virt-install --import          (unencrypted)
#                             vs  virsh define + virsh start     (the same XML)
#
# Each figure is the median of RUNS runs (default 7) of the whole process,
# wall time and peak RSS from GNU time. Run as root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y -q time >/dev/null
command -v virt-install >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends virtinst >/dev/null
./scripts/build-test-guest.sh >/dev/null
cargo build --release -q
P=$PWD/target/release/phyllome
G=/var/lib/phyllome/test-guest
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# measure LABEL CMD... : runs CMD (a shell snippet, $1 replaced by the run number) RUNS times,
# appending "wall_s rss_kib" lines to $TMP/LABEL; SETUP_$LABEL / CLEAN_$LABEL run untimed around it.
measure() {
    local label=$1 cmd=$2 setup=${3:-true} clean=${4:-true} i
    : >"$TMP/$label"
    for i in $(seq "$RUNS"); do
        eval "${setup//@/$i}" >/dev/null 2>&1
        # Wall time from the clock in nanoseconds (GNU time rounds to 10 ms); peak RSS from GNU time.
        local t0 t1
        t0=$(date +%s%N)
        /usr/bin/time -f '%M' -o "$TMP/rss" bash -c "${cmd//@/$i}" >/dev/null 2>&1 || {
            echo "bench: $label run $i failed: ${cmd//@/$i}" >&2; exit 1; }
        t1=$(date +%s%N)
        echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}') $(tail -1 "$TMP/rss")" >>"$TMP/$label"
        eval "${clean//@/$i}" >/dev/null 2>&1
    done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() { awk '{print $1}' "$TMP/$1" | median; }
rss() { awk '{printf "%.1f\n", $2/1024}' "$TMP/$1" | median; }
range() { awk '{print $1}' "$TMP/$1" | sort -n | awk 'NR==1{a=$1} {b=$1} END {print a "-" b}'; }

echo "bench: phyllome xml vs virt-install --print-xml (windows11)" >&2
measure xml "$P xml --os windows11 --name bench-w11 --network none"
measure vixml "virt-install --connect $URI --print-xml --name bench-w11 --osinfo win11 --memory 8192 --vcpus 2 --disk size=80 --network none --noautoconsole"

GUEST="--kernel $G/vmlinuz --initrd $G/initrd.img --cmdline console=ttyS0 --memory 512M --cpus 1 --disk-size 4G --network none"
cleanup() { echo "virsh -c $URI destroy $1; $P delete $1 || virsh -c $URI undefine $1 --nvram --tpm --remove-all-storage"; }

echo "bench: phyllome create --start (encrypted, and --no-encrypt)" >&2
measure create "$P create phyllome-test-bench-c@ --os linux $GUEST --start" true "$(cleanup phyllome-test-bench-c@)"
measure createplain "$P create phyllome-test-bench-p@ --os linux $GUEST --no-encrypt --start" true "$(cleanup phyllome-test-bench-p@)"

echo "bench: virt-install --import (unencrypted)" >&2
measure viimport "virt-install --connect $URI --name phyllome-test-bench-v@ --memory 512 --vcpus 1 --disk size=4,format=qcow2,pool=phyllome --import --network none --osinfo linux2022 --boot kernel=$G/vmlinuz,initrd=$G/initrd.img,kernel_args=console=ttyS0 --graphics vnc,listen=127.0.0.1 --noautoconsole" \
    true "virsh -c $URI destroy phyllome-test-bench-v@; virsh -c $URI undefine phyllome-test-bench-v@ --nvram --remove-all-storage"

echo "bench: virt-install --import with the same firmware and TPM as phyllome's linux model" >&2
measure viimportfull "virt-install --connect $URI --name phyllome-test-bench-f@ --memory 512 --vcpus 1 --disk size=4,format=qcow2,pool=phyllome --import --network none --osinfo linux2022 --boot uefi,kernel=$G/vmlinuz,initrd=$G/initrd.img,kernel_args=console=ttyS0 --tpm backend.type=emulator,backend.version=2.0,model=tpm-crb --graphics vnc,listen=127.0.0.1 --noautoconsole" \
    true "virsh -c $URI destroy phyllome-test-bench-f@; virsh -c $URI undefine phyllome-test-bench-f@ --nvram --tpm --remove-all-storage"

echo "bench: virsh define + start of phyllome's XML (volume and secret made beforehand)" >&2
measure virsh "virsh -c $URI define $TMP/d@.xml && virsh -c $URI start phyllome-test-bench-d@" \
    "$P create phyllome-test-bench-d@ --os linux $GUEST && virsh -c $URI dumpxml --inactive phyllome-test-bench-d@ > $TMP/d@.xml && virsh -c $URI undefine --keep-nvram phyllome-test-bench-d@" \
    "$(cleanup phyllome-test-bench-d@)"

CPU=$(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')
MEM=$(free -g | awk '/Mem:/ {print $2}')
KVM=$(test -e /dev/kvm && echo "KVM" || echo "TCG (no usable KVM)")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN {print (a <= 1.10 * b) ? "met" : "NOT met"}'; }
SECTION=$(cat <<EOT
<!-- bench:cli:start -->
## CLI: \`phyllome xml\` and \`phyllome create --start\`

Measured $(date -u +%Y-%m-%d) on $CPU, $(nproc) cores, ${MEM} GiB, $(. /etc/os-release; echo "$PRETTY_NAME"),
libvirt $(virsh -c $URI version | awk '/Using library/ {print $4}'), QEMU $(virsh -c $URI version | awk '/Running hypervisor/ {print $4}'), guests under $KVM.
Median of $RUNS runs of the whole process (wall time from the clock; peak RSS of the largest process in the tree, from GNU time);
\`scripts/bench.sh\` reproduces it.

| command | wall (median) | wall (min-max) | peak RSS (median) |
|---|---|---|---|
| \`phyllome xml --os windows11\` | $(wall xml) s | $(range xml) s | $(rss xml) MiB |
| \`virt-install --print-xml --osinfo win11\` | $(wall vixml) s | $(range vixml) s | $(rss vixml) MiB |
| \`phyllome create --start\` (LUKS-encrypted qcow2) | $(wall create) s | $(range create) s | $(rss create) MiB |
| \`phyllome create --start --no-encrypt\` | $(wall createplain) s | $(range createplain) s | $(rss createplain) MiB |
| \`virt-install --import\` (unencrypted) | $(wall viimport) s | $(range viimport) s | $(rss viimport) MiB |
| \`virt-install --import --boot uefi --tpm ...\` (unencrypted, same firmware and TPM) | $(wall viimportfull) s | $(range viimportfull) s | $(rss viimportfull) MiB |
| \`virsh define\` + \`virsh start\` of the same XML | $(wall virsh) s | $(range virsh) s | $(rss virsh) MiB |

- \`phyllome xml\` is $(ratio "$(wall vixml)" "$(wall xml)")x faster than \`virt-install --print-xml\` and uses $(ratio "$(rss vixml)" "$(rss xml)")x less memory.
- \`phyllome create --start\` (encrypted) takes $(ratio "$(wall create)" "$(wall virsh)")x the time of plain define + start of the same
  XML (target: at most 1.10x: $(verdict "$(wall create)" "$(wall virsh)")). It writes the LUKS-encrypted qcow2 itself
  (\`phyllome-disk\`), where \`qemu-img\` spends seconds of CPU benchmarking PBKDF2 for every new LUKS volume
  (see "Encrypted disks" below for the figures on this QEMU).
- Against \`virt-install --import\` of the same firmware and TPM, phyllome (encrypting) takes $(ratio "$(wall create)" "$(wall viimportfull)")x the time
  and $(ratio "$(rss create)" "$(rss viimportfull)")x the memory. Plain \`virt-install --import\` makes a BIOS VM without TPM, which starts faster.
- Peak RSS of the encrypted create: $(rss create) MiB (target: at most 20 MiB: $(awk -v r="$(rss create)" 'BEGIN {print (r <= 20) ? "met" : "NOT met"}')). Most of it is libvirt's client library and the ~50 shared
  libraries it maps (gnutls, glib, libxml2...): \`virsh\` itself peaks at $(rss virsh) MiB.
<!-- bench:cli:end -->
EOT
)
. scripts/lib/bench-section.sh
write_section cli "$SECTION"
F=docs/benchmarks.md
echo "bench: wrote $F" >&2
sed -n '/bench:cli:start/,/bench:cli:end/p' "$F"
