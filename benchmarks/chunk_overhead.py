"""Run-time cost of feature chunking (MemoryPlan.chunk_size) against the same policy without it.

Cases (each: one pipeline, one policy, a base plan and the plans compared with it):

* ``animatediff``: AnimateDiff at the bench's tiny scale (``lightcache bench --model animatediff
  --scale tiny``), DeepCache, 9 steps: ``MemoryPlan(swap="on")`` against the same with
  ``chunk_size=256`` (issue target: ≤ 1.3×);
* ``wan-proxy`` / ``unet-proxy``: the trained proxies of the bench (precise-flash / DeepCache), no
  plan against swap alone, the bench's "+mem" plan and, with ``--fit``, the plan
  ``lightcache.plan(..., fit=CAP)`` picks for the proxy (issue target: ≤ 1.05×).

The instrument (``--instrument``):

* ``warm`` (default): steady-state calls, every plan on the same weights in the same memory. Each
  timed run enables the policy and plan on the one pipeline, calls it once untimed (the first
  call after enable opens the swap's host rings: pinned allocation and first touch of the slabs),
  times the next call and disables.
* ``steady``: what a user sees who enables once and generates many videos. Each plan gets its own
  copy of the pipeline (``copy.deepcopy``: the same weights), enabled once; then each round calls
  every plan's pipeline once. Each copy's weights sit at other addresses, which on this 2-core VM
  moved one plan's ratio by up to ±3 % from one process to the next (swap: 1.002 and 1.043 in two
  201-round runs): ``warm`` has no such bias.
* ``per-run``: every timed run enables the plan, calls the pipeline once and disables it (so each
  run pays the first call's ring opening).

Each instrument times the first call after enable apart (``first_call_cpu_s``), once per plan,
before the rounds; each round runs every plan once, in alternating order. An A/A control, the base
plan a second time (``--no-control`` leaves it out), measures the instrument itself: its ratio to
the base is the resolution.

The ratios are of the median times: the process's CPU time (``time.process_time``, one torch
thread: what the run itself costs, robust to other jobs on a shared machine), the wall-clock
ratios recorded beside them. glibc's malloc thresholds are fixed for the run (``--malloc fixed``,
:func:`fix_malloc`) so that no plan's time depends on the allocation history of the plans before
it. ``paired_ratio_to_base`` is the median over rounds of each round's own ratio (a plan's CPU
time over the base plan's in that round): it cancels the drift of a shared machine's speed
between rounds; ``ratio_to_base_95ci`` is the 95 % bootstrap interval of the ratio of medians
(rounds resampled): on a 2-core VM where one call's CPU time varies by ±12 % from the next, it takes
tens of rounds to resolve a few percent. Outputs are compared with the base plan's (max abs
difference). The pieces each plan runs are counted (lightcache.memory.chunk_spec.counting) and the
planner's cost model fitted: ``piece_overhead`` = (ratio - 1) / extra pieces per denoiser call, the
share of a denoiser call one extra piece cost here. Writes a JSON record (command, date, machine,
versions, times, ratios, pieces, the fit's choice and expected cost).

    python benchmarks/chunk_overhead.py [--cases animatediff,wan-proxy,unet-proxy] [--rounds 5]
        [--fit wan-proxy=8.1MB,unet-proxy=21.5MiB+20MiB] [--malloc fixed|default]
        [--instrument warm|steady|per-run] [--no-control] [--json benchmarks/results/chunk_overhead_cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time

import torch

import lightcache
from lightcache import DeepCache, MemoryPlan, PreciseCache


def _animatediff(steps):
    from lightcache import bench_models

    pipe, kw, _, desc = bench_models.build("animatediff", "cpu", steps, "tiny")
    return pipe, kw, desc, DeepCache, {"swap": MemoryPlan(swap="on"),
                                       "swap+chunk256": MemoryPlan(swap="on", chunk_size=256)}


def _proxy(name):
    def make(steps):
        from lightcache.bench import _mem_plan
        from lightcache.proxy import load

        if not load.weights_available(name):
            raise SystemExit(f"the proxy {name} is not trained in this installation")
        pipe = load.load_proxy(name, device="cpu")
        kw = load.call_kwargs(pipe, [0], num_inference_steps=steps, output_type="pt")
        kw.pop("generator")
        policy = (lambda: PreciseCache(mode="flash")) if name == "wan_proxy" else DeepCache
        plans = {"no plan": None, "swap": MemoryPlan(swap="on"), "+mem (bench)": _mem_plan(pipe)}
        return pipe, kw, f"trained proxy {name}", policy, plans

    return make


CASES = {"animatediff": _animatediff, "wan-proxy": _proxy("wan_proxy"), "unet-proxy": _proxy("unet_proxy")}


def proxy_built(name):
    """The proxy ``name`` as the planner's :class:`~lightcache.simulate.pipeline.Built` (what
    ``lightcache plan --model NAME`` simulates: the shapes the bench runs, fp32, the native clip, CFG)."""
    from lightcache.simulate.pipeline import build

    return build(name, dtype="fp32")


def _fit_plan(name, cap, piece_overhead=None):
    """What ``lightcache.plan(..., fit=cap)`` picks for the proxy ``name``: (fit dict, MemoryPlan or
    None, search seconds, the table)."""
    from lightcache.simulate.planner import parse_memory

    policy = "precise-flash" if name == "wan-proxy" else "deepcache"
    res = lightcache.plan(proxy_built(name), policy=policy, fit=cap, piece_overhead=piece_overhead)
    fit = res.fit
    plan = None
    if fit.get("memory"):  # the MemoryPlan(...) text enable_line prints, back to the object
        fields = fit["memory"][len("MemoryPlan("):-1]
        plan = parse_memory(",".join(p.replace("'", "") for p in fields.split(", ")))
    return fit, plan, res.seconds, res.table()


def _counted(pipe, kw, run):
    """(extra pieces per denoiser call, denoiser calls) of ``run()`` (one call of ``pipe``)."""
    from lightcache.memory.chunk_spec import counting

    den = getattr(pipe, "transformer", None) or pipe.unet
    calls = []
    handle = den.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with counting() as c:
            run()
    finally:
        handle.remove()
    return (c.pieces - c.calls) / max(1, len(calls)), len(calls)


def _call(pipe, kw):
    """((CPU s, wall s), output) of one call of an enabled pipeline."""
    w, c = time.perf_counter(), time.process_time()
    out = pipe(**kw, generator=torch.Generator("cpu").manual_seed(0)).frames
    return (time.process_time() - c, time.perf_counter() - w), torch.as_tensor(out)


def _timed(pipe, kw, policy, plan):
    """One call of ``pipe`` with ``plan`` enabled for it alone (the per-run instrument)."""
    lightcache.enable(pipe, policy=policy(), memory=plan)
    try:
        return _call(pipe, kw)
    finally:
        lightcache.disable(pipe)


class _PerRun:
    """Every timed run enables the plan, calls the one pipeline and disables it."""

    def __init__(self, pipe, kw, policy, plans):
        self.pipe, self.kw, self.policy, self.plans = pipe, kw, policy, plans

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def first(self, name):
        return _timed(self.pipe, self.kw, self.policy, self.plans[name])

    def run(self, name):
        return _timed(self.pipe, self.kw, self.policy, self.plans[name])

    def counted(self, name):
        return _counted(self.pipe, self.kw, lambda: self.run(name))


class _Warm(_PerRun):
    """Every timed run enables the plan on the one pipeline, calls it once untimed (the first call
    after enable opens the swap's host rings), times the next call and disables: steady-state calls,
    every plan on the same weights in the same memory."""

    def run(self, name):
        lightcache.enable(self.pipe, policy=self.policy(), memory=self.plans[name])
        try:
            _call(self.pipe, self.kw)
            return _call(self.pipe, self.kw)
        finally:
            lightcache.disable(self.pipe)


class _Steady:
    """Each plan on its own copy of the pipeline (the same weights), enabled once for the whole run."""

    def __init__(self, pipe, kw, policy, plans):
        self.kw, self.plans = kw, plans
        self.pipes = {}
        try:
            for name, plan in plans.items():
                p = copy.deepcopy(pipe)
                p.set_progress_bar_config(disable=True)
                lightcache.enable(p, policy=policy(), memory=plan)
                self.pipes[name] = p
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.pipes.values():
            lightcache.disable(p)
        self.pipes = {}
        return False

    def first(self, name):
        first = _call(self.pipes[name], self.kw)  # opens the swap's rings
        _call(self.pipes[name], self.kw)  # and one warm call
        return first

    def run(self, name):
        return _call(self.pipes[name], self.kw)

    def counted(self, name):
        return _counted(self.pipes[name], self.kw, lambda: self.run(name))


INSTRUMENTS = {"warm": _Warm, "steady": _Steady, "per-run": _PerRun}


def _bootstrap_ci(times, base_times, resamples=2000, seed=0):
    """95 % interval of the ratio of median CPU times, by resampling the rounds (each round's pair
    of times kept together) with a fixed seed: how far the noise of a shared machine moves it."""
    import random

    rng = random.Random(seed)
    n = len(times)
    if n < 2:
        return [float("nan"), float("nan")]
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(times[i] for i in idx) / statistics.median(base_times[i] for i in idx))
    ratios.sort()
    return [ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]]


def run_case(name, steps, rounds, fit=None, also=(), instrument="warm", control=True):
    from lightcache.simulate.planner import parse_memory

    pipe, kw, desc, policy, plans = CASES[name](steps)
    for spec in also:  # plans given on the command line ("swap=on,chunk_size=4096")
        plans[spec] = parse_memory(spec)
    pipe.set_progress_bar_config(disable=True)
    record = {"case": name, "model": desc, "policy": policy().__class__.__name__, "steps": steps, "rounds": rounds,
              "instrument": instrument}
    if fit is not None and name != "animatediff":
        record["fit"] = []
        for cap in fit.split("+"):
            try:
                info, plan, seconds, table = _fit_plan(name, cap)
            except Exception as e:  # the simulation failing is recorded, the timing goes on
                record["fit"].append({"cap": cap, "error": f"{type(e).__name__}: {e}"})
                print(f"{name:12s} fit {cap}: the planner failed: {type(e).__name__}: {e}")
                continue
            record["fit"].append({"cap": cap, "verdict": info["verdict"], "memory": info.get("memory"),
                                  "expected_cost": info.get("expected_cost"), "search_seconds": seconds,
                                  "table": table})
            if plan is not None:
                plans[f"fit {cap}"] = plan
    base = next(iter(plans))
    if control:  # the A/A control: the base plan again (on another copy with the steady instrument)
        plans[f"{base} (A/A)"] = plans[base]
    names = list(plans)
    with INSTRUMENTS[instrument](pipe, kw, policy, plans) as inst:
        firsts = {n: inst.first(n) for n in names}  # warm-up, and the outputs compared
        outs = {n: out for n, (_, out) in firsts.items()}
        times = {n: [] for n in names}
        walls = {n: [] for n in names}
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                (cpu, wall), _ = inst.run(n)
                times[n].append(cpu)
                walls[n].append(wall)
        # the planner's cost model: slowdown = extra pieces per denoiser call x piece_overhead; measured here
        try:
            extra = {n: inst.counted(n)[0] for n in names}
        except ImportError:  # a lightcache without piece counting (an older checkout, for before/after)
            extra = {n: 0.0 for n in names}
    med = {n: statistics.median(v) for n, v in times.items()}
    record["plans"] = {n: (None if p is None else repr(p)) for n, p in plans.items()}
    record["first_call_cpu_s"] = {n: t[0] for n, (t, _) in firsts.items()}
    record["cpu_times_s"] = times
    record["wall_times_s"] = walls
    record["median_cpu_s"] = med
    record["median_wall_s"] = {n: statistics.median(v) for n, v in walls.items()}
    record["wall_ratio_to_base"] = {n: record["median_wall_s"][n] / record["median_wall_s"][base] for n in names}
    record["ratio_to_base"] = {n: med[n] / med[base] for n in names}
    record["paired_ratio_to_base"] = {n: statistics.median(a / b for a, b in zip(times[n], times[base])) for n in names}
    record["ratio_to_base_95ci"] = {n: _bootstrap_ci(times[n], times[base]) for n in names}
    record["max_abs_diff_to_base"] = {n: float((outs[n].float() - outs[base].float()).abs().max()) for n in names}
    record["extra_pieces_per_denoiser_call"] = extra
    record["piece_overhead"] = {n: ((med[n] / med[base] - 1) / (extra[n] - extra[base]) if extra[n] > extra[base]
                                    else None) for n in names}
    for n in names:
        o = record["piece_overhead"][n]
        print(f"{name:12s} {n:22s} median cpu {med[n] * 1e3:7.1f} ms ratio {med[n] / med[base]:.3f} "
              f"[95% CI {record['ratio_to_base_95ci'][n][0]:.3f}-{record['ratio_to_base_95ci'][n][1]:.3f}] "
              f"(paired {record['paired_ratio_to_base'][n]:.3f}, wall {record['wall_ratio_to_base'][n]:.3f})  "
              f"first call {record['first_call_cpu_s'][n] * 1e3:7.1f} ms  "
              f"max|diff| {record['max_abs_diff_to_base'][n]:.2e}  extra pieces/call {extra[n]:.1f}"
              + ("" if o is None else f"  piece_overhead {o:.4f}"))
    for f in [f for f in record.get("fit", []) if "error" not in f]:
        print(f"{name:12s} fit {f['cap']}: {f['verdict']}; {f['memory']}; search {f['search_seconds']:.1f} s; "
              f"{(f['expected_cost'] or {}).get('text')}")
    return record


def fix_malloc() -> str:
    """Fix glibc malloc's thresholds for the run (mallopt: mmap above 32 MiB only, never trim), and
    say what was done. By default glibc moves its mmap threshold with every large free, so whether
    a block's tensors are fresh zeroed pages (page faults) or reused heap depends on what ran
    before: the plans of one process time each other's allocation history (the UNet proxy's chunk
    4096 plan measured 0.84x-1.19x of no plan across runs of this script). Fixed thresholds make a CPU run
    reuse memory as a GPU's caching allocator does, so the ratios measure the plans' own work."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default (no glibc mallopt)"
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return "fixed (mallopt M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 2 GiB)" if ok else "default (mallopt refused)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="animatediff,wan-proxy,unet-proxy")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--fit", default=None, help="caps for lightcache.plan(fit=...) on the proxies, "
                    "wan-proxy=CAP,unet-proxy=CAP[+CAP...] (e.g. wan-proxy=8.1MB,unet-proxy=21.5MiB+20MiB)")
    ap.add_argument("--also", action="append", default=[], metavar="CASE:PLAN",
                    help="another plan to time for a case, e.g. unet-proxy:swap=on,chunk_size=4096 (repeatable)")
    ap.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                    help="glibc malloc thresholds: fixed for the run (default; see fix_malloc) or glibc's own")
    ap.add_argument("--instrument", choices=tuple(INSTRUMENTS), default="warm",
                    help="warm (default): enable, an untimed call, the timed call, disable, on one pipeline; "
                         "steady: each plan on its own pipeline copy, enabled once; "
                         "per-run: enable, the timed call, disable")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="leave out the A/A control (the base plan timed twice per round)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    malloc = fix_malloc() if args.malloc == "fixed" else "default"
    fits = dict(item.split("=", 1) for item in args.fit.split(",")) if args.fit else {}
    also = [tuple(item.split(":", 1)) for item in args.also]
    import diffusers

    result = {
        "benchmark": "chunk_overhead",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}, "
                   f"{platform.processor() or 'cpu'}, threads {torch.get_num_threads()}",
        "malloc": malloc,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version(), "lightcache": getattr(lightcache, "__version__", None)},
        "instrument": args.instrument,
        "cases": [run_case(c, args.steps, args.rounds, fits.get(c), [s for k, s in also if k == c],
                           args.instrument, args.control)
                  for c in args.cases.split(",")],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
