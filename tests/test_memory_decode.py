"""Sliced latent decode for per-frame VAEs: exact, bounded decode peak, clear refusal elsewhere."""

import pytest
import torch

import lightcache
from lightcache import MemoryPlan

from tiny_pipelines import build, output_of


def run(pipe, kwargs):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("family", ["text_to_video_sd", "animatediff"])
def test_sliced_decode_is_exact_and_lowers_the_decode_peak(family):
    """Exact up to convolution blocking over a smaller batch: ≤ 1e-5 max abs on frames in [0, 1]."""
    pipe, kwargs = build(family)
    ref = run(pipe, kwargs)
    peaks = {}
    for slices in (None, 4, 1):
        lightcache.enable(pipe, policy=None, memory=MemoryPlan(decode_slices=slices, cpu_tracker=True))
        try:
            out = run(pipe, kwargs)
            peaks[slices] = lightcache.report(pipe).peak_bytes["decode"]
        finally:
            lightcache.disable(pipe)
        assert (out - ref).abs().max().item() <= 1e-5
    assert peaks[1] < peaks[4] < peaks[None]
    assert "decode" not in vars(pipe.vae)  # the wrapper is gone after disable


def test_decode_to_host_keeps_output():
    pipe, kwargs = build("text_to_video_sd")
    ref = run(pipe, kwargs)
    lightcache.enable(pipe, policy=lightcache.DeepCache(interval=1), memory=MemoryPlan(decode_slices=2, decode_to_host=True))
    try:
        out = run(pipe, kwargs)
    finally:
        lightcache.disable(pipe)
    assert out.device.type == "cpu" and (out - ref).abs().max().item() <= 1e-5


def test_unsupported_vae_is_refused_and_nothing_changes():
    pipe, kwargs = build("wan")
    with pytest.raises(ValueError, match="MemoryPlan.decode_slices.*AutoencoderKLWan"):
        lightcache.enable(pipe, memory=MemoryPlan(decode_slices=2))
    assert not hasattr(pipe.transformer, "_lightcache_session")
    assert "step" not in vars(pipe.scheduler) and "decode" not in vars(pipe.vae)


def test_unwrap_restores_an_existing_instance_attribute():
    pipe, kwargs = build("text_to_video_sd")
    mine = pipe.vae.decode  # a bound method, stored as an instance attribute by the user
    pipe.vae.decode = mine
    lightcache.enable(pipe, memory=MemoryPlan(decode_slices=2))
    assert vars(pipe.vae)["decode"] is not mine
    lightcache.disable(pipe)
    assert vars(pipe.vae)["decode"] is mine


@pytest.mark.parametrize("kwargs,match", [(dict(decode_slices=0), "decode_slices"),
                                          (dict(decode_to_host=True), "decode_to_host")])
def test_bad_decode_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryPlan(**kwargs)
