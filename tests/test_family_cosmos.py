"""Cosmos (CosmosTransformer3DModel): the denoiser under lightcache, without a pipeline.

diffusers' Cosmos pipelines cannot run offline: built without a safety checker they construct a
``CosmosSafetyChecker`` (the ``cosmos_guardrail`` package, which downloads its guardrail models),
and their ``__call__`` refuses ``safety_checker=None`` (NVIDIA Open Model License). So the family
is not in the pipeline matrix; these tests drive the tiny random-weight denoiser by hand the way
Cosmos 2.0 video-to-world calls it (conditioning mask, per-frame timesteps, padding mask, fps), one
call a step (guidance off). The padding-mask input needs torchvision, which this environment lacks:
the tiny model is built without it (``concat_padding_mask=False``). About 10 s on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

import lightcache
from lightcache.memory import MemoryPlan
from lightcache.policies.precisecache import downsample

STEPS = 6


def _model():
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    return CosmosTransformer3DModel(
        in_channels=5,  # 4 latent channels + the conditioning mask
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=2,
        mlp_ratio=2.0,
        text_embed_dim=16,
        adaln_lora_dim=4,
        max_size=(8, 16, 16),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),
        # Cosmos checkpoints concatenate a padding mask, which the model resizes with torchvision (not
        # installed here): this tiny model does without it
        concat_padding_mask=False,
        extra_pos_embed_type="learnable",
    ).eval().requires_grad_(False)


def _inputs(frames=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    cond = torch.zeros(1, 1, frames, 8, 8)
    cond[:, :, :1] = 1.0  # the first latent frame conditions the rest
    return dict(
        x=x, cond=cond, text=torch.randn(1, 8, 16, generator=g), padding=torch.zeros(1, 1, 64, 64),
    )


def _timestep(t, frames):
    ts = torch.full((1, 1, frames, 1, 1), float(t))
    ts[:, :, :1] = 0.0001  # the conditioning frame's fixed small timestep
    return ts


@torch.no_grad()
def _loop(model, inp):
    """STEPS denoiser calls with falling timesteps, the latent updated from each prediction."""
    x, frames = inp["x"].clone(), inp["x"].shape[2]
    for t in torch.linspace(0.9, 0.1, STEPS).tolist():
        out = model(hidden_states=x, timestep=_timestep(t, frames), encoder_hidden_states=inp["text"], fps=24,
                    condition_mask=inp["cond"], padding_mask=inp["padding"], return_dict=False)[0]
        x = x - 0.1 * out
    return x


def _first_query_runs(model, fn):
    """(result of fn(), full-size executions of every block's first query projection)."""
    sizes = []
    hooks = [b.attn1.to_q.register_forward_hook(lambda m, a, o: sizes.append(a[0].numel()))
             for b in model.transformer_blocks]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return out, sum(1 for n in sizes if n == max(sizes))


def test_the_pipelines_need_the_guardrail_package():
    from diffusers.utils import is_cosmos_guardrail_available

    if is_cosmos_guardrail_available():
        pytest.skip("cosmos_guardrail is installed: the pipeline's own safety checker can be built")
    from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    with pytest.raises(ImportError, match="cosmos_guardrail"):
        Cosmos2VideoToWorldPipeline(text_encoder=None, tokenizer=None, transformer=_model(), vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(), safety_checker=None)


def test_entry_and_timestep_of_a_video_to_world_call():
    model = _model()
    entry = lightcache.models.family_for(model)
    assert entry.name == "cosmos"
    assert entry.adapter.blocks(model) == list(model.transformer_blocks)
    # per-frame timesteps: the call's is the generated frames', not the conditioning frame's
    assert entry.adapter.timestep_value((), {"timestep": _timestep(0.7, 3)}) == pytest.approx(0.7)


@pytest.mark.parametrize("memory", [None, MemoryPlan(swap="on"), MemoryPlan(chunk_size=2)], ids=["none", "swap", "chunk"])
def test_lossless_easycache_gives_the_plain_result_and_disable_restores(memory):
    model, inp = _model(), _inputs()
    ref, ref_runs = _first_query_runs(model, lambda: _loop(model, inp))
    lightcache.enable(model, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0), memory=memory)
    try:
        out, runs = _first_query_runs(model, lambda: _loop(model, inp))
        rep = lightcache.report(model)
        pieces = sum(b._diffusers_hook.get_hook("lightcache.chunk.dit").split_calls
                     for b in model.transformer_blocks) if memory is not None and memory.chunk_size else 0
    finally:
        lightcache.disable(model)
    assert len(rep.decisions) == STEPS and all(d.computed for d in rep.decisions)
    if memory is not None and memory.chunk_size is not None:  # every block call ran over sequence pieces
        assert pieces == STEPS * len(model.transformer_blocks)
    if memory is None or memory.chunk_size is None:
        assert torch.equal(out, ref)
        assert runs == ref_runs == STEPS * len(model.transformer_blocks)
    else:
        assert (out - ref).abs().max().item() <= 1e-5
    assert "forward" not in vars(model) and not hasattr(model, "_lightcache_session")
    assert torch.equal(_loop(model, inp), ref)  # disabled: the plain model again


def test_reusing_easycache_skips_blocks_as_reported():
    model, inp = _model(), _inputs()
    lightcache.enable(model, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=1))
    try:
        out, runs = _first_query_runs(model, lambda: _loop(model, inp))
        rep = lightcache.report(model)
    finally:
        lightcache.disable(model)
    computed = sum(d.computed for d in rep.decisions)
    assert len(rep.decisions) == STEPS and 0 < computed < STEPS and rep.reuse_ratio > 0
    assert runs == computed * len(model.transformer_blocks)
    assert torch.isfinite(out).all()


def test_pooled_trial_call_resamples_the_mask_and_the_per_frame_timesteps():
    model, inp = _model(), _inputs(frames=4)
    adapter = lightcache.models.adapter_for(model)
    kwargs = dict(hidden_states=inp["x"], timestep=_timestep(0.5, 4), encoder_hidden_states=inp["text"], fps=24,
                  condition_mask=inp["cond"], padding_mask=inp["padding"], return_dict=False)
    pooled = downsample(inp["x"], (2, 4, 4), adapter.layout.patch_multiple(model))
    assert tuple(pooled.shape[2:]) == (2, 2, 2)
    args, kw = adapter.trial_call(model, (), kwargs, pooled)
    assert kw["hidden_states"] is pooled
    assert kw["condition_mask"].shape == (1, 1, 2, 2, 2) and kw["condition_mask"][:, :, 0].eq(1).all()
    assert kw["condition_mask"][:, :, 1].eq(0).all()
    assert kw["timestep"].flatten().tolist() == pytest.approx([0.0001, 0.5])
    with torch.no_grad():
        out = model(*args, **kw)[0]  # the model accepts the trial call
    assert out.shape == pooled.shape
