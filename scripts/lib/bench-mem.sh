# bench-mem.sh - sourced by the bench scripts: the memory a process uses, as USS
# (its private pages) and PSS (its share of the shared ones), from
# /proc/PID/smaps_rollup, not RSS.
#
# peak PID OUT: samples PID's smaps_rollup every 100 ms until it exits; writes "USS PSS" (KiB, largest seen).
peak() {
    local pid=$1 out=$2 uss=0 pss=0 u p
    while [ -r "/proc/$pid/smaps_rollup" ]; do
        read -r u p < <(awk '/^Pss:/ {p=$2} /^Private_Clean:/ {c=$2} /^Private_Dirty:/ {d=$2} END {print c + d, p}' \
            "/proc/$pid/smaps_rollup" 2>/dev/null || echo "0 0")
        [ "${u:-0}" -gt "$uss" ] && uss=$u
        [ "${p:-0}" -gt "$pss" ] && pss=$p
        sleep 0.1
    done
    echo "$uss $pss" >"$out"
}
