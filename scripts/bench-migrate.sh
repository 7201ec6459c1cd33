#!/usr/bin/env bash
# bench-migrate.sh - `phyllome migrate --live --copy-storage` against plain
# libvirt's `virsh migrate --live --copy-storage-all`, in one run, between this
# host's libvirtd and a second one on the same machine (scripts/second-host.sh),
# and write the figures into docs/benchmarks.md (between the bench:migrate markers).
#
# Each round (ROUNDS, default 3), one after the other:
#   a. phyllome: `phyllome create` of the test guest (its linux profile: LUKS
#      qcow2 4 GiB keyed by a libvirt secret, UEFI NVRAM, swtpm TPM, 512 MiB, no
#      NIC) whose `phyllome.test=fill:1024` writes 1 GiB of random data to its
#      disk and powers off; redefined with `phyllome.test=counter` and started;
#      once it counts, `phyllome migrate VM --to URI --live --copy-storage --json`
#      is timed (wall clock; libvirt's downtime and elapsed time from the JSON; the
#      largest USS and PSS of the phyllome process from /proc/PID/smaps_rollup
#      every 100 ms). Then deleted on the second host.
#   b. plain: the same guest, defined with virsh: unencrypted qcow2 4 GiB (made
#      with qemu-img), 512 MiB, no TPM, no UEFI (direct kernel boot), the other
#      devices as Phyllome's; filled the same way and started counting; the
#      destination volume is pre-created (`virsh vol-create-as` in a pool on the
#      second host), then `virsh migrate --live --p2p --persistent
#      --undefinesource --copy-storage-all --migrateuri unix://... --disks-uri
#      unix://...` is timed; its downtime and elapsed time from `virsh domjobinfo
#      --completed` on the destination. Then removed on both hosts.
# Both migrations carry their data over unix sockets in /tmp, as phyllome does
# for a qemu+unix:// destination. After each move the guest must still count on
# the destination. Medians are reported, and every round.
#
# Names: phyllome-test-bench-migrate-PID-a-N and -b-N (VMs), the second host
# phyllome-test-bench-h2-PID; on exit, however it exits, the VMs left on this
# host are deleted (disks, keys, NVRAM, TPM state, logs) and the second host is
# stopped and removed (scripts/second-host.sh stop) with all it holds. Nothing
# else is touched. Run as root after scripts/setup.sh.
#
#   PHYLLOME  the phyllome binary (default target/release/phyllome; build it with
#             CARGO_TARGET_DIR=target/bench cargo build --release -p phyllome and
#             give PHYLLOME=target/bench/release/phyllome)
#   ROUNDS    rounds (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. scripts/lib/bench-section.sh
. scripts/lib/bench-mem.sh

P=$(realpath -m -- "${PHYLLOME:-target/release/phyllome}")
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
G=/var/lib/phyllome/test-guest
FILL_MIB=1024
ROUNDS=${ROUNDS:-3}
PREFIX="phyllome-test-bench-migrate-$$"
H2NAME="phyllome-test-bench-h2-$$"
H2BASE=/var/lib/phyllome-test-hosts/$H2NAME
PLAIN_DIR=/var/lib/libvirt/images
H2POOL="phyllome-test-bench-migrate-pool-$$"
QLOG=/var/log/libvirt/qemu
SOCK="/tmp/$PREFIX"

log() { printf 'bench-migrate: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"
case $ROUNDS in '' | *[!0-9]* | 0) die "ROUNDS must be a positive number" ;; esac
[ -x "$P" ] || die "no phyllome binary at $P (set PHYLLOME)"
"$P" migrate --help >/dev/null 2>&1 || die "$P has no migrate command: build it again"
virsh -c "$URI" version >/dev/null || die "libvirtd does not answer: run scripts/setup.sh"
command -v qemu-img >/dev/null || die "no qemu-img: run scripts/setup.sh"
./scripts/build-test-guest.sh >/dev/null

