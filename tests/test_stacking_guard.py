"""lightcache refuses to stack on another cache of the same denoiser (issue 14, item 7): diffusers'
enable_cache (FirstBlockCache, PAB, FasterCache, TaylorSeer, MagCache), their hooks applied
directly, and cache-dit (not installed here: its marks, as cache-dit 1.5 sets them, are simulated),
in both orders. About 6 s on 2 cores (one tiny Wan pipeline, a few 2-step calls)."""

import pytest
import torch

import lightcache
from lightcache.engine import BLOCK_HOOK, DENOISER_HOOK, session_of
from lightcache.guard import CacheStackingError, find_foreign_caches

from tiny_pipelines import build, denoiser_calls, output_of


def _configs(steps):
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    return {
        "FirstBlockCacheConfig": lambda: FirstBlockCacheConfig(threshold=0.2),
        "PyramidAttentionBroadcastConfig": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500
        ),
        "FasterCacheConfig": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500,
            attention_weight_callback=lambda _: 0.5,
        ),
        "TaylorSeerCacheConfig": lambda: TaylorSeerCacheConfig(cache_identifiers=[r"blocks\.\d+\.attn1"]),
        "MagCacheConfig": lambda: MagCacheConfig(mag_ratios=[1.0] * steps, num_inference_steps=steps),
    }


STEPS = 2


@pytest.fixture(scope="module")
def wan():
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    ref = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
    return pipe, kwargs, ref


def run(pipe, kwargs):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))


def _untouched(pipe):
    """No trace of lightcache on the pipeline."""
    model = pipe.transformer
    reg = getattr(model, "_diffusers_hook", None)
    assert session_of(model) is None
    assert reg is None or DENOISER_HOOK not in reg.hooks
    assert "set_timesteps" not in vars(pipe.scheduler) and "step" not in vars(pipe.scheduler)
    for block in model.blocks:
        breg = getattr(block, "_diffusers_hook", None)
        assert breg is None or BLOCK_HOOK not in breg.hooks


@pytest.mark.parametrize("config", list(_configs(STEPS)))
def test_enable_refuses_a_diffusers_cache(wan, config):
    pipe, kwargs, _ = wan
    pipe.transformer.enable_cache(_configs(STEPS)[config]())
    try:
        with pytest.raises(CacheStackingError, match=rf"{config}.*pipe\.transformer\.disable_cache\(\)") as info:
            lightcache.enable(pipe, policy=lightcache.EasyCache())
        assert isinstance(info.value, ValueError)
        _untouched(pipe)
    finally:
        pipe.transformer.disable_cache()
    assert find_foreign_caches(pipe.transformer, pipe) == []


def test_enable_refuses_diffusers_cache_hooks_applied_directly(wan):
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe, _, _ = wan
    model = pipe.transformer
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.2))  # no enable_cache: no _cache_config
    try:
        assert model._cache_config is None
        with pytest.raises(CacheStackingError, match=r"FirstBlockCache hook 'fbc_leader_block_hook' on pipe\.transformer\.blocks\.0"):
            lightcache.enable(pipe, policy=lightcache.EasyCache())
        _untouched(pipe)
    finally:
        for name in ("fbc_block_hook", "fbc_leader_block_hook"):
            model._diffusers_hook.remove_hook(name, recurse=True)
    assert find_foreign_caches(model, pipe) == []


def _mark_cache_dit(pipe, where):
    """Attributes cache-dit 1.5's enable_cache sets (cache_adapter.py), and disable_cache deletes:
    on the transformer _is_cached, _original_forward, _context_manager, _forward_pattern; on the
    pipeline instance _context_manager. ``where``: all of them, or one alone. Returns an undo."""
    model = pipe.transformer
    marks = {
        "transformer": [(model, "_is_cached", True), (model, "_original_forward", model.forward),
                        (model, "_context_manager", object()), (model, "_forward_pattern", "Pattern_2"),
                        (pipe, "_context_manager", object())],
        "forward_pattern": [(model, "_forward_pattern", "Pattern_2")],
        "pipe": [(pipe, "_context_manager", object())],
    }[where]
    for obj, name, value in marks:
        setattr(obj, name, value)

    def undo():
        for obj, name, _ in marks:
            delattr(obj, name)

    return undo


