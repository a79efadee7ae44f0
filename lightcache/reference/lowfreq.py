"""CPU reference of ``lightcache::lowfreq_energy``: ‖LP(a − b)‖₂ by partial DFT.

Only the kept frequencies are computed: along W the basis holds v = 0..K (real input: X(−u, −v) is
the conjugate of X(u, v), so v > 0 terms count twice, except the Nyquist column of an even W), along
H the signed u in [−K, K]; the circle mask u² + v² ≤ r² is applied to the small (u, v) result. The
difference is formed per bounded slice of frames (or of rows, for frames larger than the slice), so
memory stays O(slice) and a − b never exists for the whole tensor. Forming the difference before the
transform (rather than transforming a and b separately and subtracting) keeps fp32 accurate when
a ≈ b, which is exactly when this metric is small: the error is relative to ‖a − b‖, not ‖a‖.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lightcache.reference._blocks import BLOCK_ELEMS, frame_slices


def kept_frequencies(h: int, w: int, radius_ratio: float):
    """``(us, vs, weight)``: signed row frequencies, non-negative column frequencies, and the
    (len(us), len(vs)) float64 weight = circle mask × conjugate-symmetry multiplicity (0, 1 or 2)."""
    r = radius_ratio * min(h, w)
    k = math.floor(r)
    # fftshift convention: signed frequencies -(n//2) .. n-1-n//2 (the Nyquist of an even n is negative)
    us = torch.arange(max(-k, -(h // 2)), min(k, h - 1 - h // 2) + 1, dtype=torch.int64)
    vs = torch.arange(0, min(k, w // 2) + 1, dtype=torch.int64)
    mult = torch.full((len(vs),), 2.0, dtype=torch.float64)
    mult[0] = 1.0
    if w % 2 == 0 and len(vs) and vs[-1] == w // 2:
        mult[-1] = 1.0  # the even-W Nyquist column is its own mirror
    inside = (us[:, None] ** 2 + vs[None, :] ** 2).to(torch.float64) <= r * r
    return us, vs, inside.to(torch.float64) * mult[None, :]


def _cos_sin(n: int, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """(n, len(freqs)) float64 cos/sin of 2π f k / n; (f·k) mod n keeps the argument small."""
    k = torch.arange(n, dtype=torch.int64)
    ang = torch.remainder(k[:, None] * freqs[None, :], n).to(torch.float64) * (2 * math.pi / n)
    return torch.cos(ang), torch.sin(ang)


@functools.lru_cache(maxsize=32)
def lowfreq_basis(h: int, w: int, radius_ratio: float):
    """float64 ``(ch, sh, cw, sw, weight)``: ch/sh (H, nu), cw/sw (W, nv), weight (nu, nv)."""
    us, vs, weight = kept_frequencies(h, w, radius_ratio)
    ch, sh = _cos_sin(h, us)
    cw, sw = _cos_sin(w, vs)
    return ch, sh, cw, sw, weight


@functools.lru_cache(maxsize=32)
def _basis_f32(h: int, w: int, radius_ratio: float):
    ch, sh, cw, sw, weight = lowfreq_basis(h, w, radius_ratio)
    rows = torch.cat([ch, sh], dim=1).t().contiguous().float()  # (2nu, H) = [Ch | Sh]ᵀ
    cols = torch.cat([cw, sw], dim=1).float()  # (W, 2nv) = [Cw | Sw]
    return rows, cols, weight


def lowfreq_energy(a: Tensor, b: Tensor, radius_ratio: float = 0.2) -> Tensor:
    h, w = a.shape[-2:]
    if a.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=a.device)
    rows, cols, weight = _basis_f32(h, w, float(radius_ratio))
    rows, cols, weight = rows.to(a.device), cols.to(a.device), weight.to(a.device)
    nu, nv = weight.shape
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for fa, fb in frame_slices(a, b):
        f = fa.shape[0]
        step = h if f * h * w <= BLOCK_ELEMS else max(1, BLOCK_ELEMS // (f * w))
        z = None
        for h0 in range(0, h, step):
            d = fa[:, h0 : h0 + step].float() - fb[:, h0 : h0 + step].float()  # (f, hb, W), bounded
            zz = rows[:, h0 : h0 + step] @ (d @ cols)  # (f, 2nu, 2nv): DFT along W, then along H
            z = zz if z is None else z.add_(zz)
        xr = z[:, :nu, :nv] - z[:, nu:, nv:]  # Ch'Yc - Sh'Ys
        xi = z[:, :nu, nv:] + z[:, nu:, :nv]  # Ch'Ys + Sh'Yc (sign irrelevant for |X|²)
        total += ((xr.square() + xi.square()).double() * weight).sum()
    return torch.sqrt(total / (h * w)).float()