WORK=$(mktemp -d /tmp/.phyllome-bench-migrate.XXXXXX)
chmod 700 "$WORK"
H2=
cleanup() {
    set +e
    local d
    for d in $(virsh -c "$URI" list --all --name 2>/dev/null); do
        case $d in "$PREFIX"-a-*) ;; "$PREFIX"-b-*) ;; *) continue ;; esac
        case $d in
            *-a-*)
                virsh -c "$URI" destroy "$d" >/dev/null 2>&1
                "$P" delete "$d" >/dev/null 2>"$WORK/delete.err" ||
                    log "could not delete $d: $(cat "$WORK/delete.err")"
                ;;
            *)
                virsh -c "$URI" destroy "$d" >/dev/null 2>&1
                virsh -c "$URI" undefine "$d" >/dev/null 2>&1
                ;;
        esac
    done
    rm -f "$PLAIN_DIR/$PREFIX"-b-*.qcow2 "$QLOG/$PREFIX"-* "$SOCK"*
    [ -n "$H2" ] && ./scripts/second-host.sh stop "$H2NAME" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# timed KEY CMD...: runs CMD, records its wall seconds in $WORK/times and its peak memory in $WORK/mems.
timed() {
    local key=$1 t0 t1 pid
    shift
    t0=$(date +%s.%N)
    "$@" </dev/null >"$WORK/$key.out" 2>"$WORK/$key.err" &
    pid=$!
    peak "$pid" "$WORK/$key.mem" &
    wait "$pid" || die "$key ($*): $(tail -3 "$WORK/$key.err")"
    t1=$(date +%s.%N)
    wait
    awk -v k="$key" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s %.2f\n", k, b - a}' >>"$WORK/times"
    printf '%s %s\n' "$key" "$(cat "$WORK/$key.mem")" >>"$WORK/mems"
    log "$key: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
}
# timed_migrate ROUND VM: `phyllome migrate VM --live --copy-storage --json`, timed like `timed` (key a-ROUND), and
# its phases: its standard error's lines time-stamped (the note of the new disk key comes once the check passed and
# the secret is made), and the moment the source's QEMU stops (the end of libvirt's job; phyllome deletes after).
timed_migrate() {
    local key="a-$1" vm=$2 t0 t1 pid
    t0=$(date +%s.%N)
    "$P" migrate "$vm" --to "$H2" --live --copy-storage --json </dev/null >"$WORK/$key.out" \
        2> >(while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "$l"; done >"$WORK/$key.err") &
    pid=$!
    peak "$pid" "$WORK/$key.mem" &
    (
        while :; do
            case $(virsh -c "$URI" domstate "$vm" 2>/dev/null | head -1) in running | paused) sleep 0.25 ;; *) break ;; esac
        done
        date +%s.%N >"$WORK/$key.off"
    ) &
    wait "$pid" || die "phyllome migrate $vm: $(tail -3 "$WORK/$key.err")"
    t1=$(date +%s.%N)
    wait
    sleep 0.2
    awk -v k="$key" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s %.2f\n", k, b - a}' >>"$WORK/times"
    printf '%s %s\n' "$key" "$(cat "$WORK/$key.mem")" >>"$WORK/mems"
    awk -v k="$key" -v a="$t0" '/new disk key/ {printf "%s-check %.2f\n", k, $1 - a; exit}' "$WORK/$key.err" >>"$WORK/times"
    put "$key-off" "$(awk -v a="$t0" '{printf "%.2f", $1 - a}' "$WORK/$key.off")"
    put "$key-finish" "$(awk -v a="$(cat "$WORK/$key.off")" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
    log "$key: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
}
# put KEY VALUE: one figure of a round.
put() { printf '%s %s\n' "$1" "$2" >>"$WORK/times"; }
wait_off() {
    for _ in $(seq "$(($2 * 2))"); do
        [ "$(virsh -c "$URI" domstate "$1" 2>/dev/null | head -1)" = "shut off" ] && return 0
        sleep 0.5
    done
    die "$1 did not power off within $2 s"
}
# wait_line FILE TEXT SECONDS: until FILE holds TEXT.
wait_line() {
    for _ in $(seq "$(($3 * 2))"); do
        grep -aq "$2" "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    die "no \"$2\" in $1 within $3 s: $(tail -c 300 "$1" 2>/dev/null)"
}
# counts_on_h2 VM: the guest runs on the second host and its counter goes on there.
counts_on_h2() {
    local f="$H2BASE/log/qemu/$1-serial.log" n0 n1
    [ "$(virsh -c "$H2" domstate "$1" 2>/dev/null | head -1)" = running ] || die "$1 does not run on the second host"
    wait_line "$f" PHYLLOME-COUNT 60
    n0=$(grep -a PHYLLOME-COUNT "$f" | tail -1 | tr -dc 0-9)
    for _ in $(seq 60); do
        sleep 0.5
        n1=$(grep -a PHYLLOME-COUNT "$f" | tail -1 | tr -dc 0-9)
        [ "$n1" -gt "$n0" ] && return 0
    done
    die "$1 stopped counting on the second host"
}
# redefine_counter VM: its kernel command line becomes `console=ttyS0 panic=-1 phyllome.test=counter`.
redefine_counter() {
    virsh -c "$URI" dumpxml --inactive "$1" |
        sed 's|<cmdline>.*</cmdline>|<cmdline>console=ttyS0 panic=-1 phyllome.test=counter</cmdline>|' >"$WORK/$1.xml"
    virsh -c "$URI" define "$WORK/$1.xml" >/dev/null
}
# jobinfo CONN VM KEY-PREFIX: downtime and elapsed (ms) of the completed job, from `virsh domjobinfo --completed`.
jobinfo() {
    virsh -c "$1" domjobinfo --completed --keep-completed "$2" >"$WORK/$3.jobinfo" 2>&1 || true
    awk -v k="$3" '/^Total downtime:/ {print k "-down " $3} /^Time elapsed:/ && !e {e = 1; print k "-elapsed " $3}' \
        "$WORK/$3.jobinfo" >>"$WORK/times"
}

