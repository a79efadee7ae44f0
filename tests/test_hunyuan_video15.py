"""HunyuanVideo 1.5's sliced decode (lightcache/models/hunyuan_video15/decode.py): frames line up
with the whole decode; exact when each slice's context reaches the first frame; otherwise within
the bound its inexact note states. Runs in < 8 s on 2 busy cores."""

import pytest
import torch

from lightcache.memory import MemoryPlan
from lightcache.models import slicer_for

from tiny_pipelines import build


class _Parts:
    def __init__(self):
        self.parts = []

    def write(self, b0, f0, part):
        assert f0 == sum(p.shape[2] for p in self.parts)  # slices written in order, no gap
        self.parts.append(part)


def _sliced(vae, z, s, overlap):
    slicer = slicer_for(vae)(vae, MemoryPlan(decode_slices=s, decode_overlap=overlap))
    slicer.check()
    sink = _Parts()
    n = slicer.run(type(vae).decode.__get__(vae), z, {}, s, sink, 0)
    out = torch.cat(sink.parts, dim=2)
    assert n == out.shape[2] == slicer.frames_out(z, {})
    return out


@pytest.fixture(scope="module")
def vae():
    return build("hunyuan_video15")[0].vae


def test_slices_line_up_and_are_exact_when_the_context_reaches_the_first_frame(vae):
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for t in (3, 5):
        z = torch.randn(1, 4, t, 4, 4, generator=g)
        ref = vae.decode(z).sample
        for s in (1, 2):
            assert torch.allclose(_sliced(vae, z, s, t - 1), ref, atol=1e-5)  # every slice starts at frame 0
            for overlap in (None, 2):
                out = _sliced(vae, z, s, overlap)
                assert out.shape == ref.shape
                worst = max(worst, (out - ref).abs().max().item())
        assert torch.allclose(_sliced(vae, z, t, None), ref, atol=1e-5)  # one slice: the whole decode
    assert 0 < worst <= 1.8  # the bound in the slicer's inexact note


def test_overlap_below_one_is_refused(vae):
    with pytest.raises(ValueError, match="decode_overlap must be >= 1"):
        slicer_for(vae)(vae, MemoryPlan(decode_slices=1, decode_overlap=0)).check()


def test_chunked_block_gives_both_streams_padded_context_rows_included():
    """The block over sequence pieces (lightcache/models/hunyuan_video15/chunk.py) equals the block
    run whole on a pipeline's own call: video rows and every context row, the padded ones (which
    attend to nothing) too, at batch 1 and 2 (different paddings)."""
    from lightcache.memory.chunk import install_chunking
    from lightcache.memory.chunk_dit import DitChunkHook

    pipe, kwargs = build("hunyuan_video15")
    block = pipe.transformer.transformer_blocks[0]
    seen = []
    handle = block.register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    try:
        pipe(**dict(kwargs, num_inference_steps=1), generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    (args, kw), (args_u, _) = seen[:2]  # the cond and uncond calls: different context paddings
    two = tuple(torch.cat([x, y]) if isinstance(x, torch.Tensor) else x for x, y in zip(args, args_u))
    for call in (args, two):
        assert not call[3].bool().all()  # some context rows are padding
        with torch.no_grad():  # the piece path runs without autograd, as in a pipeline call
            ref = block(*call, **kw)
        hooks = install_chunking([block], 2)
        try:
            with torch.no_grad():
                out = block(*call, **kw)
            hook = next(h for h in block._diffusers_hook.hooks.values() if isinstance(h, DitChunkHook))
            assert hook.split_calls == 1 and hook.fallback_calls == 0  # the piece path ran
        finally:
            hooks.undo()
        for o, r in zip(out, ref):
            assert o.shape == r.shape and (o - r).abs().max().item() <= 1e-5
