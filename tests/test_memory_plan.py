"""MemoryPlan as a whole: "fit in N bytes" (fit_bytes) and the composition of the strategies with
the policies (tracked peaks from the CPU live-tensor tracker)."""

import warnings

import pytest
import torch

import lightcache
from lightcache import MemoryPlan

from tiny_pipelines import build, output_of


def run(pipe, kwargs, policy=None, memory=None):
    """(frames, report, ResourceWarnings) of one pipeline call with lightcache enabled."""
    lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    return out, rep, [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def pipeline_peak(rep) -> int:
    return max(v for v in rep.peak_bytes.values() if v is not None)


# ------------------------------------------------------------------------------------------------
# fit_bytes: the budgets it derives
# ------------------------------------------------------------------------------------------------


def test_fit_bytes_derives_every_unset_budget():
    plan = MemoryPlan(fit_bytes=8000)
    assert plan.device_cache_budget == 2000
    assert (plan.chunk_size, plan.chunk_budget) == ("auto", 1000)
    assert plan.decode_budget == 6000 and plan.decode_slices is None
    assert plan.decode_to_host is True


def test_fit_bytes_keeps_what_the_user_set():
    plan = MemoryPlan(fit_bytes=8000, device_cache_budget=123, chunk_size=64, decode_slices=2, decode_to_host=False)
    assert plan.device_cache_budget == 123
    assert (plan.chunk_size, plan.chunk_budget) == (64, None)
    assert (plan.decode_slices, plan.decode_budget, plan.decode_to_host) == (2, None, False)
    plan = MemoryPlan(fit_bytes=8000, chunk_size="auto", chunk_budget=10, decode_budget=50)
    assert (plan.chunk_budget, plan.decode_budget) == (10, 50)


def test_without_fit_bytes_nothing_is_derived():
    plan = MemoryPlan()
    assert plan.decode_to_host is False
    assert (plan.device_cache_budget, plan.chunk_size, plan.chunk_budget, plan.decode_budget) == (None,) * 4


@pytest.mark.parametrize("value", [0, 7, -1, 1.5, True, "1GB"])
def test_bad_fit_bytes(value):
    with pytest.raises(ValueError, match="MemoryPlan.fit_bytes must be None or an int >= 8"):
        MemoryPlan(fit_bytes=value)


# ------------------------------------------------------------------------------------------------
# fit_bytes on a pipeline
# ------------------------------------------------------------------------------------------------


def easycache():
    return lightcache.EasyCache(threshold=10.0, warmup_steps=2)  # reuses on the random tiny model


@pytest.fixture(scope="module")
def wan33():
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, num_frames=33)  # 9 latent frames: decode sets the pipeline's peak
    alone, rep0, _ = run(pipe, kwargs, easycache(), MemoryPlan(cpu_tracker=True))
    assert rep0.reuse_ratio > 0
    return pipe, kwargs, alone, rep0


def test_fit_bytes_keeps_every_stage_within_the_budget(wan33):
    """1.2x the policy-alone peak: every stage's working memory stays within N, the decode is
    sliced exactly (no tiles), and the video equals the policy alone (<= 1e-5)."""
    pipe, kwargs, alone, rep0 = wan33
    n = int(1.2 * pipeline_peak(rep0))
    out, rep, warned = run(pipe, kwargs, easycache(), MemoryPlan(fit_bytes=n, swap="on", cpu_tracker=True))
    print(f"fit_bytes={n}: peaks {rep.peak_bytes} (policy alone {rep0.peak_bytes})")
    assert not warned
    assert all(v <= n for v in rep.peak_bytes.values() if v is not None)
    assert rep.peak_bytes["decode"] <= n - n // 4  # the decode's own share
    assert pipeline_peak(rep) < pipeline_peak(rep0)
    assert [d.computed for d in rep.decisions] == [d.computed for d in rep0.decisions]
    assert (out - alone).abs().max().item() <= 1e-5


def test_fit_bytes_below_what_decode_needs_names_the_minimum(wan33):
    pipe, kwargs, _, rep0 = wan33
    with pytest.raises(ValueError, match=r"MemoryPlan.decode_budget=\d+ bytes is below .* the minimum is \d+ bytes"):
        run(pipe, kwargs, easycache(), MemoryPlan(fit_bytes=pipeline_peak(rep0) // 4, swap="on", cpu_tracker=True))


def test_fit_bytes_exceeded_warns_with_the_overshoot(wan33):
    """An explicit decode_slices keeps the decode unbudgeted: its peak then exceeds a small N, and
    the call says so once (a ResourceWarning naming fit_bytes)."""
    pipe, kwargs, alone, _ = wan33
    n = 200_000
    out, rep, warned = run(pipe, kwargs, easycache(), MemoryPlan(fit_bytes=n, decode_slices=1, cpu_tracker=True))
    assert rep.peak_bytes["decode"] > n
    assert len(warned) == 1 and "decode stage used" in warned[0] and f"fit_bytes={n}" in warned[0]
    assert f"{rep.peak_bytes['decode'] - n} over" in warned[0]
    assert (out - alone).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------
# composition with DeepCache on the video UNets
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["animatediff", "svd"])
def test_deepcache_with_swap_and_chunk(family):
    """DeepCache + swap + feature chunk: the policy's decisions and output (swap bit-exact, chunk
    <= 1e-5 relative to the output's scale) at a lower tracked denoise peak than DeepCache alone."""
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, num_inference_steps=6)
    alone, rep0, _ = run(pipe, kwargs, lightcache.DeepCache(interval=3), MemoryPlan(cpu_tracker=True))
    assert rep0.reuse_ratio > 0
    out, rep, _ = run(pipe, kwargs, lightcache.DeepCache(interval=3),
                      MemoryPlan(swap="on", chunk_size=16, cpu_tracker=True))
    print(f"{family} DeepCache: denoise peak {rep.peak_bytes['denoise']} with swap+chunk, "
          f"{rep0.peak_bytes['denoise']} alone")
    assert [d.computed for d in rep.decisions] == [d.computed for d in rep0.decisions]
    assert rep.cache_bytes["host"] > 0
    assert (out - alone).abs().max().item() <= 1e-5 * max(1.0, alone.abs().max().item())
    assert rep.peak_bytes["denoise"] < rep0.peak_bytes["denoise"]
