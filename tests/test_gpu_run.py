"""benchmarks/gpu/run.sh, the packed GPU run, tested without a GPU.

The dry run (``DRY_RUN=1``) goes through every step with a CPU stand-in under the same budget,
timeout, summary and exit-code logic as the real run; the other tests drive that logic directly
(an injected failure, an injected hang, a budget too small, no GPU, bad usage) on one or two cheap
steps, so each takes a second or two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"
STEPS = ["env", "build", "cuda_tests", "large_opcheck", "e2e", "microbench", "wan13_bench", "engine_overhead",
         "plan_vs_alloc", "ctest"]
RESULT_FILES = {"summary.txt", "env.txt", "logs.txt", "microbench.json", "bench-wan13.json", "engine_overhead.json",
                "plan_vs_allocator.json"}
LINE = re.compile(r"^(\S+) rc=(\S+) seconds=(\d+) figure=(.*)$")


def run_script(tmp_path, timeout=180, **env):
    out = tmp_path / "out"
    # not this pytest's own variables either: an xdist worker's PYTEST_XDIST_WORKER would make the
    # script's inner pytest-benchmark run think it is an xdist worker and refuse --benchmark-only
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("LC_GPU_", "PYTEST_")) and k not in ("STEPS", "BUDGET_S", "RESERVE_S")}
    e.update(OUT=str(out), PYTHON=sys.executable, **env)
    import lightcache

    if Path(lightcache.__file__).resolve().parents[1] != ROOT:
        # these tests import an installed lightcache: keep the source tree (the script's working
        # directory) off the stand-ins' sys.path so that they import the same one
        e["PYTHONSAFEPATH"] = "1"
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start, out


def summary(out: Path) -> dict:
    """step -> (rc, seconds, figure), in file order; every line must match the documented format."""
    rows = {}
    for line in (out / "summary.txt").read_text().splitlines():
        m = LINE.match(line)
        assert m, f"summary line not in the documented format: {line!r}"
        rows[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4))
    return rows


def test_dry_run_runs_every_step(tmp_path):
    proc, seconds, out = run_script(tmp_path, DRY_RUN="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = summary(out)
    assert list(rows) == STEPS + ["total"]
    for step in STEPS:
        rc, _, figure = rows[step]
        assert rc == "0", (step, rows[step])
        assert figure and figure != "n/a", (step, rows[step])
    assert "torch" in rows["env"][2] and "triton" in rows["env"][2]
    assert "collected" in rows["cuda_tests"][2] and "collected" in rows["large_opcheck"][2]
    assert re.search(r"\d+ skipped", rows["e2e"][2])  # the CUDA end-to-end tests skip cleanly here
    assert re.search(r"\d+ benchmarks: rel_l1", rows["microbench"][2])
    assert "easycache+mem" in rows["wan13_bench"][2]
    assert "median ratio" in rows["engine_overhead"][2]
    # the CPU stand-in: the CPU tracker equals the simulation, every stage of every scenario
    assert "measured/simulated 1.000-1.000 over 9 stage peaks" in rows["plan_vs_alloc"][2]
    assert rows["total"][0] == "0" and "10 passed, 0 failed, 0 skipped of 10 steps" in rows["total"][2]
    files = {p.name for p in out.iterdir()}
    assert files <= RESULT_FILES and len(files) <= 8, files
    for name in ("microbench.json", "bench-wan13.json", "engine_overhead.json", "plan_vs_allocator.json"):
        json.loads((out / name).read_text())
    assert "== wan13_bench" in (out / "logs.txt").read_text()
    assert "dry run 1" in (out / "env.txt").read_text()
    # the stand-ins print the real commands they replace
    assert "would run:" in (out / "logs.txt").read_text() and "--no-build-isolation" in (out / "logs.txt").read_text()
    assert seconds < 150, seconds


@pytest.mark.parametrize("driver", ["none", "driver-but-no-device"])
def test_no_gpu_stops_at_once_with_a_message(tmp_path, driver):
    env = dict(CUDA_VISIBLE_DEVICES="")
    if driver != "none":  # an nvidia-smi on PATH: torch, which sees no device, decides
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    proc, seconds, out = run_script(tmp_path, timeout=120, **env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no GPU visible" in proc.stderr
    if driver != "none":
        assert "sees no CUDA device" in proc.stderr
    rows = summary(out)
    assert list(rows) == ["gpu", "total"] and rows["gpu"][0] == "2" and "no GPU visible" in rows["gpu"][2]
    assert seconds < 60, seconds  # the message comes from a torch import at most


def test_a_failing_step_fails_the_run_and_skips_its_dependants(tmp_path):
    proc, _, out = run_script(tmp_path, DRY_RUN="1", STEPS="build,cuda_tests,ctest", LC_GPU_INJECT="build:fail")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = summary(out)
    assert list(rows) == ["build", "cuda_tests", "ctest", "total"]
    assert rows["build"][0] == "3"  # the step's own exit status
    assert rows["cuda_tests"][0] == "skip" and "needs build" in rows["cuda_tests"][2]
    assert rows["ctest"][0] == "0"  # independent steps still run
    assert rows["total"][0] == "1" and "1 passed, 1 failed, 1 skipped" in rows["total"][2]


def test_a_hanging_step_is_stopped_at_its_timeout(tmp_path):
    proc, seconds, out = run_script(tmp_path, DRY_RUN="1", STEPS="ctest", LC_GPU_INJECT="ctest:hang", LC_GPU_TIMEOUT_S="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = summary(out)
    assert rows["ctest"][0] == "124" and rows["ctest"][2].startswith("TIMEOUT after 1 s")
    assert seconds < 30, seconds


def test_budget_cuts_timeouts_and_skips_steps_that_do_not_fit(tmp_path):
    # 8 s budget, 2 s reserve: at most 6 s left, so the hang's timeout is cut from 30 s to that
    proc, seconds, out = run_script(tmp_path, DRY_RUN="1", BUDGET_S="8", RESERVE_S="2", STEPS="build,ctest",
                                    LC_GPU_INJECT="build:hang")
    rows = summary(out)
    m = re.match(r"TIMEOUT after (\d+) s", rows["build"][2])
    assert rows["build"][0] == "124" and m and 1 <= int(m.group(1)) <= 6, rows["build"]
    # the hang used what was left: the next step does not fit and is skipped, naming what it needed
    assert rows["ctest"][0] == "skip" and "left of the 8 s budget" in rows["ctest"][2], rows["ctest"]
    assert proc.returncode == 1  # the timeout is a failure; the budget skip is not
    assert seconds < 30, seconds
    # a budget with no room at all: everything is listed as skipped, and that alone is no failure
    proc, _, out = run_script(tmp_path, DRY_RUN="1", BUDGET_S="2", RESERVE_S="2", STEPS="build,ctest")
    rows = summary(out)
    assert proc.returncode == 0 and [rows[s][0] for s in ("build", "ctest")] == ["skip", "skip"]
    assert "0 passed, 0 failed, 2 skipped of 2 steps" in rows["total"][2]


@pytest.mark.parametrize("env, message", [
    (dict(DRY_RUN="1", STEPS="build,nope"), "unknown step 'nope'"),
    (dict(DRY_RUN="2"), "DRY_RUN must be 0 or 1"),
    (dict(DRY_RUN="1", BUDGET_S="8m"), "BUDGET_S must be a whole number"),
])
def test_bad_usage_is_refused(tmp_path, env, message):
    proc, seconds, _ = run_script(tmp_path, timeout=30, **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert seconds < 10


# ---- the bench's "+mem" plan: chunks sized from a budget, not 256 rows at every size ------------


class _Pipe:
    """Just what bench._mem_plan reads: the denoiser's first parameter's device."""

    def __init__(self, device):
        param = SimpleNamespace(device=torch.device(device))
        self.transformer = SimpleNamespace(parameters=lambda: iter([param]))


def test_bench_mem_plan_sizes_chunks_from_a_budget(monkeypatch):
    from lightcache import bench
    from lightcache.memory.chunk_spec import ChunkSpec

    # CPU (the proxies): the 256-token chunk (its effect on the proxy's peak: the test below)
    plan = bench._mem_plan(_Pipe("cpu"))
    assert plan.swap == "on" and plan.chunk_size == 256
    # CUDA: 1/32 of the device's memory. A Wan2.1-1.3B block at 480x832, 33 frames (14,040 tokens,
    # 12 heads: one row of attention scores is 12 x 14,040 x 4 bytes) on a 141 GB H200 runs in 3
    # pieces instead of 55
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=141 * 10**9))
    plan = bench._mem_plan(_Pipe("cuda:0"))
    assert plan.chunk_budget == 141 * 10**9 // 32
    rows = ChunkSpec(budget=plan.chunk_budget).rows(12 * 14040 * 4, "row")
    assert -(-14040 // rows) == 3 and -(-14040 // 256) == 55


def test_bench_mem_plan_keeps_the_wan_proxy_below_the_uncached_peak():
    """The bench's "+mem" plan on CPU: PreciseCache-flash with it peaks below the uncached pipeline
    in the denoise stage (CPU tracker; measured 1.84 vs 2.12 MiB at 20 steps), without it above."""
    import lightcache
    from lightcache import MemoryPlan, PreciseCache, bench
    from lightcache.proxy.load import call_kwargs, load_wan_proxy, weights_available

    if not weights_available("wan_proxy"):
        pytest.skip("the trained Wan proxy's weights are not shipped in this checkout")
    pipe = load_wan_proxy()
    pipe.set_progress_bar_config(disable=True)
    kw = call_kwargs(pipe, [0], num_inference_steps=10, output_type="latent")

    def peak(policy, memory):
        lightcache.enable(pipe, policy=policy, memory=memory)
        try:
            pipe(**kw)
            return lightcache.report(pipe).peak_bytes["denoise"]
        finally:
            lightcache.disable(pipe)

    from dataclasses import replace

    uncached = peak(None, MemoryPlan(cpu_tracker=True))
    alone = peak(PreciseCache(mode="flash"), MemoryPlan(swap="off", cpu_tracker=True))
    planned = peak(PreciseCache(mode="flash"), replace(bench._mem_plan(pipe), cpu_tracker=True))
    assert planned < uncached < alone, (planned, uncached, alone)
