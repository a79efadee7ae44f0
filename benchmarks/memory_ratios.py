"""Memory-plan ratios on the tiny CPU pipelines, metered by the deterministic CPU tracker.

    python benchmarks/memory_ratios.py [--json FILE]

For each (family, policy): peak of the denoise stage uncached, with the policy (cache on the
"device"), and with the policy + swap; the whole-pipeline peak (max over stages) uncached and with
policy + swap + chunk (+ sliced decode where it is exact for the VAE: per-frame AutoencoderKL and Wan
one latent frame per slice; HunyuanVideo's slices of 3 are its own temporal tiles, i.e. its default
decode; SVD's temporal decoder cannot be split exactly, so it decodes unsliced), and the largest
difference of that run's video from the policy alone. Tracker peaks count the tensors a stage
allocates, above what existed before it (weights, inputs). Then wall times (median of --repeats
alternating runs, no tracker): the swap's cost against keeping the cache on the device, and the
speed of chunk + sliced decode against the uncached pipeline (CPU, tiny models: per-chunk Python
costs dominate there; the targets are GPU ones).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import lightcache  # noqa: E402
from lightcache import MemoryPlan  # noqa: E402
from tiny_pipelines import build, output_of  # noqa: E402

CASES = [
    ("wan", lambda: lightcache.EasyCache(threshold=10.0, warmup_steps=2), 1),
    ("wan", lambda: lightcache.PreciseCache(mode="flash"), 1),
    ("hunyuan_video", lambda: lightcache.PreciseCache(mode="flash"), 3),
    ("text_to_video_sd", lambda: lightcache.DeepCache(interval=3), 1),
    ("animatediff", lambda: lightcache.DeepCache(interval=3), 1),
    ("svd", lambda: lightcache.DeepCache(interval=3), None),
]


def peaks(pipe, kwargs, policy, memory):
    lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    return dict(rep.peak_bytes), out


def seconds(pipe, kwargs, policy, memory) -> float:
    """Wall time of one pipeline call with lightcache enabled (enable/disable not counted)."""
    lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        t0 = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t0
    finally:
        lightcache.disable(pipe)


def timings(pipe, kw, make_policy, slices, repeats: int) -> dict:
    """Median seconds of alternating runs (no tracker): uncached, the policy with its cache on the
    device, the policy with swap, chunk + sliced decode alone, and the policy with the full plan."""
    configs = {
        "uncached": (lambda: None, MemoryPlan()),
        "policy": (make_policy, MemoryPlan(swap="off")),
        "policy_swap": (make_policy, MemoryPlan(swap="on")),
        "chunk_decode": (lambda: None, MemoryPlan(chunk_size=16, decode_slices=slices)),
        "policy_full_plan": (make_policy, MemoryPlan(swap="on", chunk_size=16, decode_slices=slices)),
    }
    times = {k: [] for k in configs}
    for _ in range(repeats):
        for name, (policy, memory) in configs.items():
            times[name].append(seconds(pipe, kw, policy(), memory))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=5, help="alternating timed runs per configuration (median)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for family, make_policy, slices in CASES:
        pipe, kw = build(family)
        kw = dict(kw, num_inference_steps=10)
        track = dict(cpu_tracker=True)
        none, _ = peaks(pipe, kw, None, MemoryPlan(**track))
        cached, alone = peaks(pipe, kw, make_policy(), MemoryPlan(swap="off", **track))
        swapped, _ = peaks(pipe, kw, make_policy(), MemoryPlan(swap="on", **track))
        full, out = peaks(pipe, kw, make_policy(), MemoryPlan(swap="on", chunk_size=16, decode_slices=slices, **track))
        row = dict(
            family=family,
            policy=type(make_policy()).__name__,
            denoise_uncached=none["denoise"],
            denoise_cached=cached["denoise"],
            denoise_cached_swap=swapped["denoise"],
            ratio_swap_vs_uncached=swapped["denoise"] / none["denoise"],
            ratio_cached_vs_uncached=cached["denoise"] / none["denoise"],
            pipeline_uncached=max(v for v in none.values() if v is not None),
            pipeline_full_plan=max(v for v in full.values() if v is not None),
            full_plan_max_abs_diff_vs_policy_alone=(out - alone).abs().max().item(),
        )
        row["ratio_full_plan_vs_uncached"] = row["pipeline_full_plan"] / row["pipeline_uncached"]
        plan_only, _ = peaks(pipe, kw, None, MemoryPlan(chunk_size=16, decode_slices=slices, **track))
        row["ratio_chunk_decode_vs_uncached"] = max(v for v in plan_only.values() if v is not None) / row["pipeline_uncached"]
        t = timings(pipe, kw, make_policy, slices, args.repeats)
        row["median_seconds"] = t
        row["swap_time_vs_device_cache"] = t["policy_swap"] / t["policy"]
        row["chunk_decode_speed_vs_uncached"] = t["uncached"] / t["chunk_decode"]
        row["policy_full_plan_speedup_vs_uncached"] = t["uncached"] / t["policy_full_plan"]
        rows.append(row)
        print(f"{family:<17} {row['policy']:<13} denoise peak: cached {row['ratio_cached_vs_uncached']:.3f}x, "
              f"cached+swap {row['ratio_swap_vs_uncached']:.3f}x of uncached; whole pipeline with "
              f"swap+chunk{'+sliced decode' if slices else ''}: {row['ratio_full_plan_vs_uncached']:.3f}x "
              f"(max |diff| vs policy alone {row['full_plan_max_abs_diff_vs_policy_alone']:.1e})\n"
              f"{'':<31} chunk+decode alone: peak {row['ratio_chunk_decode_vs_uncached']:.3f}x at "
              f"{row['chunk_decode_speed_vs_uncached']:.2f}x the uncached speed; swap costs "
              f"{row['swap_time_vs_device_cache']:.3f}x the time of the device cache; policy + full plan at "
              f"{row['policy_full_plan_speedup_vs_uncached']:.2f}x the uncached speed (median of {args.repeats})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            machine="CPU tracker (deterministic) for bytes; wall times on a shared 2-core CPU, 1 torch thread",
            torch=torch.__version__, date=time.strftime("%Y-%m-%d"), steps=10, chunk_size=16, repeats=args.repeats,
            command="python benchmarks/memory_ratios.py --json benchmarks/results/memory_ratios_cpu_tracker.json",
            rows=rows), indent=2))


if __name__ == "__main__":
    main()
