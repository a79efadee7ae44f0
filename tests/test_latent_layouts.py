"""Latent layouts (lightcache.models.layout): PreciseCache's trial signal and EasyCache's latent
part on every DiT family's own latent layout.

The trial forward is asserted by its shape: a forward pre-hook on the denoiser does not see it
(the engine runs the trial on the denoiser's original forward, beneath its own hook), so the hooks
sit on the first block (the tokens it is called with) or on the layer that reads the size-dependent
argument. Expected pooled sizes come from the policy's own pooling rule applied to the canonical
latent of the pipeline's first call.
"""

import math

import pytest
import torch

import lightcache
from lightcache import EasyCache, PreciseCache
from lightcache.models import adapter_for
from lightcache.models.cogvideox.layout import rotary_tables
from lightcache.models.layout import CallArguments, FramesFirstLayout, latent_part
from lightcache.policies.precisecache import downsample

from tiny_pipelines import _pil_image, _Seeder, build, denoiser, output_of

DITS = ("wan", "wan_i2v", "hunyuan_video", "cogvideox", "ltx", "easyanimate")
STEPS = 4


def run(pipe, kwargs, policy=None):
    if policy is not None:
        lightcache.enable(pipe, policy=policy)
    try:
        out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        return out, (lightcache.report(pipe) if policy is not None else None)
    finally:
        if policy is not None:
            lightcache.disable(pipe)


class Recorder:
    """Records, per call of ``module``, ``read(args, kwargs)`` (a forward pre-hook)."""

    def __init__(self, module, read):
        self.values = []
        self.handle = module.register_forward_pre_hook(
            lambda m, a, k: self.values.append(read(a, k)), with_kwargs=True
        )

    def remove(self):
        self.handle.remove()


def first_call(pipe, kwargs):
    """(args, kwargs) of the pipeline's first denoiser call (one plain step)."""
    den = denoiser(pipe)
    calls = Recorder(den, lambda a, k: (a, dict(k)))
    try:
        run(pipe, dict(kwargs, num_inference_steps=1))
    finally:
        calls.remove()
    return calls.values[0]


def pooled_grid(den, args, kwargs, factors=(2, 4, 4)):
    """The grid (T', H', W') PreciseCache pools this call's latent to, and the model's patch sizes."""
    adapter = adapter_for(den)
    layout = adapter.layout
    video = layout.to_bcthw(adapter.sample(args, kwargs), args, kwargs)
    patch = layout.patch_multiple(den)
    return tuple(downsample(video, factors, patch).shape[2:]), tuple(video.shape[2:]), patch


def tokens(grid, patch):
    return math.prod(g // p for g, p in zip(grid, patch))


# -- PreciseCache's default (trial) signal on every DiT family ------------------------------------


@pytest.mark.parametrize("mode", ["turbo", "flash"])
@pytest.mark.parametrize("family", DITS)
def test_precisecache_trial_signal_runs_on_every_dit_family(family, mode):
    """PreciseCache with its defaults (signal="trial") runs through the whole pipeline; every
    decision runs one trial forward, on the pooled grid (the first block sees the pooled token
    count once per leader call); the videos are finite and of the uncached shape."""
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    den = denoiser(pipe)
    args, kw = first_call(pipe, kwargs)
    pooled, full, patch = pooled_grid(den, args, kw)
    ref, _ = run(pipe, kwargs)
    block = adapter_for(den).blocks(den)[0]
    seen = Recorder(block, lambda a, k: (a[0] if a else k["hidden_states"]).shape[1])
    try:
        out, rep = run(pipe, kwargs, PreciseCache(mode=mode))
    finally:
        seen.remove()
    leader_calls = len({d.step for d in rep.decisions})
    warm = PreciseCache().warmup_steps(STEPS)
    assert set(seen.values) == {tokens(full, patch), tokens(pooled, patch)}
    # the signal is formed from the last warm-up step on: one trial per step from there
    assert seen.values.count(tokens(pooled, patch)) == leader_calls - (warm - 1)
    assert out.shape == ref.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("family", DITS)
def test_precisecache_trial_decisions_reuse_with_a_permissive_alpha(family):
    """alpha = 1: the first decided step has A = s_t = max s, not above it, so it reuses (the
    cached prediction); the last step is computed."""
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    _, rep = run(pipe, kwargs, PreciseCache(alpha=1.0))
    by_step = {}
    for d in rep.decisions:
        by_step.setdefault(d.step, []).append(d.computed)
    warm = PreciseCache().warmup_steps(STEPS)
    assert all(by_step[s] == [True] * len(by_step[s]) for s in range(warm))
    assert by_step[warm] == [False] * len(by_step[warm])
    assert all(by_step[STEPS - 1]) and rep.reuse_ratio > 0


# -- CogVideoX: rotary tables recomputed for the pooled grid; learned embeddings refused ---------


def cogvideox_variant(**changes):
    """The tiny CogVideoX pipeline with another transformer config (rotary embeddings need a
    head_dim whose thirds are even: 16)."""
    from diffusers import CogVideoXTransformer3DModel

    pipe, kwargs = build("cogvideox")
    cfg = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    cfg.update(num_attention_heads=2, attention_head_dim=16, **changes)
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**cfg).eval().requires_grad_(False)
    return pipe, transformer, kwargs


