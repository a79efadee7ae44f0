"""Inexact sliced decodes warn at enable time, once, saying by how much they may differ; exact ones
do not warn. Each slicer says whether it is ``exact`` for the plan's settings (the VAE's own decode,
to convolution blocking) and, if not, its ``inexact_note``.

The bounds in the notes are measured on the random-weight tiny VAEs (tests/test_memory_decode.py
for SVD and LTX; here for HunyuanVideo against the pipeline's own decode).
"""

import warnings

import pytest
import torch

import lightcache
from lightcache import MemoryPlan
from lightcache.memory.decode import InexactDecodeWarning, _Decoder, check_decode_slicing

from tiny_pipelines import build, output_of

# (family, MemoryPlan decode fields, a phrase of the note)
INEXACT = [
    ("hunyuan_video", dict(decode_slices=1), "measured up to 1.0 max abs on pixels in [0, 1]"),
    ("hunyuan_video", dict(decode_slices=3, decode_overlap=0), "equals the VAE's own temporal tiles only with decode_slices=3"),
    ("hunyuan_video", dict(decode_budget=10**9), "GroupNorms and mid-block attention span all frames"),
    ("svd", dict(decode_slices=1), "the pipeline run with decode_chunk_size=s"),
    ("svd", dict(decode_budget=10**9), "measured up to 0.51 max abs"),
    ("ltx", dict(decode_slices=1, decode_overlap=2), "below the decoder's temporal receptive field (11 latent frames)"),
]
EXACT = [
    ("wan", dict(decode_slices=1)),
    ("wan", dict(decode_budget=10**9)),
    ("ltx", dict(decode_slices=1)),
    ("ltx", dict(decode_budget=10**9)),
    ("cogvideox", dict(decode_slices=2)),
    ("hunyuan_video", dict(decode_slices=3)),  # the VAE's own temporal tiles (its default decode)
    ("text_to_video_sd", dict(decode_slices=1)),
]


def enable_warnings(pipe, memory):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightcache.enable(pipe, memory=memory)
    lightcache.disable(pipe)
    return [w for w in caught if issubclass(w.category, InexactDecodeWarning)]


@pytest.mark.parametrize("family,fields,phrase", INEXACT, ids=[f"{f}-{sorted(d)}" for f, d, _ in INEXACT])
def test_inexact_decode_warns_once_at_enable(family, fields, phrase):
    pipe, _ = build(family)
    caught = enable_warnings(pipe, MemoryPlan(**fields))
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    field = "decode_slices" if "decode_slices" in fields else "decode_budget"
    assert message.startswith(f"lightcache: MemoryPlan.{field}={fields[field]}: the sliced decode of ")
    assert "is not exact, its output may differ from the VAE's own decode" in message and phrase in message
    assert issubclass(caught[0].category, UserWarning)
    assert caught[0].filename == __file__  # points at the enable() call
    assert not _Decoder(pipe.vae, MemoryPlan(**fields)).slicer.exact


@pytest.mark.parametrize("family,fields", EXACT, ids=[f"{f}-{sorted(d)}" for f, d in EXACT])
def test_exact_decode_does_not_warn(family, fields):
    pipe, _ = build(family)
    assert enable_warnings(pipe, MemoryPlan(**fields)) == []
    slicer = _Decoder(pipe.vae, MemoryPlan(**fields)).slicer
    assert slicer.exact and slicer.inexact_note == ""


def test_each_enable_warns_again():
    pipe, _ = build("svd")
    memory = MemoryPlan(decode_slices=2)
    assert len(enable_warnings(pipe, memory)) == 1
    assert len(enable_warnings(pipe, memory)) == 1


def test_hunyuan_exactness_follows_the_vaes_own_tiling():
    """decode_slices=3 is the VAE's own temporal tiles only while its framewise decoding is on
    (off: the VAE decodes the video in one call) and its tile sizes are the defaults."""
    vae = build("hunyuan_video")[0].vae
    memory = MemoryPlan(decode_slices=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InexactDecodeWarning)
        check_decode_slicing(vae, memory)  # exact: no warning (it would raise here)
    vae.use_framewise_decoding = False
    with pytest.warns(InexactDecodeWarning, match="decodes the whole video in one call"):
        check_decode_slicing(vae, memory)
    vae.use_framewise_decoding = True
    vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = 8, 4  # own tiles: 1 + overlap 1
    assert _Decoder(vae, MemoryPlan(decode_slices=1)).slicer.exact
    assert not _Decoder(vae, memory).slicer.exact


def test_hunyuan_inexact_note_bound_is_measured():
    """The note's bound: against the pipeline's own decode, slices other than the VAE's own tiles
    differ by up to 1.0 max abs on [0, 1] pixels on the random-weight tiny VAE (measured here:
    0.79 with 1 latent frame per slice, 0.94 with 2, 1.00 with 4)."""
    pipe, kwargs = build("hunyuan_video")
    kwargs = dict(kwargs, num_frames=33, num_inference_steps=2)
    ref = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
    worst = 0.0
    for slices in (1, 2, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InexactDecodeWarning)
            lightcache.enable(pipe, memory=MemoryPlan(decode_slices=slices))
        try:
            out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        finally:
            lightcache.disable(pipe)
        worst = max(worst, (out - ref).abs().max().item())
    assert 0.9 <= worst <= 1.0
