"""ConsisID's denoiser under lightcache without its pipeline (diffusers builds ConsisIDPipeline
only with OpenCV installed, so the pipeline matrix skips the family where it is missing): its
registry entry, the CogVideoX chunk spec on its blocks (face inputs given as tensors), and the
pooled trial call's rotary tables. About 4 s on 2 cores."""

from __future__ import annotations

import pytest
import torch

import lightcache
from lightcache.memory import MemoryPlan
from lightcache.memory.chunk_dit import DitChunkHook
from lightcache.models.consisid.layout import rotary_tables
from lightcache.policies.precisecache import downsample


@pytest.fixture(scope="module")
def model():
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(0)
    return ConsisIDTransformer3DModel(
        num_attention_heads=3, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True, is_train_face=True, cross_attn_interval=1,
        cross_attn_dim_head=4, cross_attn_num_heads=2, LFE_id_dim=8, LFE_vit_dim=8, LFE_depth=1, LFE_dim_head=4,
        LFE_num_heads=2, LFE_num_id_token=2, LFE_num_querie=4, LFE_output_dim=32, LFE_ff_mult=1, LFE_num_scale=1,
    ).eval().requires_grad_(False)


def _call(model, frames=3, size=8):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, frames, 8, size, size, generator=g),
        encoder_hidden_states=torch.randn(1, 8, 16, generator=g),
        timestep=torch.tensor([500]),
        image_rotary_emb=rotary_tables(model, (frames, size, size)),
        id_cond=torch.randn(1, 8, generator=g),
        id_vit_hidden=[torch.randn(1, 5, 8, generator=g)],
        return_dict=False,
    )


def test_entry_covers_the_blocks_with_cogvideox_chunking(model):
    from lightcache.models.cogvideox.chunk import CogVideoXChunking

    entry = lightcache.models.family_for(model)
    assert entry.name == "consisid"
    assert all(isinstance(lightcache.models.chunking_for(b), CogVideoXChunking) for b in model.transformer_blocks)


@torch.no_grad()  # the piece path runs without autograd, as in a pipeline call
def test_chunked_blocks_give_the_unchunked_output(model):
    kwargs = _call(model)
    ref = model(**kwargs)[0]
    lightcache.enable(model, memory=MemoryPlan(chunk_size=2))
    try:
        out = model(**kwargs)[0]
        hooks = [b._diffusers_hook.get_hook("lightcache.chunk.dit") for b in model.transformer_blocks]
        assert all(isinstance(h, DitChunkHook) and h.split_calls == 1 for h in hooks)  # the piece path ran
    finally:
        lightcache.disable(model)
    assert (out - ref).abs().max().item() <= 1e-5


def test_rotary_tables_are_cogvideox_1_0s(model):
    from diffusers import CogVideoXTransformer3DModel

    from lightcache.models.cogvideox.layout import rotary_tables as cog_tables

    cog = CogVideoXTransformer3DModel(num_attention_heads=3, attention_head_dim=16, in_channels=8, out_channels=4,
                                      text_embed_dim=16, num_layers=1, sample_width=4, sample_height=4,
                                      patch_size=2, use_rotary_positional_embeddings=True)
    for grid in [(3, 8, 8), (2, 4, 6)]:
        for a, b in zip(rotary_tables(model, grid), cog_tables(cog, grid)):
            assert torch.equal(a, b)


@torch.no_grad()
def test_pooled_trial_call_runs_with_the_face_inputs(model):
    adapter = lightcache.models.adapter_for(model)
    kwargs = _call(model, frames=4)
    video = adapter.layout.to_bcthw(kwargs["hidden_states"])
    pooled = downsample(video, (2, 4, 4), adapter.layout.patch_multiple(model))
    args, kw = adapter.trial_call(model, (), kwargs, pooled)
    assert kw["image_rotary_emb"][0].shape[0] == 2 * 1 * 1  # pooled (T, H, W) = (2, 2, 2): 2 x 1 x 1 patches
    out = model(*args, **kw)[0]
    assert out.shape == (1, 2, 4, 2, 2)
    assert kw["id_cond"] is kwargs["id_cond"]
