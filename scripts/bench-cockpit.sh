#!/usr/bin/env bash
# bench-cockpit.sh - memory of `phyllome serve` side by side with the Cockpit
# stack that manages VMs (cockpit-ws, cockpit-session, cockpit-bridge,
# cockpit-machines, libvirt-dbus, Debian's packages), both running at the
# same time on this host, and write the figures into docs/benchmarks.md
# (between the bench:cockpit markers).
#
# PSS (the Pss line of /proc/PID/smaps_rollup: each shared page split among
# the processes that map it), USS (Private_Clean + Private_Dirty: what the
# process alone holds) and RSS, each the median of a few samples, for:
#   - phyllome serve: idle; with one logged-in headless Chromium page open;
#     after 500 POST /api/v1/login (half refused, half accepted; the peak RSS
#     during them is sampled every 50 ms);
#   - Cockpit: idle (cockpit-ws and libvirt-dbus, before any login) and with
#     one logged-in page of the Machines page open, summed over every process
#     named cockpit-ws, cockpit-session, cockpit-bridge or libvirt-dbus.
# Target: phyllome's PSS with a page open is at most half of Cockpit's.
#
# Works without systemd: this script stands in for the units Cockpit's
# packages ship (a system D-Bus when none runs, libvirt-dbus, the
# /run/cockpit/session socket that starts cockpit-session, and the login
# user's session bus, which pam_systemd and systemd --user make otherwise).
# Logs in to Cockpit as a throwaway local user, phyllometestcockpit, with a
# random password; defines a few VMs that are never started
# (phyllome-test-cockpit-NN-PID). Everything binds 127.0.0.1; every wait is
# bounded; all it starts (processes, the user, the VMs, sockets) goes away on
# exit, however it exits. libvirtd is left alone.
#
#   PHYLLOME_BIN   the phyllome binary (default target/release/phyllome)
#   BENCH_VMS      VMs defined for both UIs to list (default 5)
#   BENCH_LOGINS   logins against phyllome serve (default 500)
#   BENCH_SETTLE   seconds a page stays open before measuring (default 15)
#   COCKPIT_SUITE  apt suite for the Cockpit packages (default bookworm-backports
#                  when configured, as for libvirt; "" for the release's own)
#   COCKPIT_PORT   cockpit-ws's port (default 9090, or a free one)
#   BENCH_ARTIFACTS a directory to keep the pages' screenshots and the logs in
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

log() { printf 'bench-cockpit: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages, adds a local user and starts cockpit-ws)"
BIN=${PHYLLOME_BIN:-$PWD/target/release/phyllome}
VMS=${BENCH_VMS:-5}
LOGINS=${BENCH_LOGINS:-500}
SETTLE=${BENCH_SETTLE:-15}
SAMPLES=5
CUSER=phyllometestcockpit
URI=qemu:///system
BROWSER_DIR=$PWD/crates/phyllome/tests/browser
HELPER=$PWD/scripts/lib/browser-page.mjs

[ -x "$BIN" ] || die "no phyllome binary at $BIN: cargo build --release -p phyllome (or set PHYLLOME_BIN)"
virsh -c "$URI" version >/dev/null 2>&1 || die "libvirtd does not answer: run scripts/setup.sh"
[ -d "$BROWSER_DIR/node_modules/playwright-core" ] && [ -x /usr/bin/chromium ] && command -v node >/dev/null ||
    die "Chromium or playwright-core missing: run scripts/setup.sh"

# --- packages -----------------------------------------------------------------------
PKGS=(cockpit-ws cockpit-bridge cockpit-system cockpit-machines libvirt-dbus)
if [ -z "${COCKPIT_SUITE+x}" ]; then
    COCKPIT_SUITE=
    apt-cache policy cockpit-ws 2>/dev/null | grep -q bookworm-backports && COCKPIT_SUITE=bookworm-backports
fi
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}${COCKPIT_SUITE:+ from $COCKPIT_SUITE}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        ${COCKPIT_SUITE:+-t "$COCKPIT_SUITE"} "${PKGS[@]}" >&2 || die "apt-get install ${PKGS[*]} failed"
fi
for f in /usr/lib/cockpit/cockpit-ws /usr/lib/cockpit/cockpit-session /usr/bin/cockpit-bridge /usr/sbin/libvirt-dbus \
    /usr/share/cockpit/machines/manifest.json; do
    [ -e "$f" ] || die "$f missing after installing ${PKGS[*]}"