# alloc SIDE ROUND POOL VM: the allocation (bytes) of the VM's disk on the second host, after the move.
alloc() {
    virsh -c "$H2" pool-refresh "$3" >/dev/null 2>&1 || true
    put "$1-$2-alloc" "$(virsh -c "$H2" vol-info --bytes --pool "$3" "$4.qcow2" | awk '/^Allocation:/ {print $2}')"
}

plain_xml() {
    local name=$1 disk=$2
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$G/vmlinuz</kernel>
    <initrd>$G/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 phyllome.test=fill:$FILL_MIB</cmdline>
  </os>
  <features><acpi/><apic/><vmport state='off'/></features>
  <cpu mode='maximum' check='none'><topology sockets='1' dies='1' cores='1' threads='1'/></cpu>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap' detect_zeroes='unmap'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='qemu-xhci'/>
    <input type='keyboard' bus='virtio'/>
    <input type='tablet' bus='virtio'/>
    <graphics type='vnc' port='-1' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <sound model='ich9'/>
    <serial type='pty'>
      <log file='$QLOG/$name-serial.log' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='virtio' freePageReporting='on'><stats period='10'/></memballoon>
  </devices>
</domain>
EOF
}

log "starting the second host $H2NAME"
H2=$(./scripts/second-host.sh start "$H2NAME" 2>"$WORK/h2.err") || die "second host: $(cat "$WORK/h2.err")"
# The destination's directory pool where the plain disk goes (the same path as on this host).
virsh -c "$H2" pool-create-as "$H2POOL" dir --target "$PLAIN_DIR" >/dev/null

