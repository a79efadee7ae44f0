"""The cache engine on tiny random-weight diffusers pipelines of every adapted family."""

import pytest
import torch

import lightcache
from lightcache.engine import BLOCK_HOOK, DENOISER_HOOK

from tiny_pipelines import FAMILIES, build, denoiser, output_of

UNETS = ("svd", "animatediff", "text_to_video_sd")
DITS = tuple(f for f in FAMILIES if f not in UNETS)


def run(pipe, kwargs, seed=0, **over):
    kw = dict(kwargs)
    kw.update(over)
    return output_of(pipe(**kw, generator=torch.Generator().manual_seed(seed)))


def lossless_policy(family):
    return lightcache.DeepCache(interval=1) if family in UNETS else lightcache.EasyCache(threshold=0.0, warmup_steps=0)


def reusing_policy(family):
    return lightcache.DeepCache(interval=3) if family in UNETS else lightcache.EasyCache(threshold=10.0, warmup_steps=2)


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    pipe, kwargs = build(request.param)
    ref = run(pipe, kwargs)
    return request.param, pipe, kwargs, ref


def test_lossless_policy_is_bit_identical_and_disable_restores(family_pipe):
    family, pipe, kwargs, ref = family_pipe
    model = denoiser(pipe)
    forward_before = model.forward
    own_forward = {id(m) for m in model.modules() if "forward" in vars(m)}
    lightcache.enable(pipe, policy=lossless_policy(family))
    try:
        out = run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    assert torch.equal(out, ref)
    assert rep.reuse_ratio == 0.0 and rep.decisions
    assert all(d.computed and d.blocks_computed == d.blocks_total for d in rep.decisions)
    # disabled: same forward, no lightcache hooks, scheduler methods unshadowed, same output
    assert model.forward == forward_before
    reg = getattr(model, "_diffusers_hook", None)
    assert reg is None or DENOISER_HOOK not in reg.hooks
    assert all(BLOCK_HOOK not in getattr(m, "_diffusers_hook").hooks for m in model.modules() if hasattr(m, "_diffusers_hook"))
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)
    assert {id(m) for m in model.modules() if "forward" in vars(m)} == own_forward, [(n, type(m).__name__) for n, m in model.named_modules() if "forward" in vars(m)]  # no forward left behind
    assert torch.equal(run(pipe, kwargs), ref)


def test_reuse_saves_block_work_and_keeps_first_and_last_steps(family_pipe):
    family, pipe, kwargs, ref = family_pipe
    model = denoiser(pipe)
    policy = reusing_policy(family)
    blocks = lightcache.adapters.adapter_for(model).blocks(model)
    calls = {"n": 0}

    # count block executions independently of lightcache: a forward hook on a submodule of each block
    def count(*_):
        calls["n"] += 1

    handles = []
    leaf_types = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm)
    for b in blocks:
        # the block's first leaf layer runs exactly once per execution of the block
        leaf = next(m for m in b.modules() if isinstance(m, leaf_types))
        handles.append(leaf.register_forward_hook(count))
    lightcache.enable(pipe, policy=policy)
    try:
        out = run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
        for h in handles:
            h.remove()
    assert torch.isfinite(out).all()
    assert rep.reuse_ratio > 0, "this policy must reuse on a 6-step run"
    assert calls["n"] == sum(d.blocks_computed for d in rep.decisions) < len(rep.decisions) * len(blocks)
    steps = sorted({d.step for d in rep.decisions})
    first = [d for d in rep.decisions if d.step == steps[0]]
    last = [d for d in rep.decisions if d.step == steps[-1]]
    assert all(d.blocks_computed == d.blocks_total for d in first)
    if family not in UNETS:  # EasyCache computes the last step; DeepCache follows its interval
        assert all(d.blocks_computed == d.blocks_total for d in last)
    # branches of one step share the decision
    for s in steps:
        assert len({d.computed for d in rep.decisions if d.step == s}) == 1


