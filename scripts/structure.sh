#!/usr/bin/env bash
# The structure check of the daemon-core issue: import circles between the
# top-level modules of src/ (a `use crate::X` in module Y is an arrow Y -> X)
# and source files over 600 lines (tests excluded). Prints what it finds;
# exits 1 when anything is found, so it can gate once the layout is clean.
#   scripts/structure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import os, re, sys
from collections import defaultdict
edges = defaultdict(set)
for root, _, files in os.walk("src"):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        parts = os.path.relpath(path, "src").split(os.sep)
        mod = parts[0][:-3] if len(parts) == 1 else parts[0]
        if mod in ("main", "lib"):
            continue
        text = open(path, encoding="utf-8").read()
        text = text.split("#[cfg(test)]")[0]
        for m in re.finditer(r"crate::([a-z_]+)", text):
            if m.group(1) != mod:
                edges[mod].add(m.group(1))
found = 0
def reach(a, b, seen):
    if a == b:
        return True
    seen.add(a)
    return any(reach(n, b, seen) for n in edges.get(a, ()) if n not in seen)
circles = sorted({tuple(sorted((a, b))) for a in list(edges) for b in list(edges[a]) if reach(b, a, set())})
for a, b in circles:
    print(f"import circle: {a} <-> {b}")
    found += 1
for root, _, files in os.walk("src"):
    for f in files:
        if f.endswith(".rs"):
            path = os.path.join(root, f)
            code = open(path, encoding="utf-8").read().split("\n#[cfg(test)]")[0]
            n = code.count("\n")
            if n > 600:
                print(f"{path}: {n} lines (without its tests)")
                found += 1
print(f"structure: {found} finding(s)")
sys.exit(1 if found else 0)
PY