phyllome_round() {
    local i=$1 vm="$PREFIX-a-$1" uss pss
    log "round $i: phyllome: creating $vm and filling $FILL_MIB MiB of its disk"
    "$P" create "$vm" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" \
        --cmdline "console=ttyS0 panic=-1 phyllome.test=fill:$FILL_MIB" --memory 512M --disk-size 4G \
        --network none --start >/dev/null 2>"$WORK/create.err" || die "create: $(cat "$WORK/create.err")"
    wait_off "$vm" 1800
    grep -aq PHYLLOME-FILLED "$QLOG/$vm-serial.log" || die "$vm did not fill its disk: $(tail -3 "$QLOG/$vm-serial.log")"
    redefine_counter "$vm"
    "$P" start "$vm" >/dev/null 2>"$WORK/start.err" || die "start $vm: $(cat "$WORK/start.err")"
    wait_line "$QLOG/$vm-serial.log" PHYLLOME-COUNT 300
    sleep 2
    timed_migrate "$i" "$vm"
    python3 - "$WORK/a-$i.out" "$i" >>"$WORK/times" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
i = sys.argv[2]
print(f"a-{i}-down {s.get('downtime_ms')}")
print(f"a-{i}-elapsed {s['time_elapsed_ms']}")
print(f"a-{i}-data {s['data_processed']}")
print(f"a-{i}-mem {s['memory_processed']}")
PY
    awk -v k="a-$i" '$1 == k "-off" {o = $2} $1 == k "-elapsed" {e = $2} $1 == k "-check" {c = $2}
        END {printf "%s-prepare %.2f\n", k, o - e / 1000 - c}' "$WORK/times" >>"$WORK/times"
    read -r uss pss <"$WORK/a-$i.mem"
    put "a-$i-uss" "$uss"
    put "a-$i-pss" "$pss"
    counts_on_h2 "$vm"
    virsh -c "$URI" domstate "$vm" >/dev/null 2>&1 && die "$vm is still defined here after the move"
    alloc a "$i" phyllome "$vm"
    virsh -c "$H2" destroy "$vm" >/dev/null
    PHYLLOME_CONNECT=$H2 "$P" delete "$vm" >/dev/null 2>"$WORK/delete.err" ||
        die "delete $vm on the second host: $(cat "$WORK/delete.err")"
    rm -f "$QLOG/$vm-serial.log" "$QLOG/$vm.log"
}

plain_round() {
    local i=$1 vm="$PREFIX-b-$1" disk t0 t1
    disk="$PLAIN_DIR/$vm.qcow2"
    log "round $i: plain: defining $vm and filling $FILL_MIB MiB of its disk"
    qemu-img create -q -f qcow2 "$disk" 4G
    plain_xml "$vm" "$disk" >"$WORK/$vm.xml"
    virsh -c "$URI" define "$WORK/$vm.xml" >/dev/null
    virsh -c "$URI" start "$vm" >/dev/null
    wait_off "$vm" 1800
    grep -aq PHYLLOME-FILLED "$QLOG/$vm-serial.log" || die "$vm did not fill its disk: $(tail -3 "$QLOG/$vm-serial.log")"
    redefine_counter "$vm"
    virsh -c "$URI" start "$vm" >/dev/null
    wait_line "$QLOG/$vm-serial.log" PHYLLOME-COUNT 300
    sleep 2
    # Pre-creating the destination's volume, and the move, are timed together (b-N); each also alone.
    t0=$(date +%s.%N)
    timed "b-$i-vol" virsh -c "$H2" vol-create-as "$H2POOL" "$vm.qcow2" 4G --format qcow2
    timed "b-$i-migrate" virsh -c "$URI" migrate --live --p2p --persistent --undefinesource --copy-storage-all \
        --migrateuri "unix://$SOCK.sock" --disks-uri "unix://$SOCK-nbd.sock" "$vm" "$H2"
    t1=$(date +%s.%N)
    awk -v k="b-$i" -v a="$t0" -v b="$t1" 'BEGIN {printf "%s %.2f\n", k, b - a}' >>"$WORK/times"
    jobinfo "$H2" "$vm" "b-$i"
    counts_on_h2 "$vm"
    virsh -c "$URI" domstate "$vm" >/dev/null 2>&1 && die "$vm is still defined here after the move"
    alloc b "$i" "$H2POOL" "$vm"
    virsh -c "$H2" destroy "$vm" >/dev/null
    virsh -c "$H2" undefine "$vm" >/dev/null
    virsh -c "$H2" vol-delete --pool "$H2POOL" "$vm.qcow2" >/dev/null
    rm -f "$disk" "$QLOG/$vm-serial.log" "$QLOG/$vm.log"
}

for i in $(seq "$ROUNDS"); do
    phyllome_round "$i"
    plain_round "$i"
done

