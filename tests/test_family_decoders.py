"""Sliced decode of the VAEs added with the Mochi and Allegro families, against the VAE's own
decode on latents long enough that slicing matters (the pipeline matrix's tiny videos are shorter
than Mochi's receptive field). About 5 s on 2 cores."""

from __future__ import annotations

import pytest
import torch

from lightcache import MemoryPlan
from lightcache.memory.decode import _Decoder, check_decode_slicing, plan_decode


def _decode(vae, z, memory):
    return _Decoder(vae, memory)(type(vae).decode.__get__(vae), z, {})


@pytest.fixture(scope="module")
def mochi_vae():
    from diffusers import AutoencoderKLMochi

    torch.manual_seed(0)
    # one resnet at the latent level only: a causal field of 4 latent frames, shorter than the latent
    return AutoencoderKLMochi(encoder_block_out_channels=(32,) * 4, decoder_block_out_channels=(32,) * 4,
                              layers_per_block=(0, 0, 0, 0, 1), add_attention_block=(False,) * 5).eval()


def test_mochi_receptive_radius_counts_the_causal_convs(mochi_vae):
    from lightcache.models.mochi.decode import MochiSlicer

    # block_in: 1 resnet = 2 kernel-3 causal convs, 2 latent frames of past each
    assert MochiSlicer(mochi_vae, MemoryPlan(decode_slices=1)).receptive_radius() == 4


@pytest.mark.parametrize("s", [1, 3, 8])
def test_mochi_slices_with_their_causal_context_are_exact(mochi_vae, s):
    z = torch.randn(2, 12, 8, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = mochi_vae.decode(z).sample
        out = _decode(mochi_vae, z, MemoryPlan(decode_slices=s))
    assert out.shape == ref.shape == (2, 3, 6 * 8 - 5, 16, 24)
    assert (out - ref).abs().max().item() <= 1e-5


def test_mochi_short_overlap_differs_and_warns(mochi_vae):
    z = torch.randn(1, 12, 8, 2, 2, generator=torch.Generator().manual_seed(2))
    memory = MemoryPlan(decode_slices=2, decode_overlap=1)
    with pytest.warns(UserWarning, match="below the decoder's causal temporal receptive field"):
        check_decode_slicing(mochi_vae, memory)
    with torch.no_grad():
        ref = mochi_vae.decode(z).sample
        out = _decode(mochi_vae, z, memory)
    diff = (out - ref).abs().amax(dim=(0, 1, 3, 4))
    # the first slice has the whole past: equal up to fp32 rounding (a shorter clip can take another conv
    # kernel: exactly 0 on one CPU, 1.5e-7 on another), the same tolerance as the exact slices above
    assert diff[: 6 * 2 - 5].max() <= 1e-5
    assert diff.max() > 1e-3  # later slices lack part of theirs


def test_mochi_framewise_decoding_is_refused(mochi_vae):
    mochi_vae.use_framewise_decoding = True
    try:
        with pytest.raises(ValueError, match="use_framewise_decoding=True is not supported"):
            check_decode_slicing(mochi_vae, MemoryPlan(decode_slices=1))
    finally:
        mochi_vae.use_framewise_decoding = False


@pytest.fixture(scope="module")
def allegro_vae():
    from diffusers import AutoencoderKLAllegro

    torch.manual_seed(0)
    vae = AutoencoderKLAllegro(down_block_types=("AllegroDownBlock3D",) * 3, up_block_types=("AllegroUpBlock3D",) * 3,
                               block_out_channels=(32, 32, 32), temporal_downsample_blocks=(True, True, False),
                               temporal_upsample_blocks=(True, True, False), layers_per_block=0, sample_size=16)
    vae.enable_tiling()
    vae.kernel, vae.stride = (8, 16, 16), (4, 8, 8)  # 2 x 4 x 4 latent tiles every 1 x 2 x 2
    return vae.eval()


# (1, 4, 4, 4, 7): 3 temporal x 2 spatial tiles, the last latent column in no tile (zeros, as the VAE's)
@pytest.mark.parametrize("shape", [(2, 4, 3, 4, 4), (1, 4, 4, 4, 7)], ids=["2-videos", "tiles-and-uncovered"])
@pytest.mark.parametrize("s", [1, 2, 6])
def test_allegro_tile_runs_are_bit_identical(allegro_vae, shape, s):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    allegro_vae.use_slicing = shape[0] > 1  # the VAE's own decode takes one video a call
    with torch.no_grad():
        ref = allegro_vae.decode(z).sample
        out = _decode(allegro_vae, z, MemoryPlan(decode_slices=s))
    assert out.shape == ref.shape == (shape[0], shape[2] * 4, 3, shape[3] * 4, shape[4] * 4)
    assert torch.equal(out, ref)
    if shape[4] == 7:
        assert ref[..., -4:].eq(0).all() and ref[..., :-4].ne(0).any()


def test_allegro_budget_picks_tile_runs_and_needs_tiling(allegro_vae):
    z = torch.zeros(1, 4, 3, 4, 4)
    plan = plan_decode(allegro_vae, z, MemoryPlan(decode_budget=10**9))
    assert plan.frames_per_slice == 2 and plan.tile is None  # both temporal tiles fit
    allegro_vae.use_tiling = False
    try:
        with pytest.raises(ValueError, match="enable_tiling"):
            check_decode_slicing(allegro_vae, MemoryPlan(decode_slices=1))
    finally:
        allegro_vae.use_tiling = True
