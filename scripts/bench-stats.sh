#!/usr/bin/env bash
# bench-stats.sh - the cost of Phyllome's VM statistics with many VMs defined,
# and write the figures into docs/benchmarks.md (between the bench:stats
# markers):
#
#   1. `phyllome stats --json --interval 0.1` (two bulk samples of the running
#      VMs, 0.1 s apart) against `virsh domstats` (every domain, the default)
#      and `virsh domstats --list-active` (the running ones, the set phyllome
#      reads): wall time and peak RSS, RUNS runs of each in turn (A B C A B C);
#      and whether phyllome's rates agree with rates worked out from virsh's
#      counters over the same seconds;
#   2. `phyllome serve`, sampling every BENCH_SAMPLE_MS (default 100 ms, so the
#      3600 samples of an hour at 1 s take 6 minutes): its RSS, PSS and USS
#      every BENCH_EVERY seconds (default 30) with the points each running VM's
#      ring holds (GET /api/v1/vms/NAME/stats), to show the rings fill to 600
#      and memory stays put; then BENCH_SCRAPES (default 200) sequential
#      `GET /metrics` with a metrics token (latency, size, `promtool check metrics`).
#
# It creates BENCH_VMS (default 300) real phyllome VMs (encrypted 4 GiB disks,
# 1 vCPU, 512 MiB, no NIC), named phyllome-test-bench-stats-NNN-PID, and starts
# RUNNING (default 3) of them on the test guest (scripts/build-test-guest.sh):
# the first with `phyllome.test=busy` (a vCPU spinning, its disk written without
# end), the others idle. On exit, however it exits, it stops the server, kills
# and deletes those VMs (disks and secrets with them) and removes its temporary
# directory; nothing else is touched. Everything binds 127.0.0.1. Run as root
# after scripts/setup.sh.
#
#   BENCH_VMS        VMs defined (default 300)
#   RUNNING          of them started (default 3; the host has 2 cores)
#   RUNS             runs of each command (default 11)
#   BENCH_SAMPLE_MS  the server's sampling interval (default 100)
#   BENCH_SAMPLES    samples the server series lasts (default 3600)
#   BENCH_EVERY      seconds between memory readings (default 30)
#   BENCH_SCRAPES    /metrics scrapes (default 200)
#   CARGO_TARGET_DIR where the release build goes (default target/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export LC_ALL=C
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/bench}
. scripts/lib/bench-section.sh

VMS=${BENCH_VMS:-300}
RUNNING=${RUNNING:-3}
RUNS=${RUNS:-11}
SAMPLE_MS=${BENCH_SAMPLE_MS:-100}
SAMPLES=${BENCH_SAMPLES:-3600}
EVERY=${BENCH_EVERY:-30}
SCRAPES=${BENCH_SCRAPES:-200}
URI=qemu:///system
export PHYLLOME_CONNECT=$URI
CMDLINE="BENCH_VMS=$VMS RUNNING=$RUNNING RUNS=$RUNS BENCH_SAMPLE_MS=$SAMPLE_MS BENCH_SAMPLES=$SAMPLES BENCH_EVERY=$EVERY BENCH_SCRAPES=$SCRAPES bash scripts/bench-stats.sh"

