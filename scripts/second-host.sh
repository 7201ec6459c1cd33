#!/usr/bin/env bash
# second-host.sh start|stop|status|uri|crash|restart [NAME] - a second libvirt host on this
# machine, for the tests of migration and of several hosts.
#
# A libvirtd (and its virtlogd) in a mount namespace of their own, with their
# own /etc/libvirt, /var/lib/libvirt, /run/libvirt, /var/log/libvirt,
# /var/cache/libvirt and /var/lib/phyllome/boot (bind mounts of folders under /var/lib/phyllome-test-hosts/NAME),
# and a distinct host_uuid, as libvirt's migration docs describe for "two
# containers on the same host". Its QEMU processes and swtpm run in that
# namespace too, so a VM's disk, NVRAM and TPM paths name that host's files.
# It is reached over its unix socket:
#   qemu+unix:///system?socket=/var/lib/phyllome-test-hosts/NAME/run/libvirt-sock
# (`uri` prints it). NAME defaults to phyllome-test-host2; `start NAME --no-swtpm`
# makes a host without swtpm.
#
# `start` makes the folders (empty state: no VM, network, pool or secret of the
# main host), starts the daemons and waits for the socket; `stop` destroys and
# undefines what runs there, stops the daemons and removes the folders, so
# nothing is left behind. `crash` kills its libvirtd with SIGKILL (its QEMUs and
# state stay, as after a daemon crash) and `restart` starts it again over that
# state. Run as root after scripts/setup.sh.
set -euo pipefail
cmd=${1:-}
NAME=${2:-phyllome-test-host2}
# --no-swtpm (after NAME): that host has no swtpm (its binaries hidden in its namespace), for the refusal tests.
NO_SWTPM=${3:-}
case $NAME in phyllome-test-*) ;; *) echo "second-host: the name must start with phyllome-test-" >&2; exit 2 ;; esac
BASE=/var/lib/phyllome-test-hosts/$NAME
SOCK=$BASE/run/libvirt-sock
URI="qemu+unix:///system?socket=$SOCK"
log() { printf 'second-host: %s\n' "$*" >&2; }

pid_of() { [ -f "$BASE/$1.pid" ] && cat "$BASE/$1.pid" 2>/dev/null || true; }
running() {
    local p
    p=$(pid_of libvirtd)
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}

start() {
    if running; then
        log "$NAME runs already"
        echo "$URI"
        return 0
    fi
    rm -rf "$BASE"
    mkdir -p "$BASE"/{etc,lib,run,log,cache,boot}
    chmod 700 "$BASE"
    # Configuration: the main host's daemon and QEMU settings, none of its state.
    for f in libvirt.conf libvirtd.conf qemu.conf virtlogd.conf libvirt-admin.conf network.conf; do
        [ -f "/etc/libvirt/$f" ] && cp -p "/etc/libvirt/$f" "$BASE/etc/$f"
    done
    [ -d /etc/libvirt/nwfilter ] && cp -a /etc/libvirt/nwfilter "$BASE/etc/nwfilter"
    mkdir -p "$BASE/etc/qemu" "$BASE/etc/storage" "$BASE/etc/secrets"
    printf '\nhost_uuid = "%s"\n' "$(cat /proc/sys/kernel/random/uuid)" >>"$BASE/etc/libvirtd.conf"
    # Both daemons share this machine's ports: this one's VNC/SPICE and websocket ports come from
    # a range of its own (by its name), so its guests never race the main host's for a display port.
    local slot
    slot=$(( $(printf '%s' "$NAME" | cksum | cut -d' ' -f1) % 400 ))
    printf '\nremote_display_port_min = %d\nremote_display_port_max = %d\n' \
        $((20000 + slot * 100)) $((20000 + slot * 100 + 99)) >>"$BASE/etc/qemu.conf"
    printf 'remote_websocket_port_min = %d\nremote_websocket_port_max = %d\n' \
        $((60000 + slot * 10)) $((60000 + slot * 10 + 9)) >>"$BASE/etc/qemu.conf"
    # libvirt's state folders, owned as the packages make them.
    for d in qemu qemu/nvram qemu/ram qemu/save qemu/snapshot qemu/dump qemu/checkpoint images swtpm boot dnsmasq; do
        mkdir -p "$BASE/lib/$d"
    done
    local qu qg
    qu=$(stat -c %U /var/lib/libvirt/qemu)
    qg=$(stat -c %G /var/lib/libvirt/qemu)
    chown "$qu:$qg" "$BASE/lib/qemu" "$BASE/lib/qemu/nvram" "$BASE/lib/qemu/ram" "$BASE/lib/qemu/save" \
        "$BASE/lib/qemu/snapshot" "$BASE/lib/qemu/dump" "$BASE/lib/qemu/checkpoint"
    chmod 755 "$BASE/lib" "$BASE/lib/images"
    chmod 711 "$BASE/lib/swtpm"
    mkdir -p "$BASE/log/qemu" "$BASE/log/swtpm/libvirt/qemu"
    chmod 755 "$BASE" "$BASE/run"
    if [ "$NO_SWTPM" = --no-swtpm ]; then touch "$BASE/no-swtpm"; fi
    launch
    if wait_up; then
        echo "$URI"
        return 0
    fi
    stop
    return 1
}

