"""CPU reference of ``lightcache::reuse`` (x + dequant(delta)) and ``lightcache::quantize_fp8``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def reuse(x: Tensor, delta: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    """``x + delta`` (``delta * scale[..., None]`` for fp8) in fp32, returned contiguous in x.dtype."""
    # One fp32 buffer: dequantised delta, then x added in place (promotion keeps the add in fp32).
    out = delta.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if scale is not None:
        out.mul_(scale.unsqueeze(-1))
    out.add_(x)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def quantize_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row (last dim) fp8: ``scale = amax|x| / 448`` (1 for all-zero rows), ``q = RNE(x / scale)``."""
    xf = x.to(torch.float32, memory_format=torch.contiguous_format)
    if x.shape[-1] == 0:  # amax of an empty row is undefined; such rows are "all zero"
        return torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device), torch.ones(
            x.shape[:-1], dtype=torch.float32, device=x.device
        )
    lo, hi = torch.aminmax(xf, dim=-1)  # no |x| temporary
    amax = torch.maximum(hi, -lo)
    scale = amax / FP8_MAX
    scale = torch.where(amax == 0, torch.ones_like(scale), scale)
    # |x / scale| <= 448 up to one fp32 rounding; the clamp keeps that rounding from reaching NaN.
    q = torch.div(xf, scale.unsqueeze(-1)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale
