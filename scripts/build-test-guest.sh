#!/usr/bin/env bash
# build-test-guest.sh - build a tiny Linux test guest (kernel + busybox
# initramfs) for Phyllome's integration tests, from Debian packages only.
#
# Usage: scripts/build-test-guest.sh [OUTPUT_DIR]
#   OUTPUT_DIR defaults to /var/lib/phyllome/test-guest and ends up holding
#   vmlinuz, initrd.img and STAMP. Must run as root on Debian (uses apt).
#
# The result is cached: when OUTPUT_DIR/STAMP matches the hash of this script
# plus the current kernel package version, nothing is done. A build happens in
# temporary directories and is renamed into place, so an interrupted build
# never leaves a half-built guest behind.
#
# Guest behaviour (kernel command line must contain console=ttyS0):
#   prints PHYLLOME-BOOT, loads the virtio/input/button modules, then prints
#   "PHYLLOME-VIRTIO: <sorted virtio device ids>" and
#   "PHYLLOME-PCI: <vendor:device ...>", and acts on phyllome.test=ACTION:
#     write-marker:TEXT  write "PHYLLOME-MARKER:TEXT\n" + zero padding to the
#                        first 512 bytes of /dev/vda (O_DIRECT, fsync), print
#                        PHYLLOME-WROTE, power off
#     read-marker        print the PHYLLOME-MARKER:... line found in the first
#                        512 bytes of /dev/vda (or PHYLLOME-MARKER-MISSING),
#                        power off
#     state:VALUE        for snapshot tests; VALUE is [A-Za-z0-9]+. Prints
#                        "PHYLLOME-STATE: marker=M efivar=E tpm=T": M the disk
#                        marker's text (MISSING if none), E the data of the EFI
#                        variable PhyllomeTest-3a9f6c1e-5d2b-4e8a-9c71-0f4b2d6e8a10
#                        (MISSING if absent), T present|missing for TPM NV index
#                        0x01500016. Then writes marker VALUE, sets the variable
#                        to VALUE (NV|BS|RT) and toggles the NV index (defines it,
#                        8 bytes, owner auth with an empty password, when missing;
#                        undefines it when present), reads all three back, prints
#                        "PHYLLOME-STATE-WRITTEN: marker=VALUE efivar=VALUE tpm=T'"
#                        and powers off. Any failure prints
#                        "PHYLLOME-STATE-ERROR: <what>" and powers off.
#     marker-pair:A:B    write marker A, start acpid, print PHYLLOME-WROTE-A
#                        (the power button works from then on) and wait; the
#                        ACPI power button writes marker B, prints
#                        PHYLLOME-WROTE-B and powers off (PHYLLOME-WRITE-FAILED
#                        if a write fails)
#     counter            start acpid, then print "PHYLLOME-COUNT: N" (N = 1, 2,
#                        ...) every 0.5 s forever; the power button prints
#                        PHYLLOME-POWERBUTTON and powers off
#     fill:MIB           write MIB MiB of random data to /dev/vda from offset
#                        1 MiB (O_DIRECT, fsync), print "PHYLLOME-FILLED: MIB"
#                        (or PHYLLOME-FILL-FAILED), power off
#     dd-bench           write (random data) then read 512 MiB of /dev/vda with O_DIRECT (dd),
#                        print "PHYLLOME-DD-WRITE: 536870912 bytes from T0 to T1"
#                        and the same for READ (T: /proc/uptime), power off
#     busy               spin one vCPU and write the disk without end, after
#                        printing PHYLLOME-BUSY
#     share:TAG          mount the virtiofs TAG, report reading hello.txt,
#                        writing, and following the out/ and up/ symlinks
#                        (PHYLLOME-SHARE-...), power off
#     share-bench:TAG    time 256 MiB through the virtiofs TAG and the disk
#                        (PHYLLOME-BENCH-...), power off
#     poweroff           power off right after the report
#     (none)             start acpid, print PHYLLOME-READY, run a shell on the
#                        console forever; the ACPI power button prints
#                        PHYLLOME-POWERBUTTON and powers off
#   An unknown action prints PHYLLOME-UNKNOWN-ACTION and powers off.
#   The state action needs UEFI (OVMF) and a TPM 2.0; the guest carries
#   e2fsprogs' chattr (with its libraries) to clear the immutable flag that
#   efivarfs sets on the variable's file.

