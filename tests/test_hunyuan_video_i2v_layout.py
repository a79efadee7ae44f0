"""HunyuanVideo I2V (token replace): PreciseCache's pooled trial keeps the clean image frame
(lightcache/models/hunyuan_video/layout.py). Runs in < 2 s."""

import torch

from lightcache.models import adapter_for
from lightcache.models.layout import pool_to

from tiny_pipelines import build, denoiser_calls, denoiser


def test_token_replace_trial_keeps_the_image_frame_pooled_in_space_only():
    pipe, kwargs = build("hunyuan_video_i2v")
    model = denoiser(pipe)
    adapter = adapter_for(model)
    (args, kw), = denoiser_calls(pipe, kwargs, n=1)
    x = adapter.sample(args, kw)  # (1, 4, 3, 4, 4): frame 0 is the encoded image
    pooled = pool_to(x, (2, 2, 2))
    targs, tkw = adapter.trial_call(model, args, kw, pooled)
    trial = adapter.sample(targs, tkw)
    assert trial.shape == pooled.shape
    assert torch.equal(trial[:, :, :1], pool_to(x[:, :, :1], (1, 2, 2)))  # the image alone
    assert not torch.equal(trial[:, :, :1], pooled[:, :, :1])  # pooling time would blend it
    assert torch.equal(trial[:, :, 1:], pooled[:, :, 1:])
    # the trial call runs at the pooled size
    out = model(*targs, **tkw)[0]
    assert out.shape == (1, 4, 2, 2, 2)


def _latent_concat_pipeline():
    from tiny_families import hunyuan_video_i2v
    from tiny_pipelines import _finish, _Seeder

    with torch.random.fork_rng(devices=[]):
        pipe, kwargs = hunyuan_video_i2v.build(_Seeder(0), image_condition_type="latent_concat")
    return _finish(pipe), dict(kwargs, output_type="pt")


def test_latent_concat_and_text_to_video_trials_are_the_pooled_sample():
    for pipe, kwargs in (build("hunyuan_video"), _latent_concat_pipeline()):
        model = denoiser(pipe)
        adapter = adapter_for(model)
        (args, kw), = denoiser_calls(pipe, kwargs, n=1)
        pooled = pool_to(adapter.sample(args, kw), (2, 2, 2))
        targs, tkw = adapter.trial_call(model, args, kw, pooled)
        assert torch.equal(adapter.sample(targs, tkw), pooled)


def test_latent_concat_reuses_with_both_policies():
    """The latent-concat variant (image on 2 * C + 1 input channels): EasyCache relates the input's
    latent part to the output, PreciseCache's trial runs on all channels pooled."""
    import lightcache

    pipe, kwargs = _latent_concat_pipeline()
    kwargs = dict(kwargs, num_inference_steps=4)
    ref = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    for policy in (lightcache.EasyCache(threshold=10.0, warmup_steps=1),
                   lightcache.PreciseCache(alpha=1.0, warmup_ratio=0.25)):
        lightcache.enable(pipe, policy=policy)
        try:
            out = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
            rep = lightcache.report(pipe)
        finally:
            lightcache.disable(pipe)
        assert rep.reuse_ratio > 0 and out.shape == ref.shape and torch.isfinite(out).all()
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0))
    try:
        assert torch.equal(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames, ref)
    finally:
        lightcache.disable(pipe)