@pytest.mark.parametrize("where", ["transformer", "forward_pattern", "pipe"])
def test_enable_refuses_cache_dit(wan, where):
    pipe, _, _ = wan
    undo = _mark_cache_dit(pipe, where)
    try:
        with pytest.raises(CacheStackingError, match=r"cache-dit.*cache_dit\.disable_cache\(pipe\)"):
            lightcache.enable(pipe, policy=lightcache.EasyCache())
        _untouched(pipe)
    finally:
        undo()


def test_enable_after_a_refused_one_keeps_the_previous_configuration(wan):
    """Re-enabling while a foreign cache is on: refused, lightcache's first configuration stays."""
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, kwargs, ref = wan
    first = lightcache.EasyCache(threshold=0.0, warmup_steps=0)
    lightcache.enable(pipe, policy=first)
    try:
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
        with pytest.raises(CacheStackingError, match="FirstBlockCacheConfig"):
            lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0))
        assert session_of(pipe.transformer).policy is first
        pipe.transformer.disable_cache()
        assert torch.equal(run(pipe, kwargs), ref)  # threshold 0: lossless, as first enabled
    finally:
        if pipe.transformer.is_cache_enabled:
            pipe.transformer.disable_cache()
        lightcache.disable(pipe)


@pytest.mark.parametrize("config", ["FirstBlockCacheConfig", "FasterCacheConfig"])
def test_diffusers_cache_added_after_enable_is_refused_at_the_next_call(wan, config):
    pipe, kwargs, ref = wan
    policy = lightcache.EasyCache(threshold=10.0, warmup_steps=1)
    lightcache.enable(pipe, policy=policy)
    try:
        alone = run(pipe, kwargs)
        pipe.transformer.enable_cache(_configs(STEPS)[config]())
        with pytest.raises(CacheStackingError, match=rf"after lightcache\.enable\(\).*{config}.*disable_cache\(\)"):
            run(pipe, kwargs)
        assert lightcache.history(pipe)[-1].failed
        # its hooks sit above lightcache's: removing them gives lightcache alone back, exactly
        pipe.transformer.disable_cache()
        assert torch.equal(run(pipe, kwargs), alone)
    finally:
        if pipe.transformer.is_cache_enabled:
            pipe.transformer.disable_cache()
        lightcache.disable(pipe)
    assert torch.equal(run(pipe, kwargs), ref)


def test_cache_dit_added_after_enable_is_refused_at_the_next_call(wan):
    pipe, kwargs, ref = wan
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0))  # never reuses
    try:
        undo = _mark_cache_dit(pipe, "transformer")
        try:
            with pytest.raises(CacheStackingError, match=r"after lightcache\.enable\(\).*cache-dit.*_is_cached"):
                run(pipe, kwargs)
        finally:
            undo()
        assert torch.equal(run(pipe, kwargs), ref)  # a policy that never reuses: the pipeline's own output
    finally:
        lightcache.disable(pipe)


def test_bare_denoiser_refuses_a_cache_added_after_enable(wan):
    """Enabled on the denoiser alone (hand-driven with cache_context): refused at the next run."""
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, kwargs, _ = wan
    (args, kw), = denoiser_calls(pipe, kwargs, n=1)
    model = pipe.transformer
    lightcache.enable(model, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0))
    try:
        for i in range(2):
            with model.cache_context("cond", step_index=i, num_inference_steps=2):
                model(*args, **kw)
        model.enable_cache(FirstBlockCacheConfig(threshold=0.2))
        with pytest.raises(CacheStackingError, match=r"model\.disable_cache\(\)"):
            with model.cache_context("cond", step_index=0, num_inference_steps=2):  # a new run starts
                model(*args, **kw)
    finally:
        if model.is_cache_enabled:
            model.disable_cache()
        lightcache.disable(model)


def test_public_names():
    assert lightcache.CacheStackingError is CacheStackingError and issubclass(CacheStackingError, ValueError)
    assert {"history", "CacheStackingError"} <= set(lightcache.__all__)


def test_a_memory_plan_alone_may_sit_beside_a_diffusers_cache(wan):
    """policy=None caches nothing: the bench meters a peer's memory this way, in both orders."""
    pipe, kwargs, _ = wan
    pipe.transformer.enable_cache(_configs(STEPS)["FirstBlockCacheConfig"]())
    try:
        peer = run(pipe, kwargs)
        lightcache.enable(pipe, memory=lightcache.MemoryPlan(cpu_tracker=True))
        try:
            assert torch.equal(run(pipe, kwargs), peer)
            assert lightcache.report(pipe).peak_bytes["denoise"] > 0
        finally:
            lightcache.disable(pipe)
    finally:
        pipe.transformer.disable_cache()