def test_cogvideox_rotary_tables_are_the_pipelines_for_the_full_grid():
    """The recomputation is the pipeline's own: for the call's full grid it gives exactly the
    tables the CogVideoX pipeline passed."""
    from diffusers import CogVideoXPipeline

    pipe, transformer, kwargs = cogvideox_variant(use_rotary_positional_embeddings=True)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, transformer=transformer,
                             scheduler=pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    args, kw = first_call(pipe, kwargs)
    given = kw["image_rotary_emb"]
    video = adapter_for(transformer).layout.to_bcthw(kw["hidden_states"], args, kw)
    mine = rotary_tables(transformer, tuple(video.shape[2:]))
    assert torch.equal(mine[0], given[0]) and torch.equal(mine[1], given[1])


def test_cogvideox_trial_call_gets_rotary_tables_of_the_pooled_grid():
    """With rotary embeddings the trial call's tables have one row per pooled token (they are
    the tables for the pooled grid) and PreciseCache runs and reuses."""
    from diffusers import CogVideoXPipeline

    pipe, transformer, kwargs = cogvideox_variant(use_rotary_positional_embeddings=True)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, transformer=transformer,
                             scheduler=pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    args, kw = first_call(pipe, kwargs)
    pooled, full, patch = pooled_grid(transformer, args, kw)
    rows = Recorder(transformer.transformer_blocks[0], lambda a, k: k["image_rotary_emb"][0].shape[0])
    try:
        out, rep = run(pipe, kwargs, PreciseCache(alpha=1.0))
    finally:
        rows.remove()
    assert set(rows.values) == {tokens(full, patch), tokens(pooled, patch)}
    expected = rotary_tables(transformer, pooled)[0]
    assert expected.shape[0] == tokens(pooled, patch)
    assert rep.reuse_ratio > 0 and torch.isfinite(out).all()


def test_cogvideox_learned_positional_embeddings_refuse_the_trial_at_enable():
    _, transformer, _ = cogvideox_variant(use_rotary_positional_embeddings=True,
                                          use_learned_positional_embeddings=True)
    with pytest.raises(ValueError, match=r"PreciseCache.signal='trial'.*use_learned_positional_embeddings=True"
                                         r".*use PreciseCache\(signal='input'\)"):
        lightcache.enable(transformer, policy=PreciseCache())
    lightcache.enable(transformer, policy=PreciseCache(signal="input"))  # the suggested setting applies
    lightcache.disable(transformer)


def cogvideox_i2v():
    """A tiny CogVideoX image-to-video pipeline: the image latents are concatenated on the
    channels, dim 2 of the (B, F, C, H, W) input (8 channels in, 4 out)."""
    from diffusers import CogVideoXImageToVideoPipeline

    pipe, transformer, kwargs = cogvideox_variant(in_channels=8, use_rotary_positional_embeddings=True)
    i2v = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, transformer=transformer,
                                        scheduler=pipe.scheduler)
    i2v.set_progress_bar_config(disable=True)
    return i2v, dict(kwargs, image=_pil_image(_Seeder(0), 32, 32), num_inference_steps=STEPS)


def test_easycache_on_cogvideox_i2v_reuses_on_the_channel_dim():
    """EasyCache on CogVideoX I2V: x's latent part is its first 4 channels on dim 2; a reused
    call returns that part plus the cached Δ (asserted by the call's output: the denoiser output
    the pipeline receives at a reused step is x[:, :, :4] + Δ_i)."""
    pipe, kwargs = cogvideox_i2v()
    den = pipe.transformer
    inputs = Recorder(den, lambda a, k: k["hidden_states"].clone())
    outputs = []
    handle = den.register_forward_hook(lambda m, a, k, o: outputs.append(o[0].clone()), with_kwargs=True)
    try:
        out, rep = run(pipe, kwargs, EasyCache(threshold=10.0, warmup_steps=1))
    finally:
        inputs.remove()
        handle.remove()
    computed = [d.computed for d in rep.decisions]
    assert computed[0] and not all(computed) and torch.isfinite(out).all()
    x = inputs.values
    assert x[0].shape[2] == 8 and outputs[0].shape[2] == 4
    last = None
    for t, c in enumerate(computed):
        if c:
            last = outputs[t] - x[t][:, :, :4]
        else:
            torch.testing.assert_close(outputs[t], x[t][:, :, :4] + last, rtol=0, atol=1e-6)


def test_latent_part_uses_the_layouts_channel_dim():
    x = torch.randn(2, 3, 8, 4, 4)  # (B, F, C, H, W) with image latents on the channels
    out = torch.randn(2, 3, 4, 4, 4)
    assert torch.equal(FramesFirstLayout().latent_part(x, out), x[:, :, :4])
    assert torch.equal(latent_part(x, out, channel_dim=2), x[:, :, :4])
    with pytest.raises(ValueError, match="channels on dim 1"):
        latent_part(x, out)  # dim 1 (frames) differs, not channels


def test_precisecache_on_cogvideox_i2v():
    pipe, kwargs = cogvideox_i2v()
    out, rep = run(pipe, kwargs, PreciseCache(alpha=1.0))
    assert rep.reuse_ratio > 0 and torch.isfinite(out).all()


# -- LTX-Video: packed tokens; Wan 2.2 / LTX per-token timesteps ---------------------------------


def test_ltx_layout_is_the_pipelines_packing():
    from diffusers import LTXPipeline

    layout = adapter_for(denoiser(build("ltx")[0])).layout
    video = torch.randn(2, 8, 3, 4, 5)
    packed = LTXPipeline._pack_latents(video, 1, 1)
    assert torch.equal(layout.from_bcthw(video), packed)
    assert torch.equal(layout.to_bcthw(packed, (), dict(num_frames=3, height=4, width=5)), video)
    assert torch.equal(layout.to_bcthw(packed, grid=(3, 4, 5)), video)
    with pytest.raises(ValueError, match="num_frames, height and width.*passes video_coords"):
        layout.to_bcthw(packed, (), dict(video_coords=torch.zeros(2, 3, 60)))
    with pytest.raises(ValueError, match="S = num_frames \\* height \\* width = 48 tokens"):
        layout.to_bcthw(packed, (), dict(num_frames=3, height=4, width=4))


def test_ltx_trial_call_sets_the_pooled_grid_arguments():
    pipe, kwargs = build("ltx")
    den = denoiser(pipe)
    args, kw = first_call(pipe, kwargs)
    adapter = adapter_for(den)
    pooled, full, _ = pooled_grid(den, args, kw)
    video = adapter.layout.to_bcthw(kw["hidden_states"], args, kw)
    t_args, t_kw = adapter.trial_call(den, args, kw, downsample(video, (2, 4, 4)))
    call = CallArguments(type(den).forward, t_args, t_kw)
    assert (call.get("num_frames"), call.get("height"), call.get("width")) == pooled
    assert call.get("hidden_states").shape == (video.shape[0], math.prod(pooled), video.shape[1])
    assert call.get("encoder_hidden_states") is kw["encoder_hidden_states"]  # untouched
    with torch.no_grad():
        out = den(*t_args, **dict(t_kw, return_dict=False))[0]
    assert out.shape == (video.shape[0], math.prod(pooled), den.config.out_channels)