# What LUKS alone costs here, for the reading: making a 4 GiB LUKS qcow2 (what the destination's libvirt runs for
# phyllome's volume: qemu-img, its PBKDF calibrated to 2 s) and opening it for I/O (what the destination's QEMU does).
LUKS="$WORK/luks-probe.qcow2"
t0=$(date +%s.%N)
qemu-img create -q -f qcow2 --object secret,id=s0,data="probe $$" -o encrypt.format=luks,encrypt.key-secret=s0 "$LUKS" 4G
t1=$(date +%s.%N)
qemu-io --object secret,id=s0,data="probe $$" --image-opts "driver=qcow2,file.filename=$LUKS,encrypt.key-secret=s0" \
    -c 'read 0 4k' >/dev/null
t2=$(date +%s.%N)
LUKS_CREATE=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
LUKS_OPEN=$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.1f", b - a}')
rm -f "$LUKS"
log "LUKS probe: create $LUKS_CREATE s, open $LUKS_OPEN s"

# fig KEY SUFFIX: every round's figure KEY-N-SUFFIX (or KEY-N without a suffix), in round order.
figs() { awk -v k="$1" -v s="${2:-}" '{re = "^" k "-[0-9]+" (s == "" ? "" : "-" s) "$"} $1 ~ re {print $2}' "$WORK/times"; }
median() { figs "$1" "${2:-}" | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }
runs() { figs "$1" "${2:-}" | paste -sd/ - | sed 's|/| / |g'; }
sec() { awk -v m="$1" 'BEGIN {printf (m == "n/a" ? "n/a" : "%.1f s"), m / 1000}'; }
kmib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
bmib() { figs "$1" "$2" | sort -g | tail -1 | awk '{printf "%.0f", $1 / 1048576}'; }
maxk() { figs "$1" "$2" | sort -g | tail -1; }

log "results:"
cat "$WORK/times" >&2

