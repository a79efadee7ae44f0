"""CPU reference of ``lightcache::reuse`` (x + dequant(delta)) and ``lightcache::quantize_fp8``.

Work goes in bounded slices written straight into the output, so fp32 temporaries stay O(slice)
whatever the input size and dtype (and same-dtype fp32 arithmetic takes torch's fast paths).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lightcache.reference._blocks import BLOCK_ELEMS, aligned_slices

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def reuse(x: Tensor, delta: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    """``x + delta`` (``x + delta * scale[..., None]`` for fp8) in fp32, contiguous, in x.dtype."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if scale is None:
        for xs, ds, o in aligned_slices(x, delta, out):
            o.copy_(xs.float() + ds.float())
    else:
        for xs, ds, ss, o in aligned_slices(x, delta, scale.unsqueeze(-1).expand(x.shape), out):
            t = ds.float() * ss  # dequantise: one fp32 rounding, then one for the add
            t += xs.float()
            o.copy_(t)
    return out


def quantize_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row (last dim) fp8: ``scale = amax|x| / 448`` (1 for all-zero rows), ``q = RNE(x / scale)``."""
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.ones(x.shape[:-1], dtype=torch.float32, device=x.device)
    d = x.shape[-1]
    if x.numel() == 0:  # zero-width rows count as all-zero rows
        return q, scale
    x2, q2, s1 = x.reshape(-1, d), q.view(-1, d), scale.view(-1)
    step = max(1, BLOCK_ELEMS // d)
    for r in range(0, x2.shape[0], step):
        xs = x2[r : r + step].float()
        lo, hi = torch.aminmax(xs, dim=-1)  # no |x| temporary
        amax = torch.maximum(hi, -lo)
        s = torch.where(amax == 0, 1.0, amax / FP8_MAX)
        s1[r : r + step] = s
        # |x / scale| <= 448 up to one fp32 rounding; the clamp keeps that rounding from reaching NaN
        q2[r : r + step] = torch.div(xs, s.unsqueeze(-1)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale
