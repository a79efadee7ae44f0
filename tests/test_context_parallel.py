"""lightcache under diffusers' context parallelism, on 2 real processes (torch.distributed, gloo, CPU).

The test spawns this file twice (rank 0 and 1). Each worker builds the tiny Wan pipeline twice with
the same weights: one stays single-process (the reference), the other gets diffusers' own
``enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))`` (its real split/gather hooks
and Ulysses all-to-all attention); then both run every scenario and the workers save what they saw.
The assertions run here, in the pytest process.

What does not run on CPU, and what the harness does about it (diffusers 0.42.1, torch 2.13 CPU):
  * ``enable_parallelism`` computes ``rank % torch.accelerator.device_count()``, which is 0 without
    an accelerator: ``ZeroDivisionError: integer modulo by zero``. The workers patch
    ``device_count`` to 1 for that one call; everything after it is diffusers' code as shipped.
  * Ring attention needs the attention's log-sum-exp, which the CPU-capable "native" backend does
    not give: ``ValueError: Native attention does not support return_lse=True``. So CPU tests use
    Ulysses (ulysses_degree=2); ring attention needs a GPU backend (flash, cuDNN, sage).

No hang: each worker arms faulthandler to end itself after WORKER_TIMEOUT_S and uses a 60 s
collective timeout, and the test kills the workers and fails at JOB_TIMEOUT_S.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

WORLD = 2
STEPS = 8
WORKER_TIMEOUT_S = 150
JOB_TIMEOUT_S = 200  # measured ~25 s for the whole job on 2 shared cores
OUT_ATOL = 1e-4  # CP vs single-process video (values in [0, 1]); measured 0.0 on CPU
# name -> (policy, memory plan), built in the workers
SCENARIOS = {
    "easycache": ("EasyCache(threshold=0.3, warmup_steps=1)", "None"),
    "easycache_swap": ("EasyCache(threshold=0.3, warmup_steps=1)", "MemoryPlan(swap='on')"),
    "flash": ("PreciseCache(mode='flash')", "None"),
    "flash_swap": ("PreciseCache(mode='flash')", "MemoryPlan(swap='on')"),
}
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# the worker (one per rank)
# ---------------------------------------------------------------------------------------------


def _reductions(rank: int, world: int) -> dict:
    """Partial sums reduced over the 2 ranks against the same metric over the whole tensor."""
    import torch.distributed as dist

    from lightcache.parallel import ContextParallel
    from lightcache.policies import PreciseCache
    from lightcache.policies.base import RunContext, global_means, part_mean_abs, part_mean_abs_diff

    par = ContextParallel(group=dist.group.WORLD, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 6, 3, 8, 8, generator=g), torch.randn(2, 6, 3, 8, 8, generator=g)  # replicated
    res = {"rel_l1": []}
    # contiguous (flat parts), a strided view, and one of each (the parts must still correspond)
    for x, y in ((a, b), (a[:, :4], b[:, :4]), (a[:, :4], b[:, :4].contiguous())):
        m1, n1, t1 = part_mean_abs_diff(par, x, y)
        m2, n2, t2 = part_mean_abs(par, y)
        got = global_means(par, [m1, m2], [n1, n2], [t1, t2]).tolist()
        ref = [(x.double() - y.double()).abs().mean().item(), y.double().abs().mean().item()]
        res["rel_l1"].append((got, ref, n1, t1))
    # low-frequency energy: each rank's frames, energies summed
    policy = PreciseCache(mode="flash")
    state = policy.new_state(RunContext(store=None, adapter=None, parallel=par))
    state.prev_signal_input = b
    s = policy._resolve(state, policy._local_energy(state, a))
    res["lowfreq"] = (s, float(torch.ops.lightcache.lowfreq_energy(a, b, policy.radius_ratio)))
    # sharded tokens, uneven split (13 = 7 + 6): counts travel with the sums
    h = torch.randn(1, 13, 24, generator=g)
    part = h.tensor_split(world, dim=1)[rank]
    got = global_means(par, [part.abs().mean()], [part.numel()]).item()
    res["sharded_mean"] = (got, h.double().abs().mean().item())
    # block ranking: per-rank shards whose local ranking differs from the global one. Global
    # mean|D_j| = (1, 2, 3): with 40 % pivotal (2 of 3) blocks 1 and 2 are pivotal; rank 0's shard
    # alone, (1.9, 0.1, 3.0), would pick blocks 0 and 2.
    local = {0: (1.9, 0.1, 3.0), 1: (0.1, 3.9, 3.0)}[rank]
    state = policy.new_state(RunContext(store=None, adapter=None, parallel=par))
    state.block_scores = {("cond", j): (torch.tensor([v]), [6 * 24]) for j, v in enumerate(local)}
    policy._rank(state, "cond")
    policy._resolve(state)
    res["pivotal"] = sorted(state.pivotal["cond"])
    res["local_pivotal"] = sorted(j for _, j in sorted(zip(local, range(3)), reverse=True)[:2])
    return res


def _pipelines(rank: int) -> dict:
    import unittest.mock

    import torch.distributed as dist
    from diffusers import ContextParallelConfig
    from tiny_pipelines import build, output_of

    import lightcache
    from lightcache import EasyCache, MemoryPlan, PreciseCache  # noqa: F401 (SCENARIOS)

    def enable_cp(pipe):
        # diffusers computes rank % torch.accelerator.device_count(): 0 without an accelerator
        with unittest.mock.patch("torch.accelerator.device_count", return_value=1):
            pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))

    ref, kwargs = build("wan", seed=0)
    cp, _ = build("wan", seed=0)
    kwargs["num_inference_steps"] = STEPS
    enable_cp(cp)
    seen = {}  # (the pre-hooks return None: a returned value would replace the block's inputs)

    def tokens_into(key):
        def hook(module, args):
            seen.setdefault(key, args[0].shape[1])

        return hook

    cp.transformer.blocks[1].register_forward_pre_hook(tokens_into("block1_tokens"))
    ref.transformer.blocks[1].register_forward_pre_hook(tokens_into("block1_tokens_single"))

    def latent_shape(module, args, kw):
        seen.setdefault("latent_shape", tuple(kw["hidden_states"].shape))

    ref.transformer.register_forward_pre_hook(latent_shape, with_kwargs=True)

    def run(pipe):
        return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))

    res = {"uncached_single": run(ref), "uncached_cp": run(cp)}
    res.update(seen)

    calls = [0]
    all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kw):
        calls[0] += 1
        return all_reduce(*args, **kw)

    for name, (policy_src, memory_src) in SCENARIOS.items():
        policy, memory = eval(policy_src), eval(memory_src)
        entry = {}
        for tag, pipe in (("single", ref), ("cp", cp)):
            lightcache.enable(pipe, policy=policy, memory=memory)
            calls[0] = 0
            dist.all_reduce = counting_all_reduce
            try:
                out = run(pipe)
            finally:
                dist.all_reduce = all_reduce
            rep = lightcache.report(pipe)
            entry[tag] = dict(
                out=out,
                decisions=[(d.step, d.branch, d.computed, d.blocks_computed) for d in rep.decisions],
                cache_bytes=dict(rep.cache_bytes),
                all_reduces=calls[0],
            )
            lightcache.disable(pipe)
        res[name] = entry
    res["uncached_cp_after_disable"] = run(cp)

    # enable_parallelism after lightcache.enable: refused at the first denoiser call, on every rank
    late, _ = build("wan", seed=0)
    lightcache.enable(late, policy=EasyCache(threshold=0.3, warmup_steps=1))
    enable_cp(late)
    try:
        run(late)
        res["late_error"] = None
    except RuntimeError as exc:
        res["late_error"] = str(exc)
    return res


def _worker(rank: int, world: int, out_dir: str) -> None:
    import faulthandler

    import torch.distributed as dist

    faulthandler.dump_traceback_later(WORKER_TIMEOUT_S, exit=True)  # a stuck collective ends the process
    torch.set_num_threads(1)
    sys.path[:0] = [os.environ["LIGHTCACHE_IMPORT_ROOT"], str(REPO / "tests")]
    import lightcache.ops  # noqa: F401

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        res = {"reductions": _reductions(rank, world), "pipelines": _pipelines(rank)}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the test side: spawn, wait (bounded), load
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("context_parallel")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):  # gloo on loopback: no dependence on the host name resolving
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # the workers import the lightcache this test imported (the installed one, with its compiled
    # module, under `pytest`; the source tree under `python -m pytest`)
    import lightcache

    root = str(Path(lightcache.__file__).resolve().parents[1])
    env["LIGHTCACHE_IMPORT_ROOT"] = root
    env["PYTHONPATH"] = os.pathsep.join([root, str(REPO / "tests"), env.get("PYTHONPATH", "")])
    logs = [open(out / f"rank{r}.log", "w") for r in range(WORLD)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), str(WORLD), str(out)], cwd=REPO / "tests", env=env, stdout=logs[r], stderr=subprocess.STDOUT
        )
        for r in range(WORLD)
    ]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        timed_out = [p.pid for p in procs if p.poll() is None]
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    text = "\n".join(f"--- rank {r} ---\n" + (out / f"rank{r}.log").read_text()[-4000:] for r in range(WORLD))
    if timed_out:
        pytest.fail(f"context-parallel workers still running after {JOB_TIMEOUT_S} s (killed):\n{text}")
    if any(p.returncode != 0 for p in procs):
        pytest.fail(f"context-parallel workers failed (exit codes {[p.returncode for p in procs]}):\n{text}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_reduced_partial_sums_equal_the_whole_tensor_metric(ranks):
    for rank, res in enumerate(ranks):
        red = res["reductions"]
        for got, ref, part, total in red["rel_l1"]:
            assert 0 < part < total  # each rank really summed only its part
            assert got == pytest.approx(ref, rel=1e-6)
        s, full = red["lowfreq"]
        assert s == pytest.approx(full, rel=1e-5)
        got, ref = red["sharded_mean"]
        assert got == pytest.approx(ref, rel=1e-6)
        assert red["pivotal"] == [1, 2], rank  # the ranking of the unsharded residuals
    # rank 0's shard alone would pick other blocks: without the reduction the ranks would disagree
    assert ranks[0]["reductions"]["local_pivotal"] == [0, 2]
    assert ranks[1]["reductions"]["local_pivotal"] == [1, 2]


def test_diffusers_context_parallel_runs_and_matches_single_process(ranks):
    latent = ranks[0]["pipelines"]["latent_shape"]
    for res in ranks:
        p = res["pipelines"]
        # tokens of the tiny Wan: frames x (H/2) x (W/2) after the (1, 2, 2) patch embedding
        tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
        assert p["block1_tokens_single"] == tokens
        assert p["block1_tokens"] == tokens // WORLD  # blocks really see this rank's shard
        torch.testing.assert_close(p["uncached_cp"], p["uncached_single"], atol=OUT_ATOL, rtol=0)
    assert torch.equal(ranks[0]["pipelines"]["uncached_cp"], ranks[1]["pipelines"]["uncached_cp"])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_same_decisions_on_every_rank_and_as_single_process(ranks, scenario):
    r0, r1 = (r["pipelines"][scenario] for r in ranks)
    single, cp0, cp1 = r0["single"], r0["cp"], r1["cp"]
    assert cp0["decisions"] == cp1["decisions"]
    assert cp0["decisions"] == single["decisions"]
    assert len(single["decisions"]) == 2 * STEPS  # cond + uncond per step
    # the scenario really caches: whole calls reused, and (flash) blocks reused inside computed calls
    assert any(not d[2] for d in single["decisions"])
    if scenario.startswith("flash"):
        assert any(d[2] and d[3] < 2 for d in single["decisions"])
    # every rank returns the same video, equal to the single-process one within OUT_ATOL
    assert torch.equal(cp0["out"], cp1["out"])
    torch.testing.assert_close(cp0["out"], single["out"], atol=OUT_ATOL, rtol=0)
    # exactly one all-reduce per decision that reads a metric (the leader call of a step that is
    # not forced), none otherwise. EasyCache (warm-up 1): steps 0-1 are forced (k needs two full
    # computes) and so is the last. Flash: step 0 is the warm-up; every later step reads s_t, and the
    # block rankings ride along in the same all-reduce.
    decided = {"easycache": STEPS - 3, "flash": STEPS - 1}[scenario.split("_")[0]]
    assert cp0["all_reduces"] == cp1["all_reduces"] == decided
    assert single["all_reduces"] == 0


def test_each_rank_caches_its_shards(ranks):
    latent = ranks[0]["pipelines"]["latent_shape"]
    pred_bytes = 2 * math.prod(latent) * 4  # whole fp32 latents, one per CFG branch
    for res in ranks:
        p = res["pipelines"]
        # BlockCache residuals are per-rank shards (half the tokens); the cached predictions are whole
        for name, side in (("flash", "device"), ("flash_swap", "host")):
            single, cp = p[name]["single"]["cache_bytes"][side], p[name]["cp"]["cache_bytes"][side]
            assert single > pred_bytes
            assert cp == pred_bytes + (single - pred_bytes) // WORLD, (name, single, cp)
        # EasyCache keeps whole latents (Δ and the rate's x, v): the same bytes on every rank
        assert p["easycache_swap"]["cp"]["cache_bytes"]["host"] == p["easycache_swap"]["single"]["cache_bytes"]["host"] > 0


def test_disable_restores_the_context_parallel_model(ranks):
    for res in ranks:
        p = res["pipelines"]
        assert torch.equal(p["uncached_cp_after_disable"], p["uncached_cp"])


def test_enable_before_enable_parallelism_is_refused(ranks):
    for res in ranks:
        msg = res["pipelines"]["late_error"]
        assert msg is not None and "enable_parallelism() was called after lightcache.enable()" in msg


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