log() { printf 'bench-stats: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"
[ "$RUNNING" -ge 1 ] && [ "$RUNNING" -le "$VMS" ] || die "RUNNING must be between 1 and BENCH_VMS"
virsh -c "$URI" version >/dev/null || die "libvirtd does not answer: run scripts/setup.sh"

need=()
[ -x /usr/bin/time ] || need+=(time)
command -v promtool >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 || {
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
    }
fi

log "building (release, $CARGO_TARGET_DIR) and the test guest"
./scripts/build-test-guest.sh >/dev/null
cargo build --release -q -p phyllome
P=$CARGO_TARGET_DIR/release/phyllome
G=/var/lib/phyllome/test-guest
TAG="phyllome-test-bench-stats"

WORK=$(mktemp -d /tmp/phyllome-bench-stats.XXXXXX)
chmod 700 "$WORK"
SPID=
STARTED=()
cleanup() {
    set +e
    if [ -n "$SPID" ]; then
        kill "$SPID" 2>/dev/null
        wait "$SPID" 2>/dev/null
        SPID=
    fi
    # Only this run's VMs: the tag and this shell's PID in the name.
    for v in $(virsh -c "$URI" list --all --name | grep "^$TAG-[0-9]*-$$\$"); do
        [ "$(virsh -c "$URI" domstate "$v" 2>/dev/null)" = "shut off" ] || "$P" kill "$v" >/dev/null 2>&1
        "$P" delete "$v" >/dev/null 2>&1 || log "could not delete $v"
    done
    for v in "${STARTED[@]}"; do
        rm -f "/var/log/libvirt/qemu/$v-serial.log" "/var/log/libvirt/qemu/$v.log"
    done
    STARTED=()
    left=$(virsh -c "$URI" vol-list phyllome 2>/dev/null | grep -c "$TAG-[0-9]*-$$\.")
    [ "$left" -eq 0 ] || log "warning: $left volumes of this run are left in pool phyllome"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the VMs -------------------------------------------------------------------
log "creating $VMS VMs (linux, encrypted 4 GiB disks, 1 vCPU, no NIC)"
T0=$(date +%s)
for i in $(seq -w 1 "$VMS"); do
    n="$TAG-$i-$$"
    cmdline=console=ttyS0
    [ "$((10#$i))" -eq 1 ] && cmdline="console=ttyS0 phyllome.test=busy"
    "$P" create "$n" --os linux --kernel "$G/vmlinuz" --initrd "$G/initrd.img" --cmdline "$cmdline" \
        --memory 512M --cpus 1 --disk-size 4G --network none >/dev/null 2>"$WORK/create.err" ||
        die "create $n: $(cat "$WORK/create.err")"
done
MADE_SECS=$(($(date +%s) - T0))
log "made in $MADE_SECS s; starting $RUNNING of them"
RUN_NAMES=()
for i in $(seq -w 1 "$RUNNING"); do
    n="$TAG-$(printf "%0${#VMS}d" "$((10#$i))")-$$"
    RUN_NAMES+=("$n")
    STARTED+=("$n")
    "$P" start "$n" >/dev/null 2>"$WORK/start.err" || die "start $n: $(cat "$WORK/start.err")"
done
BUSY=${RUN_NAMES[0]}
for n in "${RUN_NAMES[@]}"; do
    want=PHYLLOME-READY
    [ "$n" = "$BUSY" ] && want=PHYLLOME-BUSY
    for _ in $(seq 600); do
        grep -q "$want" "/var/log/libvirt/qemu/$n-serial.log" 2>/dev/null && break
        sleep 0.5
    done
    grep -q "$want" "/var/log/libvirt/qemu/$n-serial.log" 2>/dev/null || die "$n did not print $want within 300 s"
done
BOOT_SECS=$(($(date +%s) - T0 - MADE_SECS))
log "booted in $BOOT_SECS s ($BUSY busy); letting them settle 10 s"
sleep 10
COUNT=$(virsh -c "$URI" list --all --name | grep -c . || true)
ACTIVE=$(virsh -c "$URI" list --name | grep -c . || true)
OTHERS_ACTIVE=$((ACTIVE - RUNNING))

# --- 1. phyllome stats against virsh domstats ------------------------------------------
LOAD_CLI=$(cut -d' ' -f1-3 /proc/loadavg)
log "phyllome stats --json --interval 0.1, virsh domstats, virsh domstats --list-active: $RUNS runs each, in turn"
python3 - "$P" "$URI" "$RUNS" "$WORK" >"$WORK/cli.txt" <<'PY'
import json, os, statistics, subprocess, sys, time
p, uri, runs, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cmds = {
    "phyllome": [p, "stats", "--json", "--interval", "0.1"],
    "all": ["virsh", "-c", uri, "domstats"],
    "active": ["virsh", "-c", uri, "domstats", "--list-active"],
}
def once(key):
    # wait4(2) gives this child's peak RSS (ru_maxrss, KiB): what GNU time's %M reports.
    out = open(f"{work}/out-{key}", "wb")
    t = time.perf_counter()
    c = subprocess.Popen(cmds[key], stdout=out, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(c.pid, 0)
    wall = time.perf_counter() - t
    c.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    if c.returncode != 0:
        sys.exit(f"{' '.join(cmds[key])} exited {c.returncode}")
    return wall, ru.ru_maxrss
for k in cmds:
    once(k)  # warm-up
wall = {k: [] for k in cmds}
rss = {k: [] for k in cmds}
for _ in range(runs):
    for k in cmds:
        w, r = once(k)
        wall[k].append(w)
        rss[k].append(r)
wall["phyllome-net"] = [w - 0.1 for w in wall["phyllome"]]
for k in ["phyllome", "phyllome-net", "all", "active"]:
    v = wall[k]
    r = rss.get(k, rss["phyllome"])
    print(k, f"{statistics.median(v):.3f} {min(v):.3f} {max(v):.3f}", f"{statistics.median(r) / 1024:.1f} {min(r) / 1024:.1f} {max(r) / 1024:.1f}")
for base in ["active", "all"]:
    ratios = [a / b for a, b in zip(wall["phyllome-net"], wall[base])]
    print(f"ratio-{base}", f"{statistics.median(ratios):.2f}")
# What each printed (the last run): VMs, domains, bytes.
report = json.load(open(f"{work}/out-phyllome"))
print("vms", len(report["vms"]))
for k in ["all", "active"]:
    text = open(f"{work}/out-{k}", "rb").read()
    print(f"domains-{k}", text.count(b"\nDomain: ") + text.startswith(b"Domain: "))
for k in cmds:
    print(f"bytes-{k}", os.path.getsize(f"{work}/out-{k}"))
PY
cli() { awk -v k="$1" -v f="$2" '$1 == k {print $(f + 1)}' "$WORK/cli.txt"; }
log "$(tr '\n' ';' <"$WORK/cli.txt")"
# GNU time's own figure, once each, as a cross-check of wait4's.
gnu_time() { /usr/bin/time -f '%M' -o "$WORK/gnu-time" "$@" >/dev/null 2>&1; awk '{printf "%.1f", $1 / 1024}' "$WORK/gnu-time"; }
GT_PH=$(gnu_time "$P" stats --json --interval 0.1)
GT_ALL=$(gnu_time virsh -c "$URI" domstats)
GT_ACT=$(gnu_time virsh -c "$URI" domstats --list-active)

# --- do phyllome's rates agree with virsh's counters? --------------------------------------
AGREE_INTERVAL=5
log "phyllome stats --interval $AGREE_INTERVAL between two virsh domstats --list-active"
# Each virsh reading is dated at the middle of its call.
A0=$(date +%s.%N); virsh -c "$URI" domstats --list-active --raw >"$WORK/v0"; A1=$(date +%s.%N)
"$P" stats --json --interval "$AGREE_INTERVAL" "${RUN_NAMES[@]}" >"$WORK/ph.json"
B0=$(date +%s.%N); virsh -c "$URI" domstats --list-active --raw >"$WORK/v1"; B1=$(date +%s.%N)
V0=$(awk -v a="$A0" -v b="$A1" 'BEGIN {printf "%.3f", (a + b) / 2}')
V1=$(awk -v a="$B0" -v b="$B1" 'BEGIN {printf "%.3f", (a + b) / 2}')
PH_INTERVAL=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["interval_secs"])' "$WORK/ph.json")
python3 - "$WORK" "$V0" "$V1" "${RUN_NAMES[@]}" >"$WORK/agree.md" <<'PY'
import json, sys
work, t0, t1, names = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
def parse(path):
    doms, cur = {}, None
    for line in open(path):
        line = line.strip()
        if line.startswith("Domain: "):
            cur = doms.setdefault(line[8:].strip("'"), {})
        elif "=" in line and cur is not None:
            k, v = line.split("=", 1)
            cur[k] = v
    return doms
a, b = parse(f"{work}/v0"), parse(f"{work}/v1")
ph = {v["name"]: v for v in json.load(open(f"{work}/ph.json"))["vms"]}
secs = t1 - t0
def total(d, field):
    return sum(int(v) for k, v in d.items() if k.startswith("block.") and k.endswith("." + field))
def mib(x):
    return "-" if x is None else f"{x / 1048576:.2f}"
for n in names:
    v, x, y = ph.get(n), a.get(n), b.get(n)
    if not (v and x and y):
        print(f"| {n} | missing from phyllome or virsh | | | | | |")
        continue
    cpu = (int(y["cpu.time"]) - int(x["cpu.time"])) / secs / 1e7
    wr = (total(y, "wr.bytes") - total(x, "wr.bytes")) / secs
    rss = int(y["balloon.rss"]) * 1024
    pc = v["cpu_percent"]
    print(f"| `{n}` | {pc if pc is not None else '-'} | {cpu:.1f} | {mib(v['disk']['write_bytes_per_sec'])} | {mib(wr)} "
          f"| {mib(v['memory']['host_rss_bytes'])} | {mib(rss)} |")
PY
cat "$WORK/agree.md" >&2
AGREE_SECS=$(awk -v a="$V0" -v b="$V1" 'BEGIN {printf "%.2f", b - a}')

# --- 2. phyllome serve: memory over an hour of samples, then /metrics -------------------------
umask 077
head -c 24 /dev/urandom | base64 >"$WORK/password"
"$P" user add bench --state-dir "$WORK/state" <"$WORK/password" 2>/dev/null
"$P" user token bench --state-dir "$WORK/state" >"$WORK/token" 2>/dev/null
"$P" user token bench --metrics --state-dir "$WORK/state" >"$WORK/metrics-token" 2>/dev/null
umask 022
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$P" serve --listen "127.0.0.1:$PORT" --state-dir "$WORK/state" --iso-dir "$WORK" \
    --bench-stats-interval-ms "$SAMPLE_MS" >"$WORK/serve.out" 2>"$WORK/serve.err" &
SPID=$!
for _ in $(seq 200); do
    grep -q "listening on" "$WORK/serve.out" 2>/dev/null && break
    kill -0 "$SPID" 2>/dev/null || die "phyllome serve died: $(cat "$WORK/serve.err")"
    sleep 0.05
done
grep -q "listening on" "$WORK/serve.out" || die "phyllome serve did not start"
CAP=$((SAMPLES * SAMPLE_MS * 3 / 1000 + 120))
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "phyllome serve (pid $SPID) samples every $SAMPLE_MS ms: memory every $EVERY s until $SAMPLES samples (at most $CAP s)"
python3 - "$PORT" "$WORK" "$SPID" "$SAMPLES" "$EVERY" "$CAP" "${RUN_NAMES[@]}" >"$WORK/series.json" <<'PY'
import http.client, json, sys, time
port, work, pid, target, every, cap = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
names = sys.argv[7:]
token = open(f"{work}/token").read().strip()
def get(path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        sys.exit(f"GET {path}: HTTP {r.status}: {body[:200]!r}")
    return json.loads(body)
sys.path.insert(0, "scripts/lib")
from procmem import mem as proc_mem
def mem():
    return proc_mem(pid)
# Wait for the first ring points (the second sample).
t0 = time.monotonic()
while time.monotonic() - t0 < 60:
    if all(get(f"/api/v1/vms/{n}/stats")["points"] for n in names):
        break
    time.sleep(0.1)
seen, gaps, rows, prev_max = set(), 0, [], None
start = time.monotonic()
tick = 0
while True:
    pts, newest, oldest = {}, None, None
    for n in names:
        ts = [round(p["t"] * 1000) for p in get(f"/api/v1/vms/{n}/stats")["points"]]
        pts[n] = len(ts)
        seen.update(ts)
        if ts:
            oldest = ts[0] if oldest is None else min(oldest, ts[0])
            newest = ts[-1] if newest is None else max(newest, ts[-1])
    if prev_max is not None and oldest is not None and oldest > prev_max:
        gaps += 1  # the rings moved past the previous reading: samples in between went uncounted
    prev_max = newest
    st = get("/api/v1/stats")
    rows.append({"secs": round(time.monotonic() - start, 1), "samples": len(seen), "points": pts, "mem": mem(),
                 "interval": st.get("interval_secs"), "running": st["host"]["vms_running"]})
    print(f"bench-stats: {rows[-1]['secs']:6.1f} s, {len(seen)} samples, points {list(pts.values())}, "
          f"RSS {rows[-1]['mem']['VmRSS'] / 1024:.1f} MiB, PSS {rows[-1]['mem']['Pss'] / 1024:.1f} MiB", file=sys.stderr)
    if len(seen) >= target or time.monotonic() - start > cap:
        break
    tick += 1
    time.sleep(max(0.0, start + tick * every - time.monotonic()))
s = sorted(seen)
# The spacing of the last reading's points (first running VM's ring): is the period steady?
ring = [round(p["t"] * 1000) for p in get(f"/api/v1/vms/{names[0]}/stats")["points"]]
steps = sorted(b - a for a, b in zip(ring, ring[1:]))
pick = lambda q: steps[min(len(steps) - 1, int(q * len(steps)))] if steps else None
spacing = {"min": steps[0] if steps else None, "median": pick(0.5), "p90": pick(0.9), "p99": pick(0.99),
           "max": steps[-1] if steps else None, "n": len(steps)}
print(json.dumps({"rows": rows, "gaps": gaps, "samples": len(seen), "spacing": spacing,
                  "period_ms": (s[-1] - s[0]) / (len(s) - 1) if len(s) > 1 else None,
                  "span_secs": (s[-1] - s[0]) / 1000 if s else 0}))
PY

LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
log "$SCRAPES GET /metrics with a metrics token"
python3 - "$PORT" "$WORK" "$SCRAPES" >"$WORK/scrape.txt" <<'PY'
import http.client, statistics, sys, time
port, work, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
token = open(f"{work}/metrics-token").read().strip()
def get(path, accept=None, tok=token):
    h = {"Authorization": f"Bearer {tok}"}
    if accept:
        h["Accept"] = accept
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path, headers=h)
    r = c.getresponse()
    body = r.read()
    c.close()
    return time.perf_counter() - t, r.status, r.getheader("Content-Type"), body
get("/metrics")  # warm-up
lat = []
for _ in range(n):
    t, status, ctype, body = get("/metrics")
    if status != 200:
        sys.exit(f"GET /metrics: HTTP {status}")
    lat.append(t * 1000)
open(f"{work}/metrics.txt", "wb").write(body)
_, _, octype, obody = get("/metrics", accept="application/openmetrics-text; version=1.0.0")
lat.sort()
p95 = lat[min(len(lat) - 1, int(round(0.95 * len(lat))) - 1)]
series = sum(1 for l in body.decode().splitlines() if l and not l.startswith("#"))
print("lat", f"{statistics.median(lat):.2f} {p95:.2f} {max(lat):.2f} {min(lat):.2f}")
print("size", len(body), series)
print("ctype", ctype.replace(" ", ""))
print("om", len(obody), octype.replace(" ", ""), "eof" if obody.rstrip().endswith(b"# EOF") else "no-eof")
# The metrics token reads /metrics and nothing else.
print("refused", get("/api/v1/stats")[1], get("/api/v1/vms")[1])
print("vms", body.decode().count('phyllome_vm_vcpus{'))
PY
cat "$WORK/scrape.txt" >&2
sc() { awk -v k="$1" -v f="$2" '$1 == k {print $(f + 1)}' "$WORK/scrape.txt"; }
if promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.out" 2>&1; then
    PROMTOOL="passes (no problem reported)"
else
    PROMTOOL="reports: $(tr '\n' ' ' <"$WORK/promtool.out" | sed 's/ *$//')"
fi
PROMTOOL_V=$(promtool --version 2>&1 | awk 'NR == 1 {print $3}')
log "promtool check metrics $PROMTOOL"
sleep 2
python3 scripts/lib/procmem.py "$SPID" >"$WORK/after.txt"
read -r AFTER_RSS AFTER_PSS AFTER_USS AFTER_HWM AFTER_ANON <"$WORK/after.txt"
kill -0 "$SPID" 2>/dev/null || die "phyllome serve died: $(cat "$WORK/serve.err")"
SERVE_ERRORS=$(grep -ciE 'error|panic' "$WORK/serve.err" || true)

# --- the series' table and verdict -------------------------------------------------------------
python3 - "$WORK/series.json" "$SAMPLE_MS" "$WORK/series.vars" "${RUN_NAMES[@]}" >"$WORK/series.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ms, varsfile, names = int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = d["rows"]
mib = lambda k: k / 1024
print("| time | samples | points in each ring | RSS | anonymous RSS | PSS | USS |")
print("|---|---|---|---|---|---|---|")
full = None
for i, r in enumerate(rows):
    pts = [r["points"][n] for n in names]
    if full is None and all(p == 600 for p in pts):
        full = i
    m = r["mem"]
    mark = " (rings full)" if i == full else ""
    print(f"| {r['secs']:.0f} s | {r['samples']} | {' / '.join(map(str, pts))}{mark} | {mib(m['VmRSS']):.1f} MiB "
          f"| {mib(m['RssAnon']):.1f} MiB | {mib(m['Pss']):.1f} MiB | {mib(m['Uss']):.1f} MiB |")
first, last = rows[0]["mem"], rows[-1]["mem"]
out = {"FULL_AT": "", "FULL_SAMPLES": "", "D_RSS": "", "D_PSS": "", "D_USS": "", "D_ANON": "",
       "VERDICT": "not shown: the rings never filled"}
if full is not None:
    f = rows[full]["mem"]
    d_pss = mib(last["Pss"] - f["Pss"])
    d_anon = mib(last["RssAnon"] - f["RssAnon"])
    out.update(FULL_AT=f"{rows[full]['secs']:.0f}", FULL_SAMPLES=rows[full]["samples"],
               D_RSS=f"{mib(last['VmRSS'] - f['VmRSS']):+.2f}", D_PSS=f"{d_pss:+.2f}", D_USS=f"{mib(last['Uss'] - f['Uss']):+.2f}",
               D_ANON=f"{d_anon:+.2f}", VERDICT="bounded" if d_pss < 1.0 and d_anon < 1.0 else "NOT shown bounded")
    # Points after the rings filled that went over 600 (must be none).
    out["OVER"] = sum(1 for r in rows for n in names if r["points"][n] > 600)
sp = d["spacing"]
out.update(SP_MIN=sp["min"], SP_MED=sp["median"], SP_P90=sp["p90"], SP_P99=sp["p99"], SP_MAX=sp["max"], SP_N=sp["n"])
out.update(SAMPLES_DONE=d["samples"], GAPS=d["gaps"], PERIOD=f"{d['period_ms']:.1f}" if d["period_ms"] else "?",
           SPAN=f"{d['span_secs']:.0f}", END_SECS=f"{rows[-1]['secs']:.0f}", ROWS=len(rows),
           G_RSS=f"{mib(last['VmRSS'] - first['VmRSS']):+.2f}", G_PSS=f"{mib(last['Pss'] - first['Pss']):+.2f}", G_ANON=f"{mib(last['RssAnon'] - first['RssAnon']):+.2f}",
           END_HWM=f"{mib(last['VmHWM']):.1f}", LAST_RUNNING=rows[-1]["running"])
with open(varsfile, "w") as f:
    for k, v in out.items():
        f.write(f"{k}={json.dumps(str(v))}\n")
PY
. "$WORK/series.vars"
cat "$WORK/series.md" >&2
log "rings full at $FULL_AT s ($FULL_SAMPLES samples); after: RSS $D_RSS, anonymous $D_ANON, PSS $D_PSS, USS $D_USS MiB: $VERDICT"
kill "$SPID"; wait "$SPID" 2>/dev/null || true
SPID=

# --- write the section ----------------------------------------------------------------------------
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
OS=$(. /etc/os-release && echo "$PRETTY_NAME")
STACK=$(virsh -c "$URI" version | sed -n 's/^Using library: //p; s/^Running hypervisor: //p' | paste -sd, - | sed 's/,/, /')
VERSION=$("$P" --version 2>/dev/null | head -1 || true)
RATIO_ACT=$(cli ratio-active 1)
RATIO_ALL=$(cli ratio-all 1)
OTHERS_NOTE=""
[ "$OTHERS_ACTIVE" -eq 1 ] && OTHERS_NOTE=" (1 more domain, not this script's, was running on the host too, and is in the figures)"
[ "$OTHERS_ACTIVE" -gt 1 ] && OTHERS_NOTE=" ($OTHERS_ACTIVE more domains, not this script's, were running on the host too, and are in the figures)"
SECTION=$(cat <<EOT
<!-- bench:stats:start -->
## Statistics: \`phyllome stats\`, \`/metrics\` and the server's rings, with $VMS VMs

Measured $(date -u +%Y-%m-%d) on ${CPU}, $(nproc) cores, ${MEM}, ${OS}, kernel $(uname -r); ${STACK},
guests under TCG; ${VERSION:-phyllome} (release build). Reproduce with \`${CMDLINE}\` (loopback only).
$COUNT domains defined, $ACTIVE running: the script's $VMS phyllome VMs (encrypted 4 GiB disks, 1 vCPU, 512 MiB, no NIC,
made in $MADE_SECS s), $RUNNING of them running the test guest: \`$BUSY\` with \`phyllome.test=busy\` (a vCPU spinning,
its disk written without end), the others idle at a shell$OTHERS_NOTE.

### One report: \`phyllome stats --json\` against \`virsh domstats\`

$RUNS runs of each in turn after one warm-up (load average $LOAD_CLI before them), wall time of the whole process; peak RSS from \`wait4(2)\` (\`ru_maxrss\`,
what GNU time's \`%M\` reports: one \`/usr/bin/time -f %M\` run of each gave $GT_PH MiB for phyllome, $GT_ACT MiB for
\`virsh domstats --list-active\` and $GT_ALL MiB for \`virsh domstats\`).

| command | what it reads | wall (median) | wall (min-max) | peak RSS (median, min-max) |
|---|---|---|---|---|
| \`phyllome stats --json --interval 0.1\` | connect, two bulk samples of the running VMs 0.1 s apart, rates | $(cli phyllome 1) s | $(cli phyllome 2)-$(cli phyllome 3) s | $(cli phyllome 4) MiB ($(cli phyllome 5)-$(cli phyllome 6)) |
| the same less the 0.1 s it sleeps | connect, two bulk samples | $(cli phyllome-net 1) s | $(cli phyllome-net 2)-$(cli phyllome-net 3) s | |
| \`virsh domstats --list-active\` | connect, one bulk sample of the running domains | $(cli active 1) s | $(cli active 2)-$(cli active 3) s | $(cli active 4) MiB ($(cli active 5)-$(cli active 6)) |
| \`virsh domstats\` | connect, one bulk sample of every domain | $(cli all 1) s | $(cli all 2)-$(cli all 3) s | $(cli all 4) MiB ($(cli all 5)-$(cli all 6)) |

- phyllome less its interval against \`virsh domstats --list-active\`, pair by pair (median): **${RATIO_ACT}x**, for two samples
  where virsh takes one; against \`virsh domstats\` (all $(cli domains-all 1) domains): **${RATIO_ALL}x**. \`virsh domstats\` is the
  limit: one connection and one \`virConnectGetAllDomainStats\` call, which phyllome makes twice (running domains only:
  the $((COUNT - ACTIVE)) shut-off ones have no rates). Outputs: phyllome $(cli vms 1) VMs in $(cli bytes-phyllome 1) bytes of JSON;
  virsh $(cli domains-active 1) and $(cli domains-all 1) domains in $(cli bytes-active 1) and $(cli bytes-all 1) bytes.
- PSS and USS of these processes are not sampled: they live for a tenth of a second or so, and
  \`/proc/PID/smaps_rollup\` read from outside would catch them at a random point; peak RSS is what the kernel keeps
  for them.

Do the rates agree? \`phyllome stats --json --interval $AGREE_INTERVAL\` (its two samples $PH_INTERVAL s apart) ran between two
\`virsh domstats --list-active --raw\`, $AGREE_SECS s apart (each dated at the middle of its call); virsh's columns are
the rates over that longer window worked out from virsh's counters (CPU: \`cpu.time\`, disk: the \`block.N.wr.bytes\`;
RSS: \`balloon.rss\` of the second reading). The windows differ, so steady loads should agree to a few per cent.

| VM | CPU %, phyllome | CPU %, virsh | disk writes MiB/s, phyllome | virsh | host RSS MiB, phyllome | virsh |
|---|---|---|---|---|---|---|
$(cat "$WORK/agree.md")

### \`/metrics\`

$SCRAPES sequential \`GET /metrics\` (classic text format, \`$(sc ctype 1)\`), each on a new loopback connection, with
a metrics token (\`phyllome user token --metrics\`), while the server sampled every $SAMPLE_MS ms with its rings full:

| figure | measured |
|---|---|
| latency, median / p95 / max (min) | $(sc lat 1) / $(sc lat 2) / $(sc lat 3) ms ($(sc lat 4) ms) |
| response | $(sc size 1) bytes, $(sc size 2) series, $(sc vms 1) VMs |
| OpenMetrics (\`Accept: application/openmetrics-text\`) | $(sc om 1) bytes, \`$(sc om 2)\`, ends with \`# EOF\`: $( [ "$(sc om 3)" = eof ] && echo yes || echo NO) |
| \`promtool check metrics\` (Prometheus $PROMTOOL_V) | $PROMTOOL |
| the metrics token on \`/api/v1/stats\`, \`/api/v1/vms\` | HTTP $(sc refused 1), HTTP $(sc refused 2) |

### The server's memory over $SAMPLES samples ($(awk -v n="$SAMPLES" 'BEGIN {printf "%.3g", n / 60}') minutes' worth at one a second)

\`phyllome serve --bench-stats-interval-ms $SAMPLE_MS\` (benchmarks only) samples every $SAMPLE_MS ms instead of every
second, so that $SAMPLES samples take $(awk -v n="$SAMPLES" -v ms="$SAMPLE_MS" 'BEGIN {printf "%.3g", n * ms / 60000}') minutes at that rate. Every $EVERY s: RSS and anonymous RSS
(\`VmRSS\`, \`RssAnon\` of \`/proc/PID/status\`), PSS (\`Pss\`) and USS (\`Private_Clean + Private_Dirty\`) of \`/proc/PID/smaps_rollup\`, and the
points in each of the $RUNNING running VMs' rings (\`GET /api/v1/vms/NAME/stats\`, length of \`points\`). Samples are
counted as the distinct points' times seen across the readings: $SAMPLES_DONE over ${SPAN} s, one every ${PERIOD} ms on
average against the ${SAMPLE_MS} ms asked (readings that missed samples in between: $GAPS). Spacing of the last ring's
$SP_N steps (\`$BUSY\`): min ${SP_MIN}, median ${SP_MED}, p90 ${SP_P90}, p99 ${SP_P99}, max ${SP_MAX} ms; the sampler
waits out the rest of an interval after each sample, and starts again from now (no catching up) when a sample took
longer than the interval.

$(cat "$WORK/series.md")

- The rings filled at $FULL_SAMPLES samples (the ${FULL_AT} s reading) and held 600 points from then on (readings over 600:
  ${OVER:-?}). From then to the end ($SAMPLES_DONE samples): RSS ${D_RSS} MiB, anonymous RSS ${D_ANON} MiB, **PSS ${D_PSS} MiB**,
  USS ${D_USS} MiB (target: PSS growth, and anonymous RSS growth, under 1 MiB once the rings are full: **${VERDICT}**).
  Over the whole run, from the first reading: RSS ${G_RSS} MiB, anonymous RSS ${G_ANON} MiB, PSS ${G_PSS} MiB; peak RSS
  (\`VmHWM\`) ${END_HWM} MiB.
- Anonymous RSS (\`RssAnon\`: heap and stacks) is what the server itself grows by. PSS and USS also move when other
  processes map or unmap the libraries it maps (libvirt's client library and its dependencies): a page only this
  process maps counts whole in USS, a page shared with another process does not; with RSS steady, a fall in USS is
  pages the server shares with others, not memory it gave back. Load average (1, 5, 15 min) at the start and the end
  of the series: $LOAD0 and $LOAD1 on $(nproc) cores.
- After the $SCRAPES scrapes: RSS ${AFTER_RSS} MiB, anonymous RSS ${AFTER_ANON} MiB, PSS ${AFTER_PSS} MiB, USS ${AFTER_USS} MiB (VmHWM ${AFTER_HWM} MiB).
  Error lines in the server's log: ${SERVE_ERRORS}.
- A ring holds 600 points of 40 bytes (24 KiB a VM). Only sampling is sped up: what runs on the wall clock (the
  VM list's re-read every 30 s, sessions' expiry) ran for $END_SECS s, not an hour.
<!-- bench:stats:end -->
EOT
)
write_section stats "$SECTION"
F=docs/benchmarks.md
log "wrote $F in $(($(date +%s) - T0)) s"
sed -n '/bench:stats:start/,/bench:stats:end/p' "$F"