# The daemons, in a mount namespace of their own over the folders under $BASE.
launch() {
    [ -f "$BASE/no-swtpm" ] && NO_SWTPM=--no-swtpm
    unshare --mount --propagation private /bin/sh -c '
        set -e
        B=$1
        mount --bind "$B/etc" /etc/libvirt
        mount --bind "$B/lib" /var/lib/libvirt
        mount --bind "$B/run" /run/libvirt
        mount --bind "$B/log" /var/log/libvirt
        mkdir -p /var/cache/libvirt
        mount --bind "$B/cache" /var/cache/libvirt
        # Phyllome'"'"'s copies of direct-boot kernels: each host has its own.
        mkdir -p /var/lib/phyllome/boot
        mount --bind "$B/boot" /var/lib/phyllome/boot
        if [ "$2" = --no-swtpm ]; then
            for f in /usr/bin/swtpm /usr/bin/swtpm_setup /usr/bin/swtpm_ioctl; do
                [ -e "$f" ] && mount --bind /dev/null "$f"
            done
        fi
        [ -n "$3" ] || virtlogd -d -p "$B/virtlogd.pid"
        libvirtd -d -p "$B/libvirtd.pid"
    ' sh "$BASE" "$NO_SWTPM" "$(running_pid virtlogd)"
}

wait_up() {
    for _ in $(seq 100); do
        if [ -S "$SOCK" ] && virsh -c "$URI" version >/dev/null 2>&1; then
            log "$NAME is up: $URI"
            return 0
        fi
        sleep 0.2
    done
    log "$NAME did not come up"
    return 1
}

# The pid of a daemon when it runs.
running_pid() {
    local p
    p=$(pid_of "$1")
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo "$p"; fi
}

# A crash: libvirtd killed at once (SIGKILL), its state, QEMUs and virtlogd left as they are.
crash() {
    local p
    p=$(running_pid libvirtd)
    [ -n "$p" ] || { log "$NAME does not run"; return 1; }
    kill -9 "$p"
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    rm -f "$SOCK" "$BASE/run/libvirt-sock-ro" "$BASE/run/libvirt-admin-sock"
    log "$NAME: libvirtd killed"
}

# libvirtd started again over the state it had (after crash), as after a daemon restart.
restart() {
    [ -d "$BASE/lib" ] || { log "$NAME has no state to restart (start it)"; return 1; }
    if running; then
        echo "$URI"
        return 0
    fi
    launch
    if wait_up; then echo "$URI"; else return 1; fi
}

stop() {
    if running && [ -S "$SOCK" ]; then
        for d in $(virsh -c "$URI" list --all --uuid 2>/dev/null); do
            virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
            virsh -c "$URI" undefine --nvram --tpm --snapshots-metadata "$d" >/dev/null 2>&1 || true
        done
        for s in $(virsh -c "$URI" secret-list 2>/dev/null | awk 'NR > 2 && $1 != "" {print $1}'); do
            virsh -c "$URI" secret-undefine "$s" >/dev/null 2>&1 || true
        done
    fi
    for d in libvirtd virtlogd; do
        local p
        p=$(pid_of "$d")
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill "$p" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    # QEMU or swtpm processes of that namespace that outlived their daemon.
    for p in $(pgrep -f "$BASE|qemu-system.*phyllome-test-" 2>/dev/null || true); do
        if [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" != "$(readlink /proc/self/ns/mnt)" ] &&
            grep -q " /var/lib/libvirt " "/proc/$p/mountinfo" 2>/dev/null &&
            grep -q "$BASE" "/proc/$p/mountinfo" 2>/dev/null; then
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$BASE"
    rmdir /var/lib/phyllome-test-hosts 2>/dev/null || true
    log "$NAME stopped and removed"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    status) if running; then echo "running: $URI"; else echo "stopped"; exit 1; fi ;;
    uri) echo "$URI" ;;
    crash) crash ;;
    restart) restart ;;
    *) echo "usage: $0 start|stop|status|uri|crash|restart [NAME] [--no-swtpm]" >&2; exit 2 ;;
esac
