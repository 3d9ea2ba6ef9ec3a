#!/usr/bin/env python3
"""Structure checks run in CI (Python 3 alone):

1. No import circle between the files of src/: a module that uses another
   (`use crate::...`, `use super::...`) is never used back by it, directly or
   through others (strongly connected components of the `use` graph).
2. No function longer than LIMIT lines outside unit tests: one that long
   does several jobs.

    python3 scripts/check-structure.py [SRC_DIR] [LIMIT]

Exits 1 and names what it found when either check fails.
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"
LIMIT = int(sys.argv[2]) if len(sys.argv) > 2 else 80
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod tests\s*\{")


def modules(root):
    """Module path (`engine::run`) -> file, for every .rs file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                out["::".join(parts)] = path
    return out


def resolve(mods, cur, path):
    """The longest known module a `use` path names, from module `cur`."""
    segs, base = path.split("::"), cur.split("::") if cur else []
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] == "self":
        segs = segs[1:]
    else:
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    for i in range(len(segs), -1, -1):
        cand = "::".join(base + segs[:i])
        if cand in mods:
            return cand
    return None


def cycles(mods):
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        src = TESTS.split(open(path).read())[0]
        for use in re.findall(r"\buse\s+((?:crate|super|self)(?:::\w+)+)", src):
            t = resolve(mods, m, use)
            if t and t != m and not m.startswith(t + "::") and not t.startswith(m + "::"):
                edges[m].add(t)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in mods:
        if v not in index:
            visit(v)
    return found


def long_functions(mods, limit):
    out = []
    for path in mods.values():
        if path.endswith("tests.rs"):
            continue
        lines = TESTS.split(open(path).read())[0].split("\n")
        for i, line in enumerate(lines):
            m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", line)
            if not m:
                continue
            depth, started, j = 0, False, i
            while j < len(lines):
                code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j]).split("//")[0]
                for ch in code:
                    if ch == "{":
                        depth, started = depth + 1, True
                    elif ch == "}":
                        depth -= 1
                if (started and depth == 0) or (not started and code.rstrip().endswith(";")):
                    break
                j += 1
            if started and j - i + 1 > limit:
                out.append((j - i + 1, path, m.group(6)))
    return sorted(out, reverse=True)


def main():
    mods = modules(ROOT)
    bad = False
    for comp in cycles(mods):
        print("check-structure: import circle: " + " <-> ".join(comp))
        bad = True
    for n, path, name in long_functions(mods, LIMIT):
        print(f"check-structure: {path}: fn {name} is {n} lines (at most {LIMIT} outside tests)")
        bad = True
    if not bad:
        print(f"check-structure: {len(mods)} modules, no import circle, no function over {LIMIT} lines")
    sys.exit(1 if bad else 0)


main()
