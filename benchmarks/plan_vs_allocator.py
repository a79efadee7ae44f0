"""The simulator against a real device: ``lightcache plan``'s per-stage peaks (meta tensors) next to
the peaks a real run of the same pipeline measures, and their ratio (issue 11's GPU check).

On CUDA the real peaks are the caching allocator's (``MemoryPlan(cuda_peaks=True)``: each stage's
``torch.cuda.max_memory_allocated``, weights and inputs included); the simulated ones are weights +
inputs + live bytes at the stage's peak (``Figures.peak``). On CPU (``--device cpu``, the stand-in
the packed GPU run's dry run uses) the real run is counted by the CPU tracker, which the tests hold
equal to the simulation at tiny scale, so the ratios there are 1.

Scenarios: uncached, PreciseCache-flash at its worst-case residency with its cache on the device,
and the same with ``swap="on"``: every policy decision forced to the pattern that holds the most
memory (lightcache.simulate.worst), on both sides, so the two runs do the same work.

    python benchmarks/plan_vs_allocator.py [--model wan2.1-1.3b] [--height 240 --width 416 --frames 17]
        [--dtype bf16] [--device cuda|cpu] [--scale full|tiny] [--json plan_vs_allocator.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch

SCENARIOS = (("uncached", None, "off"), ("precise-flash", "precise-flash", "off"),
             ("precise-flash + swap", "precise-flash", "on"))


def _measured(built, policy, swap, device, steps):
    """Per-stage peaks of a real run on ``device``: the allocator's on CUDA, the CPU tracker's on CPU."""
    import lightcache
    from lightcache.memory import MemoryPlan
    from lightcache.simulate import pipeline as sp
    from lightcache.simulate.worst import worst_case

    if device == "cpu":
        return sp.run(built.pipe, built.kwargs, policy=policy, memory=MemoryPlan(swap=swap), attention="cpu",
                      device_type="cpu", steps=steps).peak
    lightcache.enable(built.pipe, policy=worst_case(policy), memory=MemoryPlan(swap=swap, cuda_peaks=True))
    try:
        built.pipe(**dict(built.kwargs, num_inference_steps=steps), generator=torch.Generator().manual_seed(0))
        return {k: int(v) for k, v in lightcache.report(built.pipe).peak_bytes.items()}
    finally:
        lightcache.disable(built.pipe)
        torch.cuda.empty_cache()


def compare(model, height, width, frames, dtype, device, scale):
    from lightcache.memory import MemoryPlan
    from lightcache.simulate import pipeline as sp
    from lightcache.simulate.planner import make_policy
    from lightcache.simulate.worst import steps_for

    sizes = dict(height=height, width=width, frames=frames)
    real = sp.build(model, scale=scale, dtype=dtype, device=device, **sizes)
    meta = sp.build(model, scale=scale, dtype=dtype, device="meta", **sizes)
    rows = []
    for name, policy_name, swap in SCENARIOS:
        policy = make_policy(policy_name)
        steps = steps_for(policy)
        t0 = time.perf_counter()
        sim = sp.run(meta.pipe, meta.kwargs, policy=policy, memory=MemoryPlan(swap=swap),
                     attention="cpu" if device == "cpu" else "auto", device_type="meta", steps=steps).peak
        t1 = time.perf_counter()
        got = _measured(real, policy, swap, device, steps)
        t2 = time.perf_counter()
        stages = {p: dict(measured=got.get(p), simulated=sim[p],
                          ratio=(got[p] / sim[p]) if got.get(p) and sim[p] else None) for p in sim}
        rows.append(dict(scenario=name, steps=steps, stages=stages, simulate_seconds=t1 - t0, run_seconds=t2 - t1))
        line = ", ".join(f"{p} {s['measured'] / 2**30 if s['measured'] else float('nan'):.3f}/"
                         f"{s['simulated'] / 2**30:.3f} GiB" + (f" ({s['ratio']:.3f})" if s["ratio"] else "")
                         for p, s in stages.items())
        print(f"{name:22s} measured/simulated: {line}", flush=True)
    ratios = [s["ratio"] for r in rows for s in r["stages"].values() if s["ratio"]]
    what = "measured" if device == "cpu" else "allocator"  # the CPU tracker stands in for the allocator
    summary = (f"{what}/simulated {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} stage peaks"
               if ratios else "no stage peak measured")
    print(summary)
    return rows, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wan2.1-1.3b")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--scale", default="full", choices=("full", "tiny"),
                    help="the model's real configuration (full, default) or the CPU smoke size (tiny)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("plan_vs_allocator: --device cuda needs a visible CUDA device (--device cpu runs the stand-in)")
    if args.device == "cpu" and args.scale == "full":
        raise SystemExit("plan_vs_allocator: --device cpu runs the tiny scale only (--scale tiny)")
    torch.manual_seed(0)
    rows, summary = compare(args.model, args.height, args.width, args.frames, args.dtype, args.device, args.scale)
    import diffusers

    import lightcache

    record = {
        "benchmark": "plan_vs_allocator",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.processor() or 'cpu'})",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
                     "lightcache": getattr(lightcache, "__version__", None), "python": platform.python_version()},
        "config": vars(args),
        "scenarios": rows,
        "summary": summary,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    main()