set -euo pipefail
umask 022
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

log() { printf 'build-test-guest: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

OUT=${1:-/var/lib/phyllome/test-guest}
OUT=$(realpath -m -- "$OUT")
[ "$OUT" != / ] || die "refusing to use / as output directory"
PARENT=$(dirname -- "$OUT")
NAME=$(basename -- "$OUT")
SELF=$(realpath -- "${BASH_SOURCE[0]}")

# Meta package whose dependency names the current cloud kernel image package.
KERNEL_META=linux-image-cloud-amd64
# Modules the guest loads (in this order); dependencies are added automatically.
MODULES=(virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev
         virtio_blk virtio_net net_failover failover virtio_console
         virtio_rng virtio_balloon virtio_input virtio_gpu evdev button virtiofs
         efivarfs tpm tpm_crb tpm_tis)

[ "$(id -u)" -eq 0 ] || die "must run as root (uses apt-get)"

# --- apt helpers: refresh package lists only when an operation fails ---------
apt_retry() {
    if ! "$@"; then
        log "'$*' failed; running apt-get update and retrying"
        apt-get update -q >&2
        "$@"
    fi
}

# Install busybox-static, cpio and kmod when missing.
need=()
dpkg-query -W -f='${Status}\n' busybox-static 2>/dev/null | grep -q 'install ok installed' \
    || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
{ command -v depmod && command -v modprobe && command -v modinfo; } >/dev/null || need+=(kmod)
# busybox-static has no chattr: the guest gets e2fsprogs' (see copy_binary).
command -v chattr >/dev/null || need+=(e2fsprogs)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    apt_retry apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found after installing busybox-static"

# --- resolve the exact kernel package and version ----------------------------
resolve_kernel() {
    apt-cache depends "$KERNEL_META" 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1
}
KPKG=$(resolve_kernel)
if [ -z "$KPKG" ]; then
    log "$KERNEL_META not in apt lists; running apt-get update"
    apt-get update -q >&2
    KPKG=$(resolve_kernel)
fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package from $KERNEL_META"
KVERPKG=$(apt-cache show --no-all-versions "$KPKG" | sed -n 's/^Version: //p' | head -n1)
[ -n "$KVERPKG" ] || die "no candidate version for $KPKG"

# --- cache check ---------------------------------------------------------------
STAMP_TEXT="$(sha256sum "$SELF" | cut -d' ' -f1) $KPKG=$KVERPKG"
STAMP_HASH=$(printf '%s\n' "$STAMP_TEXT" | sha256sum | cut -d' ' -f1)
STAMP_LINE="$STAMP_HASH $KPKG=$KVERPKG"
is_cached() {
    [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ] && [ -f "$OUT/STAMP" ] \
        && [ "$(cat "$OUT/STAMP")" = "$STAMP_LINE" ]
}
if is_cached; then
    echo "test guest is cached in $OUT ($KPKG $KVERPKG); nothing to do"
    exit 0
fi

mkdir -p -- "$PARENT"
# Serialise concurrent builds of the same output; re-check after the wait.
exec 9>"$PARENT/.$NAME.lock"
flock 9
if is_cached; then
    echo "test guest is cached in $OUT ($KPKG $KVERPKG); nothing to do"
    exit 0
fi

# --- temporary dirs, removed on exit -----------------------------------------
WORK=$(mktemp -d /tmp/phyllome-test-guest.XXXXXX)
STAGE=$(mktemp -d "$PARENT/.$NAME.new.XXXXXX")   # same fs as OUT: atomic rename
OLD=""
cleanup() { rm -rf -- "$WORK" "$STAGE" ${OLD:+"$OLD"}; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- download and unpack the kernel package (no install) ---------------------
# apt drops privileges to _apt for downloads: give it a writable directory.
chmod 0755 "$WORK"
mkdir "$WORK/dl"
chown _apt "$WORK/dl" 2>/dev/null || chmod 0777 "$WORK/dl"
log "downloading $KPKG=$KVERPKG"
(cd "$WORK/dl" && apt_retry apt-get download -q "$KPKG=$KVERPKG" >&2)
DEB=$(find "$WORK/dl" -maxdepth 1 -name "${KPKG}_*.deb" | head -n1)
[ -n "$DEB" ] || die "download of $KPKG produced no .deb"
KROOT=$WORK/kernel
dpkg-deb -x "$DEB" "$KROOT"
KVER=${KPKG#linux-image-}
[ -d "$KROOT/lib/modules/$KVER" ] || die "no /lib/modules/$KVER in $KPKG"
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] || die "no vmlinuz in $KPKG"
depmod -b "$KROOT" "$KVER"

# --- initramfs tree --------------------------------------------------------------
IR=$WORK/initramfs
mkdir -p "$IR"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,run,var/log,var/run,etc/acpi/PWRF}
chmod 1777 "$IR/tmp"
cp "$BUSYBOX" "$IR/bin/busybox"
# One symlink per applet (busybox --list-full prints e.g. "usr/bin/awk").
"$BUSYBOX" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$IR/$applet"
done
# A dynamically linked host binary (from its Debian package) with the
# libraries ldd names, at the same paths (glibc finds /lib/<triplet> itself).
copy_binary() {  # PATH_ON_HOST
    local bin lib
    bin=$(command -v "$1") || die "$1 not found"
    install -D -m 0755 "$(realpath -- "$bin")" "$IR$bin"
    ldd "$bin" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' \
        | while read -r lib; do
            [ -e "$IR$lib" ] || install -D -m 0755 "$(realpath -- "$lib")" "$IR$lib"
        done
}
# chattr -i: efivarfs marks a non-standard variable's file immutable.
[ -e "$IR/usr/bin/chattr" ] || [ -e "$IR/bin/chattr" ] || copy_binary chattr
# Console node, in case the kernel's built-in initramfs lacks one.
mknod -m 600 "$IR/dev/console" c 5 1

# Modules: classify each wanted one, copy loadable ones plus their dependencies.
MODDIR=lib/modules/$KVER
mkdir -p "$IR/$MODDIR"
cp "$KROOT/$MODDIR"/modules.{builtin,builtin.modinfo,order} "$IR/$MODDIR/"
loadable=() builtin=() missing=()
for m in "${MODULES[@]}"; do
    if ! file=$(modinfo -b "$KROOT" -k "$KVER" -F filename "$m" 2>/dev/null); then
        missing+=("$m"); continue
    fi
    case $file in
        '(builtin)'*) builtin+=("$m"); continue ;;
    esac
    loadable+=("$m")
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" \
        | sed -n 's/^insmod \([^ ]*\).*/\1/p' \
        | while read -r ko; do
            rel=${ko#"$KROOT"/}
            mkdir -p "$IR/$(dirname "$rel")"
            [ -e "$IR/$rel" ] || cp "$ko" "$IR/$rel"
        done
done
depmod -b "$IR" "$KVER"
printf '%s\n' "${loadable[@]}" >"$IR/etc/phyllome-modules"

# ACPI power button handler, run by busybox acpid (event "PWRF/00000080").
cat >"$IR/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# marker-pair: /init waits on this FIFO and does the rest itself.
if [ -p /run/phyllome-powerbutton ]; then
    echo pressed >/run/phyllome-powerbutton
    exit 0
fi
# Leading newline: the console may hold a half-written shell prompt.
printf '\nPHYLLOME-POWERBUTTON\n' >/dev/console
sync
poweroff -f
EOF
chmod 0755 "$IR/etc/acpi/PWRF/00000080"

# The guest's /init (busybox ash).
cat >"$IR/init" <<'EOF'
#!/bin/sh
# Phyllome test guest init; see scripts/build-test-guest.sh in Phyllome.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root TERM=vt100

off() {                       # power the VM off for real; never return
    sync
    poweroff -f
    sleep 5
    echo PHYLLOME-POWEROFF-FAILED
    while :; do sleep 3600; done
}

wait_disk() {                 # wait up to ~5 s for /dev/vda
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
    [ -b /dev/vda ] && return 0
    echo PHYLLOME-NO-DISK
    return 1
}

write_marker() {              # TEXT: marker block at sector 0 of /dev/vda
    printf 'PHYLLOME-MARKER:%s\n' "$1" >/tmp/marker
    # conv=sync pads the block with zeros up to 512 bytes.
    dd if=/tmp/marker of=/dev/vda bs=512 count=1 conv=sync,fsync oflag=direct 2>/dev/null \
        || dd if=/tmp/marker of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null \
        || return 1
    sync
}

read_marker() {               # print the marker's text, or MISSING
    dd if=/dev/vda of=/tmp/block bs=512 count=1 iflag=direct 2>/dev/null \
        || dd if=/dev/vda of=/tmp/block bs=512 count=1 2>/dev/null || : >/tmp/block
    line=$(tr -d '\000' </tmp/block | grep -m1 '^PHYLLOME-MARKER:' || true)
    [ -n "$line" ] && echo "${line#PHYLLOME-MARKER:}" || echo MISSING
}

start_acpid() {               # acpid writes its pid file once it has opened /dev/input/event*
    rm -f /var/run/acpid.pid
    acpid -f -c /etc/acpi -l /var/log/acpid.log -p /var/run/acpid.pid &
    i=0
    while [ ! -s /var/run/acpid.pid ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
    [ -s /var/run/acpid.pid ] || echo "PHYLLOME-NO-ACPID (see /var/log/acpid.log)"
}

# --- state: disk marker, EFI variable, TPM NV index ---------------------------
EFIVARS=/sys/firmware/efi/efivars
EFIVAR=$EFIVARS/PhyllomeTest-3a9f6c1e-5d2b-4e8a-9c71-0f4b2d6e8a10
NV_INDEX=01500016

state_fail() { echo "PHYLLOME-STATE-ERROR: $*"; off; }

efivar_read() {               # print the variable's data (after 4 attribute bytes), or MISSING
    if [ -e "$EFIVAR" ]; then
        cat "$EFIVAR" | tail -c +5
    else
        echo MISSING
    fi
}

efivar_write() {              # VALUE; attributes NV|BS|RT, in a single write()
    if [ -e "$EFIVAR" ]; then
        # efivarfs makes the file of a non-standard variable immutable.
        chattr -i "$EFIVAR" 2>/dev/null || return 1
    fi
    printf '\007\000\000\000%s' "$1" >/tmp/efivar
    dd if=/tmp/efivar of="$EFIVAR" bs=4096 conv=notrunc 2>/dev/null
}

# One TPM2 command (hex) through $TPMDEV: the whole command in one write(),
# the response in one read() on the same descriptor; prints the response code
# (8 hex digits).
tpm_cmd() {
    echo "$1" | xxd -r -p >/tmp/tpm-cmd
    # The header's commandSize must match what is sent.
    [ "$(wc -c </tmp/tpm-cmd)" -eq $((0x$(echo "$1" | cut -c5-12))) ] || return 1
    rsp=$( { dd if=/tmp/tpm-cmd bs=4096 2>/dev/null >&3 && dd bs=4096 count=1 <&3 2>/dev/null; } \
           3<>"$TPMDEV" | xxd -p | tr -d '\n')
    rc=$(echo "$rsp" | cut -c13-20)
    [ ${#rc} -eq 8 ] || return 1
    echo "$rc"
}

nv_state() {                  # print present|missing for NV_INDEX
    # TPM2_NV_ReadPublic(nvIndex), no sessions.
    rc=$(tpm_cmd "80010000000e00000169$NV_INDEX") || return 1
    case $rc in
        00000000) echo present ;;
        0000018b) echo missing ;;     # TPM_RC_HANDLE + TPM_RC_1
        *) echo "NV_ReadPublic rc=0x$rc"; return 1 ;;
    esac
}

# Password session TPM_RS_PW with an empty password: authorizationSize 9,
# handle 0x40000009, empty nonce, attributes 0, empty hmac.
PW_SESSION=00000009""40000009""0000""00""0000
nv_define() {
    # TPM2_NV_DefineSpace(TPM_RH_OWNER; empty auth; nvIndex, SHA256,
    # OWNERWRITE|AUTHWRITE|OWNERREAD|AUTHREAD, no policy, 8 bytes).
    rc=$(tpm_cmd "80020000002d0000012a40000001${PW_SESSION}0000000e${NV_INDEX}000b0006000600000008") \
        || { echo "NV_DefineSpace: no response"; return 1; }
    [ "$rc" = 00000000 ] || { echo "NV_DefineSpace rc=0x$rc"; return 1; }
}
nv_undefine() {
    # TPM2_NV_UndefineSpace(TPM_RH_OWNER, nvIndex).
    rc=$(tpm_cmd "80020000001f0000012240000001${NV_INDEX}${PW_SESSION}") \
        || { echo "NV_UndefineSpace: no response"; return 1; }
    [ "$rc" = 00000000 ] || { echo "NV_UndefineSpace rc=0x$rc"; return 1; }
}

state_action() {              # VALUE
    value=$1
    case $value in
        ''|*[!A-Za-z0-9]*) state_fail "bad value '$value' (want [A-Za-z0-9]+)" ;;
    esac
    wait_disk || state_fail "no disk /dev/vda"
    [ -d /sys/firmware/efi ] || state_fail "not booted by UEFI (no /sys/firmware/efi)"
    grep -qw efivarfs /proc/filesystems || modprobe efivarfs 2>/dev/null
    grep -q " $EFIVARS efivarfs " /proc/mounts \
        || mount -t efivarfs efivarfs "$EFIVARS" || state_fail "cannot mount efivarfs"
    TPMDEV=""
    i=0
    while [ $i -lt 50 ]; do
        for d in /dev/tpmrm0 /dev/tpm0; do
            [ -c "$d" ] && { TPMDEV=$d; break 2; }
        done
        usleep 100000; i=$((i + 1))
    done
    [ -n "$TPMDEV" ] || state_fail "no TPM device (/dev/tpmrm0, /dev/tpm0)"

    m=$(read_marker)
    e=$(efivar_read) || state_fail "cannot read the EFI variable"
    t=$(nv_state) || state_fail "TPM: ${t:-no response}"
    echo "PHYLLOME-STATE: marker=$m efivar=$e tpm=$t"

    write_marker "$value" || state_fail "cannot write the disk marker"
    efivar_write "$value" || state_fail "cannot write the EFI variable"
    if [ "$t" = missing ]; then
        err=$(nv_define) || state_fail "TPM: $err"
    else
        err=$(nv_undefine) || state_fail "TPM: $err"
    fi
    sync

    m=$(read_marker)
    [ "$m" = "$value" ] || state_fail "disk marker reads back as '$m'"
    e=$(efivar_read)
    [ "$e" = "$value" ] || state_fail "EFI variable reads back as '$e'"
    t2=$(nv_state) || state_fail "TPM: ${t2:-no response}"
    [ "$t2" != "$t" ] || state_fail "TPM NV index still $t2"
    echo "PHYLLOME-STATE-WRITTEN: marker=$m efivar=$e tpm=$t2"
    off
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
exec </dev/console >/dev/console 2>&1
hostname phyllome-test
echo PHYLLOME-BOOT

# Load drivers (only loadable ones are listed; builtin ones need nothing).
while read -r m; do
    [ -n "$m" ] || continue
    modprobe "$m" || echo "phyllome-init: modprobe $m failed"
done </etc/phyllome-modules
ip link set lo up 2>/dev/null || true

# Device report (virtio ids are de-duplicated: keyboard+tablet give one 0x0012).
ids=$(cat /sys/bus/virtio/devices/*/device 2>/dev/null | sort -u | tr '\n' ' ')
echo "PHYLLOME-VIRTIO: ${ids% }"
pci=""
for d in /sys/bus/pci/devices/*; do
    [ -r "$d/vendor" ] || continue
    v=$(cat "$d/vendor"); p=$(cat "$d/device")
    pci="$pci ${v#0x}:${p#0x}"
done
echo "PHYLLOME-PCI:$pci"

# phyllome.test=ACTION from the kernel command line.
action=""
set -f
for arg in $(cat /proc/cmdline); do
    case $arg in phyllome.test=*) action=${arg#phyllome.test=} ;; esac
done
set +f

case $action in
    write-marker:*)
        wait_disk || off
        if write_marker "${action#write-marker:}"; then
            echo PHYLLOME-WROTE
        else
            echo PHYLLOME-WRITE-FAILED
        fi
        off
        ;;
    state:*)
        state_action "${action#state:}"
        ;;
    marker-pair:*:*)
        pair=${action#marker-pair:}
        wait_disk || off
        write_marker "${pair%%:*}" || { echo PHYLLOME-WRITE-FAILED; off; }
        # The power button handler writes to this FIFO instead of powering off.
        # acpid is listening before WROTE-A is printed, so a test may press
        # the button as soon as it sees the line.
        rm -f /run/phyllome-powerbutton
        mkfifo /run/phyllome-powerbutton
        start_acpid
        echo PHYLLOME-WROTE-A
        read -r _ </run/phyllome-powerbutton
        write_marker "${pair#*:}" || { echo PHYLLOME-WRITE-FAILED; off; }
        echo PHYLLOME-WROTE-B
        off
        ;;
    counter)
        start_acpid
        n=1
        while :; do
            echo "PHYLLOME-COUNT: $n"
            n=$((n + 1))
            usleep 500000
        done
        ;;
    fill:*)
        mib=${action#fill:}
        case $mib in ''|*[!0-9]*) echo "PHYLLOME-UNKNOWN-ACTION: $action"; off ;; esac
        wait_disk || off
        # Random data (zeros could become holes in the qcow2), from offset 1 MiB.
        if dd if=/dev/urandom of=/dev/vda bs=1M count="$mib" seek=1 \
                iflag=fullblock oflag=direct conv=notrunc,fsync 2>/dev/null; then
            sync
            echo "PHYLLOME-FILLED: $mib"
        else
            echo PHYLLOME-FILL-FAILED
        fi
        off
        ;;
    read-marker)
        wait_disk || off
        line=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' \
               | grep -m1 '^PHYLLOME-MARKER:' || true)
        echo "${line:-PHYLLOME-MARKER-MISSING}"
        off
        ;;
    dd-bench)
        wait_disk || off
        # Random data (zeros would become holes in the qcow2 and never be encrypted),
        # 64 MiB made once in RAM, written 8 times; O_DIRECT both ways, so the guest's
        # page cache measures nothing. busybox dd prints no timing, so the uptime clock
        # (10 ms) brackets each pass.
        dd if=/dev/urandom of=/tmp/pattern bs=1M count=64 2>/dev/null
        t0=$(cut -d' ' -f1 /proc/uptime)
        for i in 0 1 2 3 4 5 6 7; do
            dd if=/tmp/pattern of=/dev/vda bs=1M count=64 seek=$((i * 64)) oflag=direct 2>/dev/null
        done
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "PHYLLOME-DD-WRITE: 536870912 bytes from $t0 to $t1"
        t0=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/vda of=/dev/null bs=1M count=512 iflag=direct 2>/dev/null
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "PHYLLOME-DD-READ: 536870912 bytes from $t0 to $t1"
        off
        ;;
    busy)
        # For `phyllome stats`: one vCPU spins, and the disk is written without
        # end (random data, O_DIRECT), until the VM is stopped.
        wait_disk || off
        dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
        ( while :; do :; done ) &
        echo PHYLLOME-BUSY
        while :; do
            dd if=/tmp/pattern of=/dev/vda bs=1M count=4 oflag=direct 2>/dev/null
        done
        ;;
    share:*)
        # For `phyllome share`: mount the virtiofs TAG, read hello.txt, try a
        # write, and follow the symlinks out/ and up/ (which point outside the
        # shared folder on the host) to secret.txt.
        tag=${action#share:}
        mkdir -p /mnt/share
        if mount -t virtiofs "$tag" /mnt/share; then
            echo "PHYLLOME-SHARE-READ:$(cat /mnt/share/hello.txt 2>/dev/null || echo MISSING)"
            if echo guest-wrote >/mnt/share/from-guest.txt 2>/dev/null; then
                echo PHYLLOME-SHARE-WRITE:ok
            else
                echo PHYLLOME-SHARE-WRITE:refused
            fi
            for l in out up; do
                echo "PHYLLOME-SHARE-ESCAPE-$l:$(cat /mnt/share/$l/secret.txt 2>/dev/null || echo none)"
            done
            umount /mnt/share
        else
            echo PHYLLOME-SHARE-MOUNT-FAILED
        fi
        echo PHYLLOME-SHARE-DONE
        off
        ;;
    share-bench:*)
        # For scripts/bench-share.sh: 256 MiB of random data written and read
        # back through the virtiofs TAG, then the same on the virtio disk;
        # fsync after writing, caches dropped before reading. The uptime clock
        # (10 ms) brackets each pass.
        tag=${action#share-bench:}
        wait_disk || off
        mkdir -p /mnt/share
        mount -t virtiofs "$tag" /mnt/share || { echo PHYLLOME-SHARE-MOUNT-FAILED; off; }
        dd if=/dev/urandom of=/tmp/pattern bs=1M count=256 2>/dev/null
        pass() {  # NAME CMD...: prints NAME: t0 t1
            name=$1; shift
            sync; echo 3 >/proc/sys/vm/drop_caches
            t0=$(cut -d' ' -f1 /proc/uptime)
            "$@" 2>/dev/null
            t1=$(cut -d' ' -f1 /proc/uptime)
            echo "PHYLLOME-BENCH-$name: 268435456 bytes from $t0 to $t1"
        }
        pass SHARE-WRITE dd if=/tmp/pattern of=/mnt/share/bench.bin bs=1M conv=fsync
        pass SHARE-READ dd if=/mnt/share/bench.bin of=/dev/null bs=1M
        pass DISK-WRITE dd if=/tmp/pattern of=/dev/vda bs=1M count=256 conv=fsync
        pass DISK-READ dd if=/dev/vda of=/dev/null bs=1M count=256
        rm -f /mnt/share/bench.bin
        umount /mnt/share
        echo PHYLLOME-BENCH-DONE
        off
        ;;
    poweroff)
        off
        ;;
    "")
        ;;
    *)
        echo "PHYLLOME-UNKNOWN-ACTION: $action"
        off
        ;;
esac

# Default mode: ACPI power button -> /etc/acpi/PWRF/00000080 via acpid.
start_acpid
echo PHYLLOME-READY

# Interactive shell on the console (ttyS0), respawned forever.
while :; do
    setsid cttyhack sh -l
    sleep 1
done
EOF
chmod 0755 "$IR/init"

# --- assemble the output in STAGE, then rename it into place -----------------
(cd "$IR" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n >"$STAGE/initrd.img"
cp "$VMLINUZ" "$STAGE/vmlinuz"
printf '%s\n' "$STAMP_LINE" >"$STAGE/STAMP"
chmod 0644 "$STAGE"/{vmlinuz,initrd.img,STAMP}
chmod 0755 "$STAGE"
sync -f "$STAGE/initrd.img" 2>/dev/null || sync
if [ -e "$OUT" ]; then
    OLD="$PARENT/.$NAME.old.$$"
    mv -T -- "$OUT" "$OLD"
fi
mv -T -- "$STAGE" "$OUT"
rm -rf -- "$OLD"
OLD=""

# libvirt-qemu must be able to reach the files.
p=$PARENT
while [ "$p" != / ]; do
    perms=$(stat -c %A "$p")
    [ "${perms:9:1}" = x ] || [ "${perms:9:1}" = t ] \
        || log "warning: $p is not world-executable; libvirt-qemu cannot reach $OUT"
    p=$(dirname "$p")
done

# --- summary -------------------------------------------------------------------
echo "test guest built in $OUT"
echo "  kernel package: $KPKG $KVERPKG"
echo "  modules loaded at boot: ${loadable[*]:-none}"
echo "  builtin: ${builtin[*]:-none}; not in kernel: ${missing[*]:-none}"
for f in vmlinuz initrd.img STAMP; do
    printf '  %-28s %8s bytes\n' "$OUT/$f" "$(stat -c %s "$OUT/$f")"
done