@pytest.mark.parametrize("which", ["wan2.2-expand-timesteps", "ltx-i2v"])
def test_per_token_timesteps_are_resampled_to_the_pooled_grid(which):
    """Wan 2.2 (expand_timesteps) and LTX image-to-video pass one timestep per token of the full
    grid; the trial call's timesteps have one per pooled token."""
    if which.startswith("wan"):
        from diffusers import WanPipeline

        base, kwargs = build("wan")
        pipe = WanPipeline(**base.components, expand_timesteps=True)
        embed = lambda den: den.condition_embedder  # noqa: E731 (reads the flattened timesteps)
    else:
        from diffusers import LTXImageToVideoPipeline

        base, kwargs = build("ltx")
        pipe = LTXImageToVideoPipeline(**base.components)
        kwargs = dict(kwargs, image=_pil_image(_Seeder(0), 32, 32))
        embed = lambda den: den.time_embed  # noqa: E731
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    den = pipe.transformer
    args, kw = first_call(pipe, kwargs)
    pooled, full, patch = pooled_grid(den, args, kw)
    batch = adapter_for(den).sample(args, kw).shape[0]
    sizes = Recorder(embed(den), lambda a, k: (a[0] if a else k["timestep"]).numel())
    try:
        out, rep = run(pipe, kwargs, PreciseCache(alpha=1.0))
    finally:
        sizes.remove()
    assert set(sizes.values) == {batch * tokens(full, patch), batch * tokens(pooled, patch)}
    assert rep.reuse_ratio > 0 and torch.isfinite(out).all()


def test_easyanimate_trial_call_pools_the_inpaint_latents():
    """EasyAnimate's inpaint/control latents share the latent's grid: the trial call pools them
    to the trial's grid, and the model runs on the result."""
    from diffusers import EasyAnimateTransformer3DModel

    pipe, _ = build("easyanimate")
    cfg = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    cfg.update(in_channels=8)  # 4 latent channels + 4 inpaint channels
    torch.manual_seed(0)
    den = EasyAnimateTransformer3DModel(**cfg).eval()
    g = torch.Generator().manual_seed(0)
    x, inpaint = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 4, 3, 8, 8, generator=g)
    kw = dict(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 5, 16, generator=g),
              inpaint_latents=inpaint, return_dict=False)
    pooled = downsample(x, (2, 4, 4), adapter_for(den).layout.patch_multiple(den))
    t_args, t_kw = adapter_for(den).trial_call(den, (), kw, pooled)
    assert t_kw["hidden_states"] is pooled and t_kw["inpaint_latents"].shape == pooled.shape
    torch.testing.assert_close(t_kw["inpaint_latents"], downsample(inpaint, (2, 4, 4), (1, 2, 2)), rtol=0, atol=0)
    with torch.no_grad():
        out = den(*t_args, **t_kw)[0]
    assert out.shape == pooled.shape


def test_trial_call_keeps_positional_arguments_positional():
    """The trial call is shaped like the pipeline's: a latent passed positionally is replaced in
    place, keywords stay keywords."""
    pipe, _ = build("wan")
    den = denoiser(pipe)
    x, t = torch.randn(1, 4, 3, 4, 4), torch.tensor([1.0])
    enc = torch.randn(1, 8, 16)
    pooled = torch.randn(1, 4, 2, 2, 2)
    args, kwargs = adapter_for(den).trial_call(den, (x, t), dict(encoder_hidden_states=enc), pooled)
    assert args[0] is pooled and args[1] is t
    assert kwargs.keys() == {"encoder_hidden_states"} and kwargs["encoder_hidden_states"] is enc
    with pytest.raises(ValueError, match=r"wan: a trial call needs a \(B, C, T, H, W\) latent, got \(1, 4, 2\)"):
        adapter_for(den).trial_call(den, (x, t), {}, torch.randn(1, 4, 2))


def test_input_signal_reads_cogvideox_frames_as_bcthw(monkeypatch):
    """signal="input": F is the canonical video (B, C, T, H, W), also for CogVideoX's (B, F, C, H, W)."""
    seen = []
    real = PreciseCache._local_energy

    def spy(self, state, f):
        seen.append(tuple(f.shape))
        return real(self, state, f)

    monkeypatch.setattr(PreciseCache, "_local_energy", spy)
    pipe, kwargs = build("cogvideox")
    run(pipe, dict(kwargs, num_inference_steps=STEPS), PreciseCache(signal="input"))
    assert seen and set(seen) == {(2, 4, 3, 4, 4)}  # CogVideoX's (2, 3, 4, 4, 4) input, permuted
