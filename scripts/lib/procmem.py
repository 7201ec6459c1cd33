"""procmem.py - a process's memory in KiB from /proc: VmRSS, VmHWM, RssAnon
(/proc/PID/status), Pss and Uss (Private_Clean + Private_Dirty of
/proc/PID/smaps_rollup). Imported by the bench scripts' Python, or run as
`python3 procmem.py PID` to print "RSS PSS USS HWM ANON" in MiB."""
import sys


def mem(pid):
    m = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon"):
            m[k] = int(v.split()[0])
    uss = 0
    for line in open(f"/proc/{pid}/smaps_rollup"):
        f = line.split()
        if f[0] == "Pss:":
            m["Pss"] = int(f[1])
        elif f[0] in ("Private_Clean:", "Private_Dirty:"):
            uss += int(f[1])
    m["Uss"] = uss
    return m


if __name__ == "__main__":
    m = mem(sys.argv[1])
    print(" ".join(f"{m[k] / 1024:.1f}" for k in ("VmRSS", "Pss", "Uss", "VmHWM", "RssAnon")))
