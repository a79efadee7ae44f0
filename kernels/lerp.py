"""Triton: ``out = start + weight * (end - start)`` in fp32 registers, one read each, one write."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightcache.kernels._launch import contiguous, on_device

BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _lerp_kernel(s_ptr, e_ptr, o_ptr, weight, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    s = tl.load(s_ptr + offs, mask=m, eviction_policy="evict_first").to(tl.float32)
    e = tl.load(e_ptr + offs, mask=m, eviction_policy="evict_first").to(tl.float32)
    tl.store(o_ptr + offs, (s + weight * (e - s)).to(o_ptr.dtype.element_ty), mask=m)


def lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    out = torch.empty(start.shape, dtype=start.dtype, device=start.device)
    n = start.numel()
    if n == 0:
        return out
    start, end = contiguous(start, end)
    with on_device(start):
        _lerp_kernel[(triton.cdiv(n, BLOCK),)](start, end, out, float(weight), n, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out
