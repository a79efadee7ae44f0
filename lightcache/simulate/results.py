"""The README table of ``lightcache plan`` at real sizes, from the ``plan-*.json`` files the
``lightcache plan --json`` commands wrote.

    python -m lightcache.simulate.results [benchmarks/results]   # markdown table + the targets

Every figure is read from the JSON files the ``lightcache plan`` commands wrote (each records its
command, date, versions and machine); nothing here is measured.
"""

from __future__ import annotations

import glob
import json
import os
import sys

GiB = 2**30
def load(folder="benchmarks/results", pattern="plan-*.json"):
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with open(path) as fh:
            out[os.path.basename(path)[5:-5]] = json.load(fh)
    return out


def scen(d, name):
    return next((s for s in d["scenarios"] if s["name"] == name), None)


def gib(n):
    return "n/a" if n is None else f"{n / GiB:.1f}"


def fit_text(d, cap):
    f = next((f for f in d.get("fits", []) if f.get("cap") == cap), None)
    if f is None:
        return "n/a"
    if not f.get("memory"):
        return "no plan fits"
    s = scen(d, next(s["name"] for s in d["scenarios"] if s["name"].endswith(f"(fit {cap // 10**9}GB)")))
    mem = f["memory"].replace("MemoryPlan(", "").rstrip(")").replace("'", "")
    off = f"; {f['offload']} offload" if f["offload"] != "none" else ""
    inexact = " (inexact decode)" if any("not exact" in n for n in f.get("notes", [])) else ""
    return f"{mem}{off} -> {gib(s['pipeline_peak'])}{inexact}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    results = load(argv[0] if argv else "benchmarks/results")
    rows = []
    head = ("| config | uncached peak (denoise / pipeline) | PreciseCache-flash, no plan | flash + swap | "
            "plan --fit 80 GB | --fit 48 GB | --fit 24 GB | sim s |")
    rows.append(head)
    rows.append("|" + "---|" * 8)
    targets = []
    for key, d in results.items():
        if not d.get("fits"):
            continue
        u, f, p = scen(d, "uncached"), scen(d, "precise-flash"), scen(d, "precise-flash + plan")
        if not (u and f and p):
            continue
        secs = max(s["seconds"] for s in (u, f, p))
        rows.append(f"| {d['label']} {d['height']}x{d['width']}x{d['frames']} | {gib(u['peak']['denoise'])} / "
                    f"{gib(u['pipeline_peak'])} | {gib(f['peak']['denoise'])} / {gib(f['pipeline_peak'])} | "
                    f"{gib(p['peak']['denoise'])} / {gib(p['pipeline_peak'])} | {fit_text(d, 80 * 10**9)} | "
                    f"{fit_text(d, 48 * 10**9)} | {fit_text(d, 24 * 10**9)} | {secs:.0f} |")
        targets.append((key, p["peak"]["denoise"] / u["peak"]["denoise"], secs))
    print("\n".join(rows))
    print()
    print("flash + swap peak(denoise) / uncached peak(denoise):")
    for key, r, secs in targets:
        print(f"  {key}: {r:.3f} ({'<=' if r <= 1.05 else '>'} 1.05); slowest of its three simulations {secs:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
