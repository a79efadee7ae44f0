"""ForecastCache vs EasyCache vs diffusers' TaylorSeer on the trained Wan proxy, at 20 and 50 steps.

    python benchmarks/forecast_sweep.py                      # writes benchmarks/results/forecast-wan-proxy-cpu.{json,txt}
    python benchmarks/forecast_sweep.py --steps 20 --repeats 3 --out /tmp/fc

For each step count: the uncached reference, ForecastCache and EasyCache at the same thresholds
(both with the warm-up the bench gives EasyCache: 20 % of the steps, so that a threshold reuses the
same steps and only the reused output differs), and diffusers' TaylorSeer as ``lightcache bench``
configures it (``make_method("diffusers-taylorseer", interval)``; its default interval 5, and the
other intervals of the bench's sweep).

Columns: ``wall`` = median reference wall time / median method wall time over ``--repeats``
alternating rounds in this one process (after a warm-up run; ``min-max`` is the range of the
per-round ratios); ``cpu`` = the same ratio of the process's CPU time (``time.process_time``),
which on a shared, oversubscribed box is the steadier measure of the work a run does (one torch
thread: CPU time is the run's own compute, not the time it waited for a core); PSNR (dB) of the
decoded video against the uncached one (same inputs and seed); ``blocks`` = lightcache's
``Report.block_compute_ratio`` (our policies only); ``leaf`` = the fraction of the transformer
blocks' nn.Linear calls that ran, against the reference run: the same compute-normalised measure
for every method (TaylorSeer skips attention and FFN inside blocks, not whole steps).
The load average before and after is recorded: the box is shared, ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import lightcache
from lightcache import EasyCache, bench, metrics
from lightcache.policies.forecast import ForecastCache

THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
TAYLORSEER_INTERVALS = (5, 3, 4)  # 5: diffusers' default (the bench's main table); 3, 4: the bench's sweep
WARMUP_RATIO = 0.2
OUT = Path(__file__).resolve().parent / "results" / "forecast-wan-proxy-cpu"


def methods(steps: int):
    """(name, settings, bench.Method) of every compared method at ``steps``."""
    found = []
    for tau in THRESHOLDS:
        for name, make in (("forecast", lambda n, t=tau: ForecastCache(threshold=t, warmup_ratio=WARMUP_RATIO)),
                           ("easycache", lambda n, t=tau: EasyCache(threshold=t, warmup_steps=ForecastCache(
                               warmup_ratio=WARMUP_RATIO).warmup_steps(n)))):
            enable, disable = bench._ours(make)
            label = f"{name} threshold={tau}"
            found.append((label, {"threshold": tau, "warmup_ratio": WARMUP_RATIO},
                          bench.Method(label, ("dit",), enable, disable, True)))
    for interval in TAYLORSEER_INTERVALS:
        m = bench.make_method("diffusers-taylorseer", interval)
        m.name = f"diffusers-taylorseer cache_interval={interval}"
        found.append((m.name, m.settings, m))
    return found


class LeafCounter:
    """Counts nn.Linear calls inside the denoiser's blocks (forward hooks fire only when a layer runs)."""

    def __init__(self, model):
        den = bench._denoiser(model.pipe)
        self.count = 0
        self.handles = [m.register_forward_hook(self._hit) for name, m in den.named_modules()
                        if name.startswith("blocks.") and isinstance(m, torch.nn.Linear)]
        if not self.handles:
            raise RuntimeError("no nn.Linear found under the denoiser's blocks: the leaf count would be 0/0")

    def _hit(self, *_):
        self.count += 1

    def close(self):
        for h in self.handles:
            h.remove()


def fidelity_run(model, method, steps):
    """(video, leaf-layer calls, block_compute_ratio or None) of one run of ``method`` (None: uncached)."""
    counter = LeafCounter(model)
    ratio = None
    try:
        if method is not None:
            method.enable(model, steps)
        try:
            _, video = bench._run(model, "cpu")
            if method is not None and method.ours:
                ratio = lightcache.report(model.pipe).block_compute_ratio
        finally:
            if method is not None:
                method.disable(model)
    finally:
        counter.close()
    return video, counter.count, ratio


