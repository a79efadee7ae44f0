"""CPU reference of ``lightcache::rel_l1``: ``[mean|a - b|, mean|b|]`` as fp32 (2,)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightcache.reference._blocks import aligned_slices


def rel_l1(a: Tensor, b: Tensor) -> Tensor:
    # One pass over bounded slices (views, no full a - b); fp32 slice sums, fp64 across slices.
    acc = torch.zeros(2, dtype=torch.float64, device=a.device)
    for pa, pb in aligned_slices(a, b):
        fb = pb.float()
        # .sum() is a cascade sum (~1e-8 relative); vector_norm(ord=1) accumulates naively (~1e-5)
        acc[0] += (pa.float() - fb).abs_().sum()
        acc[1] += fb.abs().sum()
    return (acc / a.numel()).float()  # 0/0 -> NaN for empty inputs, like torch.mean
