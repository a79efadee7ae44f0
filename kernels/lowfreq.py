"""Triton: low-frequency energy of a difference, ‖LP(a − b)‖₂, by partial DFT.

One program per (frame, u-tile, v-tile). It streams (BLOCK_H × BLOCK_W) tiles of a and b, forms the
difference in registers and applies the kept-frequency DFT as matrix products (tl.dot, fp32 with
``input_precision="ieee"``: TF32 would lose the 1e-4 accuracy):
    Yc = d·Cw, Ys = d·Sw            (per row tile, along W: v = 0..K, padded to >= 16)
    Xr += Chᵀ·Yc − Shᵀ·Ys,  Xi += Chᵀ·Ys + Shᵀ·Yc      (along H: signed u in [−K, K])
then writes Σ weight·(Xr² + Xi²) for its frame, with weight = circle mask × conjugate-symmetry
multiplicity (see lightcache.reference.lowfreq). A second one-program kernel adds the per-frame
energies in a fixed order (fp64), divides by H·W and takes the square root: deterministic, on device.
Each input element is read once (once per u/v tile when the radius needs more than one tile),
the full spectrum and a − b are never formed. Any H, W work: tiles are masked at the edges.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightcache.kernels._launch import next_pow2, on_device
from lightcache.reference.lowfreq import lowfreq_basis

# Tile sizes from ptxas on sm_90 (fp32 FMA dots are register-hungry): with 8 warps, 16x32 input
# tiles and frequency tiles up to 64 (u) x 32 (v) use <= 194 registers and never spill; a 64x64
# frequency tile or 4 warps spills. Wider radii take more (u, v) tiles instead.
MAX_U_TILE = 64
MAX_V_TILE = 32
NUM_WARPS = 8
FINAL_BLOCK = 1024


@triton.jit
def _lowfreq_kernel(
    a_ptr, b_ptr, cht_ptr, sht_ptr, cw_ptr, sw_ptr, wm_ptr, out_ptr,
    H, W, sa_n, sa_h, sa_w, sb_n, sb_h, sb_w, NV_P,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    f = tl.program_id(0).to(tl.int64)
    tu = tl.program_id(1)
    tv = tl.program_id(2)
    u = tu * BLOCK_U + tl.arange(0, BLOCK_U)
    v = tv * BLOCK_V + tl.arange(0, BLOCK_V)
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    a_base = a_ptr + f * sa_n
    b_base = b_ptr + f * sb_n
    xr = tl.zeros((BLOCK_U, BLOCK_V), dtype=tl.float32)
    xi = tl.zeros((BLOCK_U, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        rows = h0 + hh
        rm = rows < H
        yc = tl.zeros((BLOCK_H, BLOCK_V), dtype=tl.float32)
        ys = tl.zeros((BLOCK_H, BLOCK_V), dtype=tl.float32)
        for w0 in range(0, W, BLOCK_W):
            cols = w0 + ww
            cm = cols < W
            m = rm[:, None] & cm[None, :]
            # in-frame offsets in 64 bits: row * row stride passes 2**31 in frames (or frame views of
            # wider tensors) spanning 2**31 elements
            r64 = rows.to(tl.int64)[:, None]
            c64 = cols.to(tl.int64)[None, :]
            ta = tl.load(a_base + r64 * sa_h + c64 * sa_w, mask=m, other=0.0).to(tl.float32)
            tb = tl.load(b_base + r64 * sb_h + c64 * sb_w, mask=m, other=0.0).to(tl.float32)
            d = ta - tb
            boffs = cols[:, None] * NV_P + v[None, :]
            cw = tl.load(cw_ptr + boffs, mask=cm[:, None], other=0.0)
            sw = tl.load(sw_ptr + boffs, mask=cm[:, None], other=0.0)
            yc = tl.dot(d, cw, yc, input_precision="ieee")
            ys = tl.dot(d, sw, ys, input_precision="ieee")
        hoffs = u[:, None] * H + rows[None, :]
        ch = tl.load(cht_ptr + hoffs, mask=rm[None, :], other=0.0)
        sh = tl.load(sht_ptr + hoffs, mask=rm[None, :], other=0.0)
        xr = tl.dot(ch, yc, xr, input_precision="ieee")
        xr = tl.dot(-sh, ys, xr, input_precision="ieee")
        xi = tl.dot(ch, ys, xi, input_precision="ieee")
        xi = tl.dot(sh, yc, xi, input_precision="ieee")
    wm = tl.load(wm_ptr + u[:, None] * NV_P + v[None, :])
    e = tl.sum(tl.sum(wm * (xr * xr + xi * xi), axis=1), axis=0)
    tl.store(out_ptr + (f * tl.num_programs(1) + tu) * tl.num_programs(2) + tv, e)


@triton.jit(do_not_specialize=["count", "hw"])
def _finish_kernel(part_ptr, out_ptr, count, hw, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for p0 in range(0, count, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + p, mask=p < count, other=0.0).to(tl.float64)
    tl.store(out_ptr, tl.sqrt(tl.sum(acc, axis=0) / hw.to(tl.float64)).to(tl.float32))


# Device copies of the bases, least recently used first. Bounded in entries and bytes (the oldest
# are dropped first; the one just built always stays), and freed by clear_basis_cache(): a process
# that sees many frame sizes or devices does not keep them all.
_BASES: "OrderedDict[tuple, tuple]" = OrderedDict()
MAX_CACHED_BASES = 32
MAX_CACHED_BYTES = 64 << 20


def _nbytes(entry: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in entry)


def basis_cache_bytes() -> int:
    """Device bytes the cached bases hold now."""
    return sum(_nbytes(e) for e in _BASES.values())


def clear_basis_cache(device=None) -> None:
    """Free the cached device bases: all of them, or those on ``device`` ("cuda" without an index:
    every CUDA device)."""
    if device is None:
        _BASES.clear()
        return
    want = torch.device(device)

    def matches(name: str) -> bool:
        d = torch.device(name)
        return d.type == want.type and (want.index is None or d.index == want.index)

    for key in [k for k in _BASES if matches(k[3])]:
        del _BASES[key]


def _bases(h: int, w: int, radius_ratio: float, device: torch.device, block_u: int, block_v: int):
    """Zero-padded fp32 bases on ``device`` (built in float64, cached): chᵀ/shᵀ (NU_P, H),
    cw/sw (W, NV_P), weight (NU_P, NV_P)."""
    key = (h, w, radius_ratio, str(device), block_u, block_v)
    hit = _BASES.get(key)
    if hit is not None:
        _BASES.move_to_end(key)
        return hit
    ch, sh, cw, sw, weight = lowfreq_basis(h, w, radius_ratio)
    nu, nv = weight.shape
    nu_p, nv_p = triton.cdiv(nu, block_u) * block_u, triton.cdiv(nv, block_v) * block_v

    def pad(t, r, c):
        out = torch.zeros(r, c, dtype=torch.float64)
        out[: t.shape[0], : t.shape[1]] = t
        return out.to(device=device, dtype=torch.float32)

    hit = (pad(ch.t(), nu_p, h), pad(sh.t(), nu_p, h), pad(cw, w, nv_p), pad(sw, w, nv_p), pad(weight, nu_p, nv_p))
    _BASES[key] = hit
    total = basis_cache_bytes()
    while len(_BASES) > 1 and (len(_BASES) > MAX_CACHED_BASES or total > MAX_CACHED_BYTES):
        _, old = _BASES.popitem(last=False)
        total -= _nbytes(old)
    return hit


def _frames(t: Tensor, h: int, w: int) -> Tensor:
    try:
        return t.view(-1, h, w)  # any strides within a frame are fine; frames need one stride
    except RuntimeError:
        return t.reshape(-1, h, w)


def lowfreq_energy(
    a: Tensor, b: Tensor, radius_ratio: float = 0.2, *, block_h: int = 16, block_w: int = 32
) -> Tensor:
    """fp32 0-d ‖LP(a − b)‖₂ over all frames of ``(..., H, W)`` (see lightcache.ops.lowfreq_energy)."""
    h, w = a.shape[-2:]
    out = torch.zeros((), dtype=torch.float32, device=a.device)
    if a.numel() == 0:
        return out
    a3, b3 = _frames(a, h, w), _frames(b, h, w)
    frames = a3.shape[0]
    nu, nv = lowfreq_basis(h, w, float(radius_ratio))[4].shape
    # tl.dot needs every dimension >= 16
    block_u = max(16, min(MAX_U_TILE, next_pow2(nu)))
    block_v = max(16, min(MAX_V_TILE, next_pow2(nv)))
    block_h = max(16, min(block_h, next_pow2(h)))
    block_w = max(16, min(block_w, next_pow2(w)))
    cht, sht, cwp, swp, wm = _bases(h, w, float(radius_ratio), a.device, block_u, block_v)
    grid = (frames, cht.shape[0] // block_u, cwp.shape[1] // block_v)
    part = torch.empty(grid, dtype=torch.float32, device=a.device)
    with on_device(a):
        _lowfreq_kernel[grid](
            a3, b3, cht, sht, cwp, swp, wm, part,
            h, w, *a3.stride(), *b3.stride(), cwp.shape[1],
            BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_U=block_u, BLOCK_V=block_v, num_warps=NUM_WARPS,
        )  # fmt: skip
        _finish_kernel[(1,)](part, out, part.numel(), h * w, BLOCK=FINAL_BLOCK, num_warps=4)
    return out
