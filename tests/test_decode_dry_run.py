"""The budget's dry run and a simulated (meta) decode count the same bytes with their two speed-ups
as without them: the meta-op memo (lightcache._live_bytes) and diffusers' blends run one row on meta
tensors (lightcache.memory.decode._meta_blends). Reference = the plain dry run (every op run by its
meta kernel, every blend row run), compared exactly, on the tiny VAE of every family whose slicer
takes spatial tiles, at the tile sizes a budget chooses first (grids with edge tiles and blends of
several rows; for Wan, whose slicer runs tile after tile, every slice of each tile, the steady
causal cache's included). About 15 s on 2 busy cores."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lightcache import MemoryPlan
from lightcache._live_bytes import LiveBytes
from lightcache.memory import decode as D

from tiny_pipelines import build

# family: latents (larger than one tile), decode kwargs, memory fields (a valid decode_slices)
CASES = {
    "wan": ((1, 4, 3, 8, 12), {}, dict(decode_slices=1)),
    "hunyuan_video": ((1, 4, 3, 8, 12), {}, dict(decode_slices=1)),
    "ltx": ((1, 8, 3, 8, 12), {}, dict(decode_slices=1, decode_overlap=1)),
    "cogvideox": ((1, 4, 2, 8, 12), {}, dict(decode_slices=2)),
    "text_to_video_sd": ((2, 4, 8, 12), {}, dict(decode_slices=1)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    shape, extra, fields = CASES[request.param]
    vae = build(request.param)[0].vae
    return request.param, vae, torch.empty(shape, device="meta"), extra, fields


@contextlib.contextmanager
def _plain(monkeypatch):
    """The dry run without its speed-ups: every blend row, no memo."""
    with monkeypatch.context() as m:
        m.setattr(D, "_meta_blends", lambda vae: contextlib.nullcontext())
        yield


def _estimates(vae, z, extra, fields, plain, monkeypatch):
    """The dry-run counts at the smallest slice, untiled and at the two largest budget tile sizes
    (grids with edge tiles; blends of 8 to 24 rows)."""
    dec = D._Decoder(vae, MemoryPlan(**fields))
    original = type(vae).decode.__get__(vae)
    sl = dec.slicer
    tiles = sl.tile_options(z)
    assert len(tiles) >= 2, "the case must offer several tile sizes"
    s = sl.slice_options(z, extra)[0]
    out = {}
    with _plain(monkeypatch) if plain else contextlib.nullcontext():
        if plain:
            dec.memo = None
        for tile in [None] + tiles[:2]:
            out[tile] = dec.estimate(original, z, extra, s, tile)
    return out


def test_dry_run_counts_the_same_with_its_speed_ups(case, monkeypatch):
    name, vae, z, extra, fields = case
    fast = _estimates(vae, z, extra, fields, False, monkeypatch)
    plain = _estimates(vae, z, extra, fields, True, monkeypatch)
    assert fast == plain
    assert len(set(fast.values())) > 1  # the sizes differ: the comparison can tell them apart


def test_simulated_decode_counts_the_same_with_one_row_blends(case, monkeypatch):
    """The real sliced decode on meta latents (what lightcache.simulate runs), every slice of every
    tile, tiled by the VAE's own settings at the largest budget tile: peak and bytes left alive."""
    name, vae, z, extra, fields = case
    dec = D._Decoder(vae, MemoryPlan(**fields))
    original = type(vae).decode.__get__(vae)
    meta = {k: torch.empty_like(v, device="meta") for k, v in
            list(vae.named_parameters()) + list(vae.named_buffers())}
    from torch.nn.utils.stateless import _reparametrize_module

    def count(tile):
        lb = LiveBytes()
        with torch.no_grad(), _reparametrize_module(vae, meta), D._attrs(vae, dec.slicer.tile_attrs(tile)), lb:
            out = dec(original, z, extra)
            shape = tuple(out.shape)
            del out
        return lb.peak, lb.live, shape

    tile = dec.slicer.tile_options(z)[0]
    fast = count(tile)
    with _plain(monkeypatch):
        plain = count(tile)
    assert fast == plain


def test_one_row_blends_only_for_diffusers_own_methods():
    """A subclass's own blend, or one set on the instance, runs whole; the patch is undone."""
    from diffusers import AutoencoderKLWan

    class Mine(AutoencoderKLWan):
        def blend_v(self, a, b, blend_extent):
            return b

    vae = build("wan")[0].vae
    vae.__class__ = Mine
    try:
        with D._meta_blends(vae):
            assert "blend_v" not in vars(vae) and "blend_h" in vars(vae)
        assert "blend_h" not in vars(vae)
    finally:
        vae.__class__ = AutoencoderKLWan


def test_memo_answers_repeated_meta_ops_with_fresh_storages():
    """A remembered op gives tensors of the same metadata in new storages (counted again); views,
    in-place ops and non-meta tensors are not remembered."""
    memo = {}
    x = torch.empty(3, 4, device="meta")
    with LiveBytes(memo=memo) as lb:
        a = x * 2
        b = x * 2
        x.add_(1)
        v = x[1]
    assert len(memo) == 1 and a.untyped_storage() is not b.untyped_storage()
    assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype)
    assert lb.peak == 2 * 3 * 4 * 4 and v.shape == (4,)
    with LiveBytes(memo=memo):
        torch.ones(2) * 2
    assert len(memo) == 1
