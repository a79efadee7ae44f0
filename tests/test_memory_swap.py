"""Asynchronous cache swapping (MemoryPlan(swap="on")) through the CPU ring buffer."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lightcache
from lightcache import MemoryPlan
from lightcache.memory import CacheBudgetError, SwapStore

from conftest import LOW_MEMLOCK_PREAMBLE
from tiny_pipelines import build, output_of

POLICIES = {
    "easycache": ("wan", lambda: lightcache.EasyCache(threshold=10.0, warmup_steps=2)),
    "precise_flash": ("wan", lambda: lightcache.PreciseCache(mode="flash")),
    "precise_flash_hunyuan": ("hunyuan_video", lambda: lightcache.PreciseCache(mode="flash")),
    "deepcache": ("text_to_video_sd", lambda: lightcache.DeepCache(interval=3)),
}


def run(pipe, kwargs, seed=0):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(seed)))


def run_with(pipe, kwargs, policy, memory=None):
    lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        out = run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    return out, rep


@pytest.fixture(scope="module", params=sorted(POLICIES))
def case(request):
    family, make_policy = POLICIES[request.param]
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, num_inference_steps=10)
    ref, ref_rep = run_with(pipe, kwargs, make_policy())
    assert ref_rep.reuse_ratio > 0
    return pipe, kwargs, make_policy, ref, ref_rep


def test_sync_store_is_bit_identical_and_reaches_the_rings(case):
    pipe, kwargs, make_policy, ref, ref_rep = case
    lightcache.enable(pipe, policy=make_policy(), memory=MemoryPlan(swap="on", sync_store=True))
    try:
        out = run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    assert torch.equal(out, ref)
    assert [d.computed for d in rep.decisions] == [d.computed for d in ref_rep.decisions]
    store = SwapStore(MemoryPlan(swap="on", sync_store=True), torch.device("cpu"))
    store.put("x", torch.arange(6.0))
    assert all(r.sync_store for rs in store._rings.values() for r in rs)
    assert torch.equal(store.load("x"), torch.arange(6.0))
    store.clear()


def test_swap_is_bit_identical_and_moves_cache_to_host(case):
    pipe, kwargs, make_policy, ref, ref_rep = case
    out, rep = run_with(pipe, kwargs, make_policy(), MemoryPlan(swap="on"))
    assert torch.equal(out, ref)
    assert [(d.step, d.branch, d.computed, d.blocks_computed) for d in rep.decisions] == [
        (d.step, d.branch, d.computed, d.blocks_computed) for d in ref_rep.decisions
    ]
    # without swap every cached feature sits on the device; with swap the host holds them
    assert ref_rep.cache_bytes["host"] == 0 and ref_rep.cache_bytes["device"] > 0
    assert rep.cache_bytes["host"] == ref_rep.cache_bytes["device"]
    # on the device only what is being reused: at most one fetched and one prefetched feature
    assert rep.cache_bytes["device"] <= min(ref_rep.cache_bytes["device"], 2 * rep.cache_bytes["largest_feature"])


@pytest.mark.parametrize("dtype,max_rel,mean_rel", [("bf16", 2e-2, 1e-2), ("fp8", 2e-1, 1e-1)])
def test_compressed_storage_within_tolerance(case, dtype, max_rel, mean_rel):
    """Stated tolerance on the final latents, relative to the policy with exact storage:
    bf16 max|Δ| ≤ 2e-2·max|ref| and mean|Δ| ≤ 1e-2·mean|ref|; fp8 2e-1 and 1e-1 (errors of reused
    features add up over consecutive reused steps; measured worst case: EasyCache reusing 7 of 10
    steps, fp8 0.11 / 0.05). The per-feature bounds are asserted in test_compress_roundtrip_bounds."""
    pipe, kwargs, make_policy, _, ref_rep = case
    kwargs = dict(kwargs, output_type="latent")
    ref, _ = run_with(pipe, kwargs, make_policy())
    for swap in ("on", "off"):
        out, rep = run_with(pipe, kwargs, make_policy(), MemoryPlan(swap=swap, cache_dtype=dtype))
        err = (out - ref).abs()
        assert err.max() <= max_rel * ref.abs().max()
        assert err.mean() <= mean_rel * ref.abs().mean()
        held = rep.cache_bytes["host" if swap == "on" else "device"]
        assert held < ref_rep.cache_bytes["device"]  # narrower storage


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_compress_roundtrip_bounds(dtype):
    from lightcache.memory.store import DeviceStore

    x = torch.randn(3, 64, 48) * torch.logspace(-2, 2, 48)
    store = SwapStore(MemoryPlan(swap="on", cache_dtype=dtype), torch.device("cpu"))
    dev = DeviceStore(storage_dtype=MemoryPlan(cache_dtype=dtype).storage_dtype)
    store.put("k", x)
    dev.put("k", x)
    got = store.load("k")
    assert torch.equal(got, dev.load("k"))  # the same compression whether swapped or not
    err = (got - x).abs()
    if dtype == "bf16":
        assert (err <= 2**-8 * x.abs()).all()
    else:  # e4m3: half a step ≤ 2^-4 relative in the normal range; per-row ≤ amax/28 overall
        amax = x.abs().amax(-1, keepdim=True)
        assert (err <= amax / 28).all()
    store.clear()


def test_device_cache_budget_is_never_exceeded():
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, num_inference_steps=10)
    policy = lightcache.PreciseCache(mode="flash")
    ref, _ = run_with(pipe, kwargs, policy)
    _, rep = run_with(pipe, kwargs, policy, MemoryPlan(swap="on"))
    feature = rep.cache_bytes["largest_feature"]
    assert feature > 0 and rep.cache_bytes["device"] >= feature
    for k in (1, 2, 3):
        out, rep = run_with(pipe, kwargs, policy, MemoryPlan(swap="on", device_cache_budget=k * feature))
        assert torch.equal(out, ref)
        assert 0 < rep.cache_bytes["device"] <= k * feature  # high-water mark over the whole run


def test_prefetch_respects_budget_and_keeps_room_for_one_fetch():
    feats = {k: torch.randn(4, 64) for k in "abc"}
    size = feats["a"].nbytes
    store = SwapStore(MemoryPlan(swap="on", device_cache_budget=3 * size), torch.device("cpu"))
    for k, v in feats.items():
        store.put(k, v)
    for k in "abc":
        store.prefetch(k)
    assert store.device_bytes == 2 * size  # c would leave no room for an on-demand fetch
    for k in "cba":
        assert torch.equal(store.get(k)[0], feats[k])
        assert store.device_peak <= 3 * size
    assert store.device_bytes == 0
    store.clear()


def test_budget_below_one_feature_is_a_clear_error():
    pipe, kwargs = build("wan")
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=2),
                      memory=MemoryPlan(swap="on", device_cache_budget=16))
    try:
        with pytest.raises(ValueError, match=r"device_cache_budget.*minimum"):
            run(pipe, kwargs)
    finally:
        lightcache.disable(pipe)


def test_host_budget_exceeded_is_a_clear_error():
    pipe, kwargs = build("wan")
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=2),
                      memory=MemoryPlan(swap="on", host_cache_budget=64))
    try:
        with pytest.raises(CacheBudgetError, match="host_cache_budget"):
            run(pipe, kwargs)
    finally:
        lightcache.disable(pipe)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(swap="sometimes"), "MemoryPlan.swap"),
        (dict(cache_dtype="int8"), "MemoryPlan.cache_dtype"),
        (dict(cache_dtype=torch.float16), "MemoryPlan.cache_dtype"),
        (dict(device_cache_budget=-1), "MemoryPlan.device_cache_budget"),
        (dict(host_cache_budget=1.5), "MemoryPlan.host_cache_budget"),
        (dict(pinned="maybe"), "MemoryPlan.pinned"),
        (dict(sync_store="yes"), "MemoryPlan.sync_store"),
    ],
)
def test_bad_plan_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryPlan(**kwargs)


def test_memory_must_be_a_plan():
    pipe, _ = build("wan")
    with pytest.raises(TypeError, match="memory"):
        lightcache.enable(pipe, memory={"swap": True})


_PINNED_REFUSED = LOW_MEMLOCK_PREAMBLE.format(limit=4096) + textwrap.dedent(
    """
    import sys, warnings
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import lightcache
    from lightcache import MemoryPlan, _ext
    from lightcache.ring import PinnedMemoryError, PinnedMemoryWarning
    from tiny_pipelines import build, output_of
    if _ext.C.probe_pinned(1 << 16)[0]:
        print("SKIP: mlock still succeeds under the lowered limit"); sys.exit(0)
    pipe, kw = build("wan")
    def go(memory):
        lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=2), memory=memory)
        try:
            return output_of(pipe(**kw, generator=torch.Generator().manual_seed(0)))
        finally:
            lightcache.disable(pipe)
    ref = go(None)
    try:
        go(MemoryPlan(swap="on", pinned="require")); print("FAIL: require did not raise"); sys.exit(1)
    except PinnedMemoryError as e:
        print("REQUIRE:", str(e)[:80])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = go(MemoryPlan(swap="on", pinned="prefer"))
    assert any(issubclass(x.category, PinnedMemoryWarning) for x in w)
    assert torch.equal(out, ref)
    print("OK")
    """
)


def test_pinned_refused_falls_back_with_warning_same_output():
    code = _PINNED_REFUSED.replace("{tests!r}", repr(str(Path(__file__).parent)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)
    if "SKIP:" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REQUIRE:" in proc.stdout and proc.stdout.rstrip().endswith("OK")


def test_timeline_records_every_stage_invocation_and_plots(tmp_path):
    import json

    from lightcache.memory.meter import plot_timeline

    pipe, kwargs = build("wan")
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=2),
                      memory=MemoryPlan(swap="on", cpu_tracker=True))
    try:
        run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    stages = [t["stage"] for t in rep.timeline]
    n_calls = len(rep.decisions)
    assert stages.count("denoise") == n_calls and stages[-1] == "decode"
    assert all(t["end_s"] >= t["start_s"] for t in rep.timeline)
    assert all(t["peak_bytes"] is not None for t in rep.timeline)  # metered by the CPU tracker
    # swapped cache: host bytes appear after the first computed call, device stays at 0 between calls
    den = [t for t in rep.timeline if t["stage"] == "denoise"]
    assert den[-1]["cache_host_bytes"] > 0 and all(t["cache_device_bytes"] == 0 for t in den)
    json.dumps(rep.as_dict())
    plot_timeline(rep, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 0


def test_a_full_rings_last_source_is_released_by_the_next_rings_store():
    """Each ring keeps its last stored source until an operation finds the copy complete; once a
    ring is full the store moves to another ring, and operations there poll the full one too, so
    the full ring's last source is not held for a whole step (at real size: one residual per ring,
    found by the meta-device simulation)."""
    from lightcache.memory.swap import SLOTS_PER_RING

    store = SwapStore(MemoryPlan(swap="on"), torch.device("cpu"))
    for i in range(SLOTS_PER_RING):  # fills the first ring
        store.put(("f", i), torch.full((64,), float(i)))
    (first,) = store._rings[64 * 4]
    assert any(first._inflight)  # holds its last stored source (CPU copies are done at once)
    store.put(("f", SLOTS_PER_RING), torch.zeros(64))  # goes to a second ring
    assert len(store._rings[64 * 4]) == 2
    assert not any(first._inflight)  # the full ring was polled: its source is released
    got, _ = store.get(("f", SLOTS_PER_RING - 1))
    assert torch.equal(got, torch.full((64,), float(SLOTS_PER_RING - 1)))
    store.close()