A=$(median a) AV=$(median b vol) AM=$(median b migrate) B=$(median b)
SECTION=$(cat <<EOF
<!-- bench:migrate:start -->
## Migration: \`phyllome migrate --live --copy-storage\` vs \`virsh migrate --live --copy-storage-all\` (\`scripts/bench-migrate.sh\`)

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"),
$(virsh -c "$URI" version 2>/dev/null | awk -F': ' '/Running hypervisor/ {print $2} /Using library/ {print $2}' | paste -sd, - | sed 's/,/, /g'),
guests under TCG (no usable KVM), shared with other work. Date: $(date -u +%Y-%m-%d). Two libvirt hosts on this one
machine (\`scripts/second-host.sh\`: a second libvirtd in its own mount namespace); both migrations carry the memory
and the disk over unix sockets (\`--migrateuri\`/\`--disks-uri\`, what phyllome passes for a \`qemu+unix://\`
destination), so the figures are the two stacks' cost, not a network's. The guest: the test guest (kernel and busybox
initramfs, 1 vCPU, 512 MiB), which wrote $FILL_MIB MiB of random data to its 4 GiB qcow2 disk (\`phyllome.test=fill\`),
then runs \`phyllome.test=counter\` during the move (it must go on counting on the destination). $ROUNDS rounds, the
two interleaved in each; a fresh VM per round and per side; the median, and every round.

- **phyllome**: \`phyllome create\` (linux profile: LUKS qcow2 keyed by a libvirt secret, UEFI NVRAM, swtpm TPM 2.0),
  moved by \`phyllome migrate VM --to URI --live --copy-storage --json\`. Its wall time includes the check, the new key,
  LUKS volume and NVRAM/kernel uploads made on the destination, libvirt's migration, and the deletion of the source's
  domain, volume, key, NVRAM and TPM state.
- **plain**: the same guest defined with virsh, an unencrypted qcow2, no TPM, no UEFI (direct kernel boot; the other
  devices as Phyllome's); \`virsh vol-create-as\` of the destination's volume (in a directory pool at the same path),
  then \`virsh migrate --live --p2p --persistent --undefinesource --copy-storage-all --migrateuri unix://...
  --disks-uri unix://...\`. Its wall time is the two together (the source's disk file stays behind, as virsh leaves it).
- downtime and libvirt's elapsed time: libvirt's completed-job statistics (phyllome's JSON; \`virsh domjobinfo
  --completed\` on the destination for virsh).

| | wall time (median) | libvirt elapsed | downtime | wall time per round (s) | downtime per round (ms) |
|---|---|---|---|---|---|
| \`phyllome migrate --live --copy-storage\` | $A s | $(sec "$(median a elapsed)") | $(median a down) ms | $(runs a) | $(runs a down) |
| \`virsh vol-create-as\` + \`virsh migrate --live --copy-storage-all\` | $B s | $(sec "$(median b elapsed)") | $(median b down) ms | $(runs b) | $(runs b down) |

- phyllome's wall time by phase (medians): connecting, the check and the new secret $(median a check) s; preparing the destination (the LUKS
  volume made here and uploaded, the NVRAM and kernel/initrd uploaded) $(median a prepare) s;
  libvirt's job $(sec "$(median a elapsed)"); then deleting the source's domain, volume, key, NVRAM and TPM state
  $(median a finish) s. (Phases from the time-stamped note that follows the check and the moment the source's QEMU
  stopped.)
- Of the plain side, \`vol-create-as\` took $AV s (median) and \`virsh migrate\` $AM s. The disk on the destination
  afterwards: $(bmib a alloc) MiB allocated (phyllome), $(bmib b alloc) MiB (plain), largest round; phyllome's
  memory part: $(bmib a mem) MiB of 512 (libvirt skips the guest's zero pages).
- The phyllome process itself stays small while libvirt and QEMU do the copying: at most $(kmib "$(maxk a uss)") MiB USS /
  $(kmib "$(maxk a pss)") MiB PSS over the rounds (\`/proc/PID/smaps_rollup\` every 100 ms).

What the figures mean. Both sides use the same machinery (libvirt's NBD mirror of the disk, QEMU's pre-copy of
memory, over the same sockets), so the difference is what Phyllome adds around it and what encryption costs:

- Before libvirt's job, the destination's empty LUKS volume: Phyllome makes it here (\`phyllome-disk\`, one key
  slot at the random-key cost, as \`create\` makes disks: the key is 32 random bytes, so stretching it adds nothing)
  and uploads it into the destination's pool, about 2 MiB whatever the disk's size. libvirt's own way,
  \`qemu-img create\` with PBKDF2 calibrated to 2 s of this CPU, took $LUKS_CREATE s alone here (against $AV s for the
  plain \`vol-create-as\`), and the destination's QEMU derives that key again when it opens the volume ($LUKS_OPEN s
  alone, with \`qemu-io\`). The first \`phyllome migrate\` used it: 17.07 s wall time and 10.1 s of libvirt's job
  in this same benchmark earlier on 2026-12-02. Defining the secret and uploading the NVRAM and the kernel and
  initrd (16 MiB, through libvirt's storage streams, since the destination may be remote) make most of the
  preparation now; the check (domain capabilities, free memory and space) is the first figure of the phases.
- Inside libvirt's job, every cluster the guest wrote is decrypted on the source and encrypted with the new key
  on the destination (QEMU re-encrypts as it copies: the disk's key never leaves its host), and the destination
  starts its swtpm and takes the TPM state from the migration stream. These were not timed apart; together they
  are the gap between the two "libvirt elapsed" figures. On these 2 shared cores under TCG, the ciphers compete
  with the guest's emulation and with the other work on the machine.
- Downtime stays small on both sides: the switch-over pauses the guest for its last dirty pages and the device
  state (phyllome's also carries the TPM's). Phyllome's median was $(awk -v a="$(median a down)" -v b="$(median b down)" \
  'BEGIN {print (a > b ? "the higher" : "not the higher")}') here ($(median a down) against $(median b down) ms), but with
  $ROUNDS rounds on shared cores the rounds overlap (see each round's).
- After the job, phyllome removes the source's copy (domain, volume, key, NVRAM, TPM state) only once the
  destination runs the VM; \`virsh migrate --undefinesource\` leaves the source's disk file behind, and an
  encrypted disk would have needed its secret, with the same key, defined on the destination beforehand.
- The figures are one machine's two daemons: no network. Over 1 GbE (about 110 MiB/s) this 1 GiB disk alone
  would add some 10 s to both sides, and phyllome's fixed costs above would weigh less.
<!-- bench:migrate:end -->
EOF
)
printf '%s\n' "$SECTION" >"$WORK/section.md"
write_section migrate "$SECTION"
log "written into docs/benchmarks.md"