def test_two_calls_same_seed_identical_outputs_and_decisions(family_pipe):
    family, pipe, kwargs, _ = family_pipe
    lightcache.enable(pipe, policy=reusing_policy(family))
    try:
        a = run(pipe, kwargs)
        da = [(d.step, d.branch, d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
        b = run(pipe, kwargs)
        db = [(d.step, d.branch, d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
    finally:
        lightcache.disable(pipe)
    assert torch.equal(a, b)
    assert da == db


def test_enable_twice_replaces(family_pipe):
    family, pipe, kwargs, ref = family_pipe
    lightcache.enable(pipe, policy=reusing_policy(family))
    lightcache.enable(pipe, policy=lossless_policy(family))
    try:
        out = run(pipe, kwargs)
        model = denoiser(pipe)
        assert list(model._diffusers_hook.hooks).count(DENOISER_HOOK) == 1
    finally:
        lightcache.disable(pipe)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video", "text_to_video_sd"])
def test_enable_on_the_denoiser_alone(family):
    """Given only the denoiser: Wan's pipeline passes step_index through cache_context; the others
    are stepped by their timestep argument. Same outputs and decisions as enabling the pipeline."""
    pipe, kwargs = build(family)
    ref = run(pipe, kwargs)
    model = denoiser(pipe)
    policy = lossless_policy(family)
    lightcache.enable(model, policy=policy)
    try:
        assert torch.equal(run(pipe, kwargs), ref)
        lossless = [(d.step, d.branch) for d in lightcache.report(model).decisions]
        lightcache.enable(model, policy=reusing_policy(family))
        bare = run(pipe, kwargs)
        bare_decisions = [(d.step, d.branch, d.computed, d.blocks_computed) for d in lightcache.report(model).decisions]
    finally:
        lightcache.disable(model)
    n = kwargs["num_inference_steps"]
    assert sorted({s for s, _ in lossless}) == list(range(n))
    lightcache.enable(pipe, policy=reusing_policy(family))
    try:
        piped = run(pipe, kwargs)
        piped_decisions = [(d.step, d.branch, d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
    finally:
        lightcache.disable(pipe)
    if family == "wan" or family in UNETS:  # step count known or not needed: identical behaviour
        assert torch.equal(bare, piped) and bare_decisions == piped_decisions
    else:  # without the step count the last step is not forced: decisions agree up to it
        assert bare_decisions[: -2] == piped_decisions[: -2]
    assert torch.equal(run(pipe, kwargs), ref)


def test_precisecache_needs_the_step_count():
    pipe, kwargs = build("cogvideox")
    lightcache.enable(pipe.transformer, policy=lightcache.PreciseCache(mode="turbo"))
    try:
        with pytest.raises(RuntimeError, match="number of steps"):
            run(pipe, kwargs)
    finally:
        lightcache.disable(pipe.transformer)


def test_cfg_off_and_batch_two():
    pipe, kwargs = build("wan")
    for over in (dict(guidance_scale=1.0), dict(num_videos_per_prompt=2)):
        ref = run(pipe, kwargs, **over)
        lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=2))
        try:
            out = run(pipe, kwargs, **over)
            rep = lightcache.report(pipe)
        finally:
            lightcache.disable(pipe)
        assert out.shape == ref.shape
        branches = {d.branch for d in rep.decisions}
        assert branches == ({"cond"} if over.get("guidance_scale") == 1.0 else {"cond", "uncond"})
        n_steps = kwargs["num_inference_steps"]
        assert len(rep.decisions) == n_steps * len(branches)  # one decision per call
        assert 0 < rep.reuse_ratio < 1


def test_precisecache_modes_on_wan():
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, num_inference_steps=10)
    ref = run(pipe, kwargs)
    lightcache.enable(pipe, policy=lightcache.PreciseCache(mode="base", alpha=0.0, block_ratio=1.0))
    try:
        assert torch.equal(run(pipe, kwargs), ref)  # α = 0 and every block pivotal: lossless
        for mode in ("turbo", "flash"):
            lightcache.enable(pipe, policy=lightcache.PreciseCache(mode=mode))
            out = run(pipe, kwargs)
            rep = lightcache.report(pipe)
            assert torch.isfinite(out).all() and rep.reuse_ratio > 0
            if mode == "flash":
                partial = [d for d in rep.decisions if d.computed and d.blocks_computed < d.blocks_total]
                assert partial, "flash must run some computed steps on the pivotal blocks only"
    finally:
        lightcache.disable(pipe)


def test_bad_input_leaves_pipeline_untouched():
    pipe, kwargs = build("wan")
    model = denoiser(pipe)
    before = (model.forward, dict(vars(pipe.scheduler)).keys())
    with pytest.raises(TypeError, match="pipe_or_model"):
        lightcache.enable(object())
    with pytest.raises(TypeError, match="pipe_or_model"):
        lightcache.enable(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="policy"):
        lightcache.enable(pipe, policy="easycache")
    with pytest.raises(ValueError, match="DeepCache works on video UNets"):
        lightcache.enable(pipe, policy=lightcache.DeepCache())
    with pytest.raises(ValueError, match="EasyCache.threshold"):
        lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=float("nan")))
    assert (model.forward, dict(vars(pipe.scheduler)).keys()) == before
    assert not hasattr(model, "_lightcache_session")


def test_unsupported_model_names_supported_classes():
    from diffusers import UNet2DModel

    with pytest.raises(ValueError, match="WanTransformer3DModel.*register_adapter|register_adapter"):
        lightcache.enable(UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                                      down_block_types=("DownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "UpBlock2D")))


def test_report_without_enable_is_an_error():
    pipe, _ = build("wan")
    with pytest.raises(ValueError, match="not enabled"):
        lightcache.report(pipe)


@pytest.mark.parametrize("family", ["wan_i2v", "svd"])
def test_report_seconds_per_stage_and_fresh_per_call(family):
    import json

    pipe, kwargs = build(family)
    lightcache.enable(pipe, policy=None)  # no caching: the report still meters the stages
    try:
        run(pipe, kwargs)
        first = lightcache.report(pipe).as_dict()
        run(pipe, kwargs)
        second = lightcache.report(pipe).as_dict()
    finally:
        lightcache.disable(pipe)
    for rep in (first, second):
        assert all(rep["seconds"][s] > 0 for s in ("encode", "denoise", "decode")), rep["seconds"]
        assert rep["reuse_ratio"] == 0.0
        json.dumps(rep)
    # the second call's report is its own, not the sum of both calls
    assert len(second["decisions"]) == len(first["decisions"]) == kwargs["num_inference_steps"] * (
        2 if family == "wan_i2v" else 1
    )
    assert [d["step"] for d in second["decisions"]] == [d["step"] for d in first["decisions"]]


def _wan22_moe():
    """Tiny Wan 2.2-style pipeline: a high-noise expert (transformer) and a low-noise one
    (transformer_2), switched at boundary_ratio."""
    from diffusers import WanPipeline

    pipe, kwargs = build("wan")
    torch.manual_seed(1)
    expert2 = type(pipe.transformer)(**pipe.transformer.config).eval()
    moe = WanPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, scheduler=pipe.scheduler,
                      transformer=pipe.transformer, transformer_2=expert2, boundary_ratio=0.5)
    moe.set_progress_bar_config(disable=True)
    return moe, dict(kwargs, num_inference_steps=10)


def test_wan22_two_experts_each_cached_and_restored():
    pipe, kwargs = _wan22_moe()
    ref = run(pipe, kwargs)
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0))
    try:
        assert torch.equal(run(pipe, kwargs), ref)
        s1 = pipe.transformer._lightcache_session
        s2 = pipe.transformer_2._lightcache_session
        steps1 = {d.step for d in s1.report().decisions}
        steps2 = {d.step for d in s2.report().decisions}
        # the experts split the run at the boundary, each under its own session
        assert steps1 and steps2 and steps1.isdisjoint(steps2) and steps1 | steps2 == set(range(10))
        assert max(steps1) < min(steps2)
        lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=2))
        out = run(pipe, kwargs)
        rep = lightcache.report(pipe)
        assert torch.isfinite(out).all() and rep.reuse_ratio > 0
        assert [d.step for d in rep.decisions] == sorted(d.step for d in rep.decisions)
        assert len(rep.decisions) == 2 * 10  # cond + uncond per step, both experts merged
    finally:
        lightcache.disable(pipe)
    assert not hasattr(pipe.transformer_2, "_lightcache_session")
    assert "step" not in vars(pipe.scheduler)
    assert torch.equal(run(pipe, kwargs), ref)