def sweep_steps(steps: int, repeats: int) -> list:
    model = bench._proxy("wan_proxy")("cpu", steps)
    model.device = "cpu"
    model.pipe.set_progress_bar_config(disable=True)
    compared = methods(steps)
    ref_video, ref_leaves, _ = fidelity_run(model, None, steps)
    out = []
    for label, settings, method in compared:
        video, leaves, ratio = fidelity_run(model, method, steps)
        out.append({"steps": steps, "method": label, "settings": settings, "psnr": metrics.psnr(video, ref_video),
                    "block_compute_ratio": ratio, "leaf_ratio": leaves / ref_leaves})
        print(f"  {steps} steps {label}: PSNR {out[-1]['psnr']:.2f} dB, leaf {out[-1]['leaf_ratio']:.3f}",
              file=sys.stderr, flush=True)
    times = time_alternating(model, [m for _, _, m in compared], steps, repeats)
    head = {"steps": steps, "method": "none (reference)", "settings": {}, "psnr": None, "block_compute_ratio": 1.0,
            "leaf_ratio": 1.0}
    ref_wall, ref_cpu = times[None]
    for r in [head] + out:
        wall, cpu = times[None if r is head else r["method"]]
        r.update(wall_s=wall, cpu_s=cpu, speedup=statistics.median(ref_wall) / statistics.median(wall),
                 speedup_range=[min(a / b for a, b in zip(ref_wall, wall)), max(a / b for a, b in zip(ref_wall, wall))],
                 cpu_speedup=statistics.median(ref_cpu) / statistics.median(cpu),
                 cpu_speedup_range=[min(a / b for a, b in zip(ref_cpu, cpu)), max(a / b for a, b in zip(ref_cpu, cpu))])
    return [head] + out


def time_alternating(model, compared, steps, repeats) -> dict:
    """{method name or None (the reference): ([wall s], [cpu s])}: ``repeats`` rounds of the
    reference then every method, after one warm-up run (bench's order; CPU time added)."""

    def timed():
        w, c = time.perf_counter(), time.process_time()
        model.pipe(**model.kwargs, generator=torch.Generator("cpu").manual_seed(0))
        return time.perf_counter() - w, time.process_time() - c

    times = {None: ([], [])}
    times.update({m.name: ([], []) for m in compared})
    timed()  # warm-up
    for _ in range(repeats):
        for method in [None, *compared]:
            if method is not None:
                method.enable(model, steps)
            try:
                wall, cpu = timed()
            finally:
                if method is not None:
                    method.disable(model)
            times[None if method is None else method.name][0].append(wall)
            times[None if method is None else method.name][1].append(cpu)
    return times


def table(rows: list) -> str:
    lines = [f"{'steps':>5}  {'method':<42} {'wall':>5} {'min-max':>11} {'cpu':>5} {'min-max':>11} {'blocks':>6} "
             f"{'leaf':>6} {'PSNR dB':>8}", "-" * 108]
    for r in rows:
        blocks = "n/a" if r["block_compute_ratio"] is None else f"{r['block_compute_ratio']:.3f}"
        psnr = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        (lo, hi), (clo, chi) = r["speedup_range"], r["cpu_speedup_range"]
        lines.append(f"{r['steps']:>5}  {r['method']:<42} {r['speedup']:>5.2f} {lo:>5.2f}-{hi:<5.2f} "
                     f"{r['cpu_speedup']:>5.2f} {clo:>5.2f}-{chi:<5.2f} {blocks:>6} {r['leaf_ratio']:>6.3f} {psnr:>8}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="20,50", help="comma-separated step counts (default: 20,50)")
    p.add_argument("--repeats", type=int, default=3, help="alternating timed rounds (default: 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, the shared box's fair share)")
    p.add_argument("--out", default=str(OUT), help="output path without suffix (writes .json and .txt)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        rows += sweep_steps(steps, args.repeats)
    header = {
        "model": "wan-proxy (trained, lightcache/proxy), condition 0, seed 0, CFG 4.0",
        "device": "cpu", "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": args.threads,
        "torch": torch.__version__, "lightcache": lightcache.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repeats": args.repeats, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        "speedup": "median reference wall time / median method wall time over alternating rounds in one process",
        "cpu_speedup": "the same with process CPU time (time.process_time)",
        "leaf_ratio": "nn.Linear calls inside the transformer blocks, method / reference",
    }
    text = (f"ForecastCache vs EasyCache vs diffusers TaylorSeer, Wan proxy on CPU ({args.threads} torch thread(s), "
            f"{args.repeats} alternating rounds; load average before {load_before[0]:.2f}, after "
            f"{header['load_average_after'][0]:.2f} on {os.cpu_count()} cores; {header['wall_s']:.0f} s)\n"
            + table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**header, "rows": rows}, indent=2))
    out.with_suffix(".txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