done
command -v dbus-daemon >/dev/null || die "dbus-daemon missing (package dbus-daemon)"

# --- state, and cleanup on any exit ------------------------------------------------------
# One run at a time (the login user and the /run sockets are shared).
exec 9>/run/lock/phyllome-test-bench-cockpit.lock
flock -n 9 || die "another bench-cockpit.sh is running"
WORK=$(mktemp -d /tmp/phyllome-test-bench-cockpit.XXXXXX)
chmod 711 "$WORK" # the login user's home lives in here
umask 077
PIDS=()         # processes started here, stopped in reverse order
GROUPS_=()      # process groups of the browser helpers
NAMES=()        # VMs defined here
STARTED_BUS=    # pid of the system bus, when this script started it
BUS_POLICY=     # a bus policy file added to a running system bus
MADE_RUN_USER=  # whether /run/user was made here
MADE_RUN_COCKPIT=
CUID=
ACT_PID=        # the /run/cockpit/session listener started here
stop_pid() { # PID: TERM, up to 10 s, then KILL
    local p=$1
    kill -0 "$p" 2>/dev/null || return 0
    kill "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
}
user_pids() { [ -n "$CUID" ] && pgrep -u "$CUID" 2>/dev/null || true; }
cleanup() {
    local rc=$? i p
    set +e
    trap - EXIT INT TERM
    for p in "${GROUPS_[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${GROUPS_[@]}"; do
        for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$p" 2>/dev/null
    done
    local sessions=
    [ -n "$ACT_PID" ] && sessions=$(pgrep -P "$ACT_PID")
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
    for p in $sessions; do stop_pid "$p"; done # cockpit-session processes the listener started
    # What the login user still runs (its session bus, libvirt-dbus --session, libvirtd --session...).
    if id "$CUSER" >/dev/null 2>&1; then
        CUID=$(id -u "$CUSER")
        for p in $(user_pids); do kill "$p" 2>/dev/null; done
        for _ in $(seq 50); do [ -z "$(user_pids)" ] && break; sleep 0.1; done
        for p in $(user_pids); do kill -9 "$p" 2>/dev/null; done
        sleep 0.2
        userdel "$CUSER" 2>/dev/null || log "warning: userdel $CUSER failed"
        getent group "$CUSER" >/dev/null && groupdel "$CUSER" 2>/dev/null
        rm -rf "/run/user/$CUID"
    fi
    [ -n "$MADE_RUN_USER" ] && rmdir /run/user 2>/dev/null
    [ -n "$MADE_RUN_COCKPIT" ] && rm -f /run/cockpit/session
    if [ -n "$STARTED_BUS" ]; then
        stop_pid "$STARTED_BUS"
        rm -f /run/dbus/system_bus_socket
    fi
    if [ -n "$BUS_POLICY" ]; then
        rm -f "$BUS_POLICY"
        dbus-send --system --type=method_call --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig 2>/dev/null
    fi
    for n in "${NAMES[@]}"; do virsh -c "$URI" undefine "$n" >/dev/null 2>&1; done
    if [ -n "${BENCH_ARTIFACTS:-}" ]; then
        mkdir -p "$BENCH_ARTIFACTS" && cp "$WORK"/*.png "$WORK"/*.log "$WORK"/*.err "$WORK"/*.out "$BENCH_ARTIFACTS"/ 2>/dev/null
        rm -f "$BENCH_ARTIFACTS"/login.out
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_free() { python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
unix_live() { python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])' "$1" 2>/dev/null; }
wait_until() { # SECONDS WHAT CMD...: polls CMD every 0.1 s
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
    die "timed out after $secs s waiting for $what"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# Summed "PSS USS RSS" (KiB) of the given PIDs, from smaps_rollup (a process gone meanwhile counts 0).
mem_once() {
    local p
    for p in "$@"; do cat "/proc/$p/smaps_rollup" 2>/dev/null || true; done |
        awk '$1 == "Pss:" {pss += $2} $1 == "Private_Clean:" || $1 == "Private_Dirty:" {uss += $2} $1 == "Rss:" {rss += $2}
             END {print pss + 0, uss + 0, rss + 0}'
}
# Median of SAMPLES samples, 1 s apart, of mem_once over the PIDs a command lists at each sample.
mem_median() { # CMD...
    local out=$WORK/mem-samples s
    : >"$out"
    for s in $(seq "$SAMPLES"); do
        # shellcheck disable=SC2046
        mem_once $("$@") >>"$out"
        [ "$s" -lt "$SAMPLES" ] && sleep 1
    done
    for col in 1 2 3; do awk -v c="$col" '{print $c}' "$out" | sort -n | awk '{a[NR] = $1} END {printf "%s ", a[int((NR + 1) / 2)]}'; done
    echo
}
fmt3() { read -r a b c <<<"$1"; echo "$(mib "$a") / $(mib "$b") / $(mib "$c") MiB"; }
pss_of() { echo "$1" | awk '{print $1}'; }
rss_of() { echo "$1" | awk '{print $3}'; }

COCKPIT_NAMES=(cockpit-ws cockpit-session cockpit-bridge libvirt-dbus)
cockpit_pids() { local n; for n in "${COCKPIT_NAMES[@]}"; do pgrep -x "$n" || true; done; }
phyllome_pids() { echo "$SPID"; }
# "name xN, ..." of the Cockpit processes running now.
cockpit_census() {
    local n c out=
    for n in "${COCKPIT_NAMES[@]}"; do
        c=$(pgrep -xc "$n" || true)
        [ "${c:-0}" -gt 0 ] && out+="${out:+, }$n x$c"
    done
    echo "$out"
}

# --- leftovers of an interrupted run ------------------------------------------------
for n in $(virsh -c "$URI" list --all --name | grep '^phyllome-test-cockpit-' || true); do
    virsh -c "$URI" list --name | grep -qx "$n" || virsh -c "$URI" undefine "$n" >/dev/null 2>&1 || true
done
if id "$CUSER" >/dev/null 2>&1; then
    log "removing $CUSER left by an earlier run"
    CUID=$(id -u "$CUSER")
    for p in $(user_pids); do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.5
    userdel "$CUSER" || die "cannot remove the leftover user $CUSER"
    rm -rf "/run/user/$CUID"
    CUID=
fi

# --- VMs for both UIs to list ------------------------------------------------------------
log "defining $VMS VMs (never started)"
for i in $(seq -w 1 "$VMS"); do
    n="phyllome-test-cockpit-$i-$$"
    cat >"$WORK/vm.xml" <<EOT
<domain type='qemu'>
  <name>$n</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><graphics type='vnc' listen='127.0.0.1' autoport='yes'/></devices>
</domain>
EOT
    virsh -c "$URI" define "$WORK/vm.xml" >/dev/null 2>"$WORK/define.err" || die "virsh define $n: $(cat "$WORK/define.err")"
    NAMES+=("$n")
done

# --- the Cockpit stack ---------------------------------------------------------------------
# The system bus: Debian's dbus-daemon, started here when none runs, with a
# policy that lets root own org.libvirt (libvirt-dbus runs as root here: as
# its own user it would need polkitd to reach libvirtd).
cat >"$WORK/bus-policy.conf" <<'EOT'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="org.libvirt"/></policy>
</busconfig>
EOT
chmod 644 "$WORK/bus-policy.conf"
if unix_live /run/dbus/system_bus_socket; then
    log "using the running system bus"
    if ! dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner string:org.libvirt 2>/dev/null |
        grep -q "boolean true"; then
        BUS_POLICY=/etc/dbus-1/system.d/phyllome-test-bench-cockpit.conf
        cp "$WORK/bus-policy.conf" "$BUS_POLICY"
        dbus-send --system --type=method_call --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig ||
            die "cannot reload the system bus's configuration"
    fi
else
    log "starting a system bus (dbus-daemon --system)"
    rm -f /run/dbus/system_bus_socket
    mkdir -p /run/dbus
    sed 's|</busconfig>|<include>/usr/share/dbus-1/system.conf</include></busconfig>|' "$WORK/bus-policy.conf" >"$WORK/system-bus.conf"
    chmod 644 "$WORK/system-bus.conf"
    STARTED_BUS=$(timeout 20 dbus-daemon --config-file="$WORK/system-bus.conf" --fork --print-pid --nopidfile) ||
        die "dbus-daemon --system did not start"
    wait_until 10 "the system bus" unix_live /run/dbus/system_bus_socket
fi
if dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner string:org.libvirt 2>/dev/null |
    grep -q "boolean true"; then
    log "libvirt-dbus already on the system bus: measuring it as it is"
else
    /usr/sbin/libvirt-dbus --system >"$WORK/libvirt-dbus.log" 2>&1 &
    PIDS+=("$!")
    has_libvirt() {
        dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner string:org.libvirt 2>/dev/null |
            grep -q "boolean true"
    }
    wait_until 20 "libvirt-dbus on the system bus" has_libvirt
fi

# cockpit-ws asks for a session on /run/cockpit/session, a socket systemd
# listens on (cockpit-session.socket, Accept=yes) and hands to a new
# cockpit-session per connection; without systemd, systemd-socket-activate
# (or a few lines of Python) does the same.
if unix_live /run/cockpit/session; then
    log "using the listener already on /run/cockpit/session"
    ACTIVATOR='the listener found'
else
    [ -d /run/cockpit ] || { mkdir -p /run/cockpit; chmod 755 /run/cockpit; }
    rm -f /run/cockpit/session
    MADE_RUN_COCKPIT=1
    if command -v systemd-socket-activate >/dev/null; then
        ACTIVATOR='`systemd-socket-activate --accept --inetd`'
        systemd-socket-activate -l /run/cockpit/session --accept --inetd /usr/lib/cockpit/cockpit-session \
            >"$WORK/cockpit-session.log" 2>&1 &
    else
        ACTIVATOR='a Python accept loop'
        python3 - /run/cockpit/session /usr/lib/cockpit/cockpit-session >"$WORK/cockpit-session.log" 2>&1 <<'PY' &
import os, socket, subprocess, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(16)
kids = []
while True:
    c, _ = s.accept()
    kids.append(subprocess.Popen([sys.argv[2]], stdin=c.fileno(), stdout=c.fileno()))
    c.close()
    kids = [k for k in kids if k.poll() is None]
PY
    fi
    ACT_PID=$!
    PIDS+=("$ACT_PID")
    wait_until 10 "the /run/cockpit/session listener" unix_live /run/cockpit/session
fi

CPORT=${COCKPIT_PORT:-9090}
port_free "$CPORT" || { log "port $CPORT is taken: cockpit-ws on another"; CPORT=$(free_port); }
/usr/lib/cockpit/cockpit-ws --no-tls --address 127.0.0.1 --port "$CPORT" >"$WORK/cockpit-ws.log" 2>&1 &
WS_PID=$!
PIDS+=("$WS_PID")
ws_up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$CPORT/"; }
wait_until 20 "cockpit-ws on 127.0.0.1:$CPORT" ws_up

# The login user: a random password (chpasswd on standard input), in group
# libvirt (libvirt-dbus's bus policy lets that group call it). Its session
# bus, which cockpit-machines needs for the qemu:///session connection it
# opens for users other than root, and the variables pam_systemd would set
# (read by cockpit's pam_env user_readenv=1 from ~/.pam_environment).
log "adding the local user $CUSER"
CHOME=$WORK/home
useradd -M -d "$CHOME" -s /bin/bash -G libvirt "$CUSER"
CUID=$(id -u "$CUSER")
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$WORK/cockpit-password"
printf '%s:%s\n' "$CUSER" "$(cat "$WORK/cockpit-password")" | chpasswd
install -d -m 700 -o "$CUSER" -g "$CUSER" "$CHOME"
printf 'XDG_RUNTIME_DIR DEFAULT=/run/user/%s\nDBUS_SESSION_BUS_ADDRESS DEFAULT=unix:path=/run/user/%s/bus\n' "$CUID" "$CUID" \
    >"$CHOME/.pam_environment"
chown "$CUSER:$CUSER" "$CHOME/.pam_environment"
[ -d /run/user ] || { install -d -m 755 /run/user; MADE_RUN_USER=1; }
install -d -m 700 -o "$CUSER" -g "$CUSER" "/run/user/$CUID"
SESSION_BUS=$(timeout 20 setpriv --reuid="$CUID" --regid="$CUID" --init-groups \
    env HOME="$CHOME" XDG_RUNTIME_DIR="/run/user/$CUID" \
    dbus-daemon --session --address="unix:path=/run/user/$CUID/bus" --fork --print-pid --nopidfile) ||
    die "the session bus of $CUSER did not start"
PIDS+=("$SESSION_BUS")
wait_until 10 "the session bus of $CUSER" unix_live "/run/user/$CUID/bus"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -u "$CUSER:$(cat "$WORK/cockpit-password")" \
    "http://127.0.0.1:$CPORT/cockpit/login") || true
[ "$code" = 200 ] || die "Cockpit refused $CUSER's login (HTTP $code): $(tail -5 "$WORK/cockpit-ws.log" "$WORK/cockpit-session.log")"
# (That session ends when cockpit-ws sees no use of it: idle figures wait for it below.)

# --- phyllome serve ------------------------------------------------------------------------------
USERS=8
for i in $(seq "$USERS"); do head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$WORK/password-$i"; done
ADD_FLAGS=()
"$BIN" user add --help 2>&1 | grep -q -- --password-stdin && ADD_FLAGS+=(--password-stdin)
for i in $(seq "$USERS"); do
    "$BIN" user add "bench$i" --state-dir "$WORK/state" "${ADD_FLAGS[@]}" <"$WORK/password-$i" 2>"$WORK/useradd.err" ||
        die "phyllome user add: $(cat "$WORK/useradd.err")"
done
PPORT=$(free_port)
"$BIN" serve --listen "127.0.0.1:$PPORT" --state-dir "$WORK/state" --iso-dir "$WORK" \
    >"$WORK/serve.out" 2>"$WORK/serve.err" &
SPID=$!
PIDS+=("$SPID")
serve_up() {
    kill -0 "$SPID" 2>/dev/null || die "phyllome serve died: $(cat "$WORK/serve.err")"
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PPORT/"
}
wait_until 30 "phyllome serve on 127.0.0.1:$PPORT" serve_up
# --- idle ----------------------------------------------------------------------------------------------------
# Before any page: phyllome serve (no login yet); cockpit-ws and libvirt-dbus (the check login's session gone).
no_session() { [ -z "$(pgrep -x cockpit-session; pgrep -x cockpit-bridge)" ]; }
for _ in $(seq 300); do no_session && break; sleep 0.2; done
no_session || { log "the check login's Cockpit session is still there: stopping it"; for p in $(pgrep -x cockpit-session); do stop_pid "$p"; done; }
sleep 3
log "measuring idle"
PH_IDLE=$(mem_median phyllome_pids)
CO_IDLE=$(mem_median cockpit_pids)
CO_IDLE_PROCS=$(cockpit_census)
log "idle PSS/USS/RSS: phyllome $(fmt3 "$PH_IDLE"); Cockpit $(fmt3 "$CO_IDLE") ($CO_IDLE_PROCS)"

# --- one logged-in page each, open at the same time ------------------------------------------------
open_page() { # NAME CONFIG-JSON: starts the helper in its own process group, waits for "ready"
    local name=$1
    printf '%s' "$2" >"$WORK/page-$name.json"
    setsid node "$HELPER" <"$WORK/page-$name.json" >"$WORK/page-$name.out" 2>"$WORK/page-$name.err" &
    local pid=$!
    GROUPS_+=("$pid")
    for _ in $(seq 1200); do
        grep -q '^ready' "$WORK/page-$name.out" 2>/dev/null && { log "$name page open: $(tail -1 "$WORK/page-$name.err")"; return; }
        kill -0 "$pid" 2>/dev/null || die "the $name page failed: $(tail -5 "$WORK/page-$name.err")"
        sleep 0.1
    done
    die "the $name page did not show within 120 s: $(tail -5 "$WORK/page-$name.err")"
}
page_cfg() { # URL USER PASSWORD-FILE then key=value extras as JSON
    python3 - "$@" <<'PY'
import json, sys
url, user, pwfile, *extra = sys.argv[1:]
cfg = {"url": url, "user": user, "password": open(pwfile).read().strip(), "timeout": 90, "lifetime": 1800}
for kv in extra:
    k, v = kv.split("=", 1)
    cfg[k] = json.loads(v) if v[:1] in "[{" else v
print(json.dumps(cfg))
PY
}
log "opening a logged-in phyllome page (headless Chromium)"
open_page phyllome "$(page_cfg "http://127.0.0.1:$PPORT/" bench1 "$WORK/password-1" \
    userSelector='#login-user' passwordSelector='#login-password' submitSelector='#login-submit' \
    ready="${PHYLLOME_READY:-#vm-table}" lenient=1 screenshot="$WORK/phyllome.png")"
log "opening a logged-in Cockpit Machines page (headless Chromium)"
open_page cockpit "$(page_cfg "http://127.0.0.1:$CPORT/machines" "$CUSER" "$WORK/cockpit-password" \
    userSelector='#login-user-input' passwordSelector='#login-password-input' submitSelector='#login-button' \
    ready='#virtual-machines-listing' readyFrame='/machines/index.html' \
    click='["#ignore-hw-virtualization-disabled-btn"]' screenshot="$WORK/cockpit.png")"
log "both pages open: ${SETTLE} s before measuring"
sleep "$SETTLE"
kill -0 "${GROUPS_[0]}" 2>/dev/null && kill -0 "${GROUPS_[1]}" 2>/dev/null || die "a page closed early"
[ -n "$(pgrep -x cockpit-bridge)" ] || die "no cockpit-bridge runs with the page open: $(tail -5 "$WORK/cockpit-session.log")"
PH_PAGE=$(mem_median phyllome_pids)
CO_PAGE=$(mem_median cockpit_pids)
CO_PAGE_PROCS=$(cockpit_census)
# The rest of what the Cockpit page made run, not in its sum: the login user's
# session bus and the qemu:///session libvirtd libvirt-dbus --session started.
extra_pids() { user_pids | while read -r p; do case "$(cat "/proc/$p/comm" 2>/dev/null)" in cockpit-bridge | libvirt-dbus) ;; *) echo "$p" ;; esac; done; }
EXTRA=$(mem_median extra_pids)
EXTRA_PROCS=$(for p in $(extra_pids); do cat "/proc/$p/comm" 2>/dev/null; done | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
log "page open PSS/USS/RSS: phyllome $(fmt3 "$PH_PAGE"); Cockpit $(fmt3 "$CO_PAGE") ($CO_PAGE_PROCS); besides: $(fmt3 "$EXTRA") ($EXTRA_PROCS)"
grep -q "logged in" "$WORK/serve.out" "$WORK/serve.err" 2>/dev/null || log "warning: phyllome serve logged no login"

for p in "${GROUPS_[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${GROUPS_[@]}"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
done
GROUPS_=()

# --- 500 logins against phyllome serve ---------------------------------------------------------------------------
# Every other one with a wrong password. The server locks a user name after a
# few failures and a client address after more, so the logins rotate over 8
# accounts (each failure followed by a success of the same account, which
# clears its count) and over loopback source addresses (127.0.T.x): each of
# them a real password check. Two at a time: the server checks two at once.
log "$LOGINS logins against phyllome serve (half refused), peak RSS sampled every 50 ms"
sample_rss() { # PID OUT: peak VmRSS until $WORK/stop-sampler exists (at most 10 min)
    local pid=$1 out=$2 peak=0 kib
    for _ in $(seq 12000); do
        [ -e "$WORK/stop-sampler" ] && break
        kib=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ "${kib:-0}" -gt "$peak" ] && peak=$kib
        sleep 0.05
    done
    echo "$peak" >"$out"
}
rm -f "$WORK/stop-sampler"
sample_rss "$SPID" "$WORK/peak" &
SAMPLER=$!
PIDS+=("$SAMPLER")
T0=$(date +%s%N)
timeout 900 python3 - "$PPORT" "$LOGINS" "$USERS" "$WORK" >"$WORK/logins.json" <<'PY' || die "the login client failed"
import http.client, json, sys, threading, time
port, total, nusers, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pw = {i: open(f"{work}/password-{i}").read().strip() for i in range(1, nusers + 1)}
counts, samples, lock = {}, {}, threading.Lock()
def worker(t, n):
    mine = [u for u in range(1, nusers + 1) if u % 2 == t % 2]
    for k in range(n):
        u = mine[(k // 2) % len(mine)]
        ok = k % 2 == 1  # a failure, then a success that clears the account's count
        body = json.dumps({"username": f"bench{u}", "password": pw[u] if ok else "not the password"})
        # A /24 of its own for each few logins: the per-network throttle never locks the bench out.
        src = (f"127.{t + 1}.{k % 200}.1", 0)
        try:
            # The server bounds the total rate of password checks (and its queue): wait as told, so
            # every one of the logins reaches a check.
            for _ in range(100):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=src)
                c.request("POST", "/api/v1/login", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.status not in (429, 503):
                    break
                c.close()
                with lock:
                    counts["waited"] = counts.get("waited", 0) + 1
                time.sleep(float(r.getheader("Retry-After") or 1) / 4)
            key = str(r.status)
            if r.status == 200 and not (r.getheader("Set-Cookie") and "csrf" in json.loads(data or b"{}")):
                key = "200-without-cookie-or-csrf"
            if key not in ("200", "401"):
                with lock:
                    samples.setdefault(key, data[:200].decode("utf-8", "replace"))
        except Exception as e:
            key = type(e).__name__
        finally:
            c.close()
        with lock:
            counts[key] = counts.get(key, 0) + 1
ts = [threading.Thread(target=worker, args=(t, total // 2 + (t < total % 2))) for t in range(2)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(counts))
for k, v in samples.items():
    print(f"bench-cockpit: a {k} answer: {v}", file=sys.stderr)
PY
T1=$(date +%s%N)
touch "$WORK/stop-sampler"
wait "$SAMPLER" || true
LOGIN_SECS=$(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
count_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))' "$WORK/logins.json" "$1"; }
OK=$(count_of 200)
REFUSED=$(count_of 401)
THROTTLED=$(count_of 429)
WAITED=$(count_of waited)
OTHER=$((LOGINS - OK - REFUSED - THROTTLED))
PEAK=$(cat "$WORK/peak")
HWM=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$SPID/status")
log "logins: $(cat "$WORK/logins.json") in $LOGIN_SECS s; peak RSS $(mib "$PEAK") MiB (VmHWM $(mib "$HWM") MiB)"
[ "$OK" -gt 0 ] && [ "$REFUSED" -gt 0 ] || die "POST /api/v1/login did not both accept and refuse: $(cat "$WORK/logins.json")"
sleep 3
PH_AFTER=$(mem_median phyllome_pids)
log "after the logins PSS/USS/RSS: phyllome $(fmt3 "$PH_AFTER")"

# --- write the section -------------------------------------------------------------------------
PH_P=$(pss_of "$PH_PAGE")
CO_P=$(pss_of "$CO_PAGE")
RATIO=$(awk -v a="$CO_P" -v b="$PH_P" 'BEGIN {printf "%.1f", a / b}')
VERDICT=$(awk -v a="$PH_P" -v b="$CO_P" 'BEGIN {print (2 * a <= b) ? "met" : "NOT met"}')
WITH_EXTRA=$(awk -v a="$CO_P" -v b="$(pss_of "$EXTRA")" -v p="$PH_P" 'BEGIN {printf "%.1f MiB, %.1fx", (a + b) / 1024, (a + b) / p}')
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
OS=$(. /etc/os-release && echo "$PRETTY_NAME")
LIBVIRT=$(virsh -c "$URI" version | awk '/Using library/ {print $4}')
ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
CHROMIUM=$(ver chromium)
case "$BIN" in
    */target/release/*) BUILD="release build" ;;
    */target/debug/*) BUILD="debug build" ;;
    *) BUILD="\`$BIN\`" ;;
esac
BUILT=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')
VERSION=$("$BIN" --version 2>/dev/null | head -1 || true)
SECTION=$(cat <<EOT
<!-- bench:cockpit:start -->
## Memory: \`phyllome serve\` next to Cockpit's Machines page

Measured $(date -u +%Y-%m-%d) on ${CPU}, $(nproc) cores, ${MEM}, ${OS}, libvirt ${LIBVIRT};
${VERSION:-phyllome} (${BUILD}, built ${BUILT}) against Debian's cockpit-ws $(ver cockpit-ws), cockpit-bridge $(ver cockpit-bridge),
cockpit-machines $(ver cockpit-machines) and libvirt-dbus $(ver libvirt-dbus); pages in headless Chromium ${CHROMIUM};
\`scripts/bench-cockpit.sh\` reproduces it (loopback only).

Both stacks ran at the same time, with ${VMS} VMs defined (never started) for both to list, so that the
shared libraries they both map (glibc, libvirt's client library and its ~50 dependencies) are split
between them in PSS. Each figure is the median of ${SAMPLES} samples, 1 s apart, from \`/proc/PID/smaps_rollup\`:
PSS (\`Pss\`), USS (\`Private_Clean + Private_Dirty\`) and RSS, in MiB.

| state | \`phyllome serve\` PSS / USS / RSS | Cockpit PSS / USS / RSS | Cockpit processes |
|---|---|---|---|
| idle, before any login | $(fmt3 "$PH_IDLE") | $(fmt3 "$CO_IDLE") | ${CO_IDLE_PROCS} |
| one logged-in page open, ${SETTLE} s after it showed | $(fmt3 "$PH_PAGE") | $(fmt3 "$CO_PAGE") | ${CO_PAGE_PROCS} |
| after ${LOGINS} logins (pages closed) | $(fmt3 "$PH_AFTER") | | |

- Target: phyllome's PSS with a page open at most half of Cockpit's: $(mib "$PH_P") MiB against $(mib "$CO_P") MiB,
  ${RATIO}x less: ${VERDICT}.
- Cockpit's sum is every process named cockpit-ws, cockpit-session, cockpit-bridge or libvirt-dbus: libvirt-dbus
  --system and, with the page open, libvirt-dbus --session, for the qemu:///session connection cockpit-machines
  opens for users other than root. Not in the sum, what else runs as the Cockpit login user then (the libvirtd --session
  that connection starts, the ssh-agent of Cockpit's PAM configuration, the session bus): $(fmt3 "$EXTRA")
  (${EXTRA_PROCS:-none}); with it, Cockpit's PSS is ${WITH_EXTRA} phyllome's. RSS counts shared pages once per
  process, so summed RSS overstates a multi-process stack; PSS and USS add up, and a process's PSS falls as more
  processes map its libraries (those Cockpit's page starts map libvirt's too). The page's login is the first one
  \`phyllome serve\` sees in this run.
- Logins: ${LOGINS} \`POST /api/v1/login\`, two at a time (the server checks two passwords at once), every other one
  with a wrong password, rotated over 8 accounts and loopback source addresses so that the login throttling (per
  user name and source network, per network) lets each through to a password check: ${OK} accepted, ${REFUSED} refused,
  ${THROTTLED} throttled, ${OTHER} other, in ${LOGIN_SECS} s (the server takes at most 10 password checks a second
  and queues at most 8: the client waited as \`Retry-After\` said ${WAITED} times). Peak RSS during them (sampled every 50 ms):
  $(mib "$PEAK") MiB (VmHWM $(mib "$HWM") MiB); each argon2id check holds 12 MiB while it runs. Afterwards, RSS
  is $(mib "$(($(rss_of "$PH_AFTER") - $(rss_of "$PH_IDLE")))") MiB above idle; the accepted logins' sessions stay in memory.
- No systemd here: the script stands in for its units. A system D-Bus (\`dbus-daemon --system\`, with a policy
  letting root own org.libvirt) when none runs; libvirt-dbus runs as root (its package runs it as libvirtdbus,
  which needs polkitd to reach libvirtd); cockpit-ws as root (the package: a dynamic user), with \`--no-tls\` on
  127.0.0.1; ${ACTIVATOR} on /run/cockpit/session in place of
  cockpit-session.socket, so cockpit-ws gets a cockpit-session (PAM, the \`cockpit\` service) per login; and the
  login user's session bus, with XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS given to its session through
  \`~/.pam_environment\` (pam_systemd and systemd --user make both otherwise). The Cockpit user is a throwaway
  local account in group libvirt (no administrative access: the "Limited access" Cockpit shows).
<!-- bench:cockpit:end -->
EOT
)
. scripts/lib/bench-section.sh
write_section cockpit "$SECTION"
F=docs/benchmarks.md
log "wrote $F"
sed -n '/bench:cockpit:start/,/bench:cockpit:end/p' "$F"
