#!/usr/bin/env python3
"""Import circles between a crate's modules.

Usage: scripts/module-circles.py [CRATE]   (default: phyllome-engine; needs `cargo install cargo-modules`)

1. `cargo modules dependencies` gives "uses" edges between items (a function using a type...); each is
   lifted to the modules holding its two ends, and the module graph is searched for circles: among the
   top-level modules, and among all modules. (cargo-modules' own `--acyclic` judges items, and an inherent
   method naming its own type is already a cycle there.)
2. cargo-modules does not see a path written inside a function body (`crate::x::f(...)`), so the text of
   each top-level module (its tests left out) is scanned for `crate::NAME` too.
Exit 1 when either finds a circle."""
import os
import re
import subprocess
import sys

crate = sys.argv[1] if len(sys.argv) > 1 else "phyllome-engine"
dot = subprocess.run(
    ["cargo", "modules", "dependencies", "--lib", "-p", crate, "--no-externs", "--no-sysroot"],
    check=True, capture_output=True, text=True,
).stdout
kinds = dict(re.findall(r'^\s*"([^"]+)" \[label="[^"]*", fillcolor="[^"]+"\]; // "(\w+)" node', dot, re.M))
mods = {n for n, k in kinds.items() if k in ("mod", "crate")}


def module_of(item):
    while item not in mods:
        item = item.rsplit("::", 1)[0]
    return item


def circles(edges):
    sys.setrecursionlimit(100000)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


uses = re.findall(r'^\s*"([^"]+)" -> "([^"]+)" \[label="uses"', dot, re.M)
found = 0
for name, depth in (("top-level modules", 1), ("all modules", 99)):
    edges = {}
    for a, b in uses:
        ma = "::".join(module_of(a).split("::")[: depth + 1])
        mb = "::".join(module_of(b).split("::")[: depth + 1])
        if ma != mb:
            edges.setdefault(ma, set()).add(mb)
    found_here = circles(edges)
    print(f"{name}: {len(edges)} using modules, {sum(map(len, edges.values()))} edges, {len(found_here)} circles")
    for c in found_here:
        print("  circle:", ", ".join(c))
    found += len(found_here)

# 2. The text of each top-level module.
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", crate, "src")
files = {}
for name in os.listdir(src):
    path = os.path.join(src, name)
    if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
        files[name[:-3]] = [path]
    elif os.path.isdir(path):
        files[name] = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
edges = {}
for module, paths in files.items():
    for path in paths:
        text = re.split(r"\n#\[cfg\(test\)\]\s*\nmod tests", open(path, encoding="utf-8").read())[0]
        named = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
        for group in re.findall(r"\buse\s+crate::\{([^;]*)\}", text, re.S):
            named |= set(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)\s*(?:::|,|\}|$)", group))
        edges.setdefault(module, set()).update(n for n in named if n in files and n != module)
found_here = circles(edges)
print(f"text of the top-level modules: {len(files)} modules, {sum(map(len, edges.values()))} edges, {len(found_here)} circles")
for c in found_here:
    print("  circle:", ", ".join(c))
found += len(found_here)
sys.exit(1 if found else 0)
