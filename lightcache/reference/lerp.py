"""CPU reference of ``lightcache::lerp``: start + weight * (end - start) in fp32."""

from __future__ import annotations

import torch
from torch import Tensor


def lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    # Same rounding sequence as the Triton kernel: fp32 sub, mul, add (not torch.lerp, whose
    # formula switches at weight 0.5). One fp32 buffer, updated in place.
    out = end.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    out.sub_(start).mul_(weight).add_(start)
    return out if start.dtype == torch.float32 else out.to(start.dtype)
