"""CPU reference of ``lightcache::lerp``: start + weight * (end - start) in fp32."""

from __future__ import annotations

import torch
from torch import Tensor

from lightcache.reference._blocks import aligned_slices


def lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    # Same rounding sequence as the Triton kernel: fp32 sub, mul, add (not torch.lerp, whose
    # formula switches at weight 0.5). Bounded slices written straight into the output.
    out = torch.empty(start.shape, dtype=start.dtype, device=start.device)
    for s, e, o in aligned_slices(start, end, out):
        sf = s.float()
        t = e.float() - sf
        t.mul_(weight).add_(sf)
        o.copy_(t)
    return out
