"""Triton: fused relative L1, ``[mean|a - b|, mean|b|]`` in one pass over a and b.

Stage 1: a fixed number of programs (a few per SM) each stream one contiguous chunk, accumulating
both sums in fp32 lane vectors, and write two partials. Stage 2: one program adds the partials in a
fixed order in fp64 and divides by n. No atomics, so the result is bit-reproducible, and it stays
on the device (no host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightcache.kernels._launch import contiguous, interpreted, on_device, same_dense_layout, sm_count

BLOCK = 4096
NUM_WARPS = 8
PROGRAMS_PER_SM = 4
FINAL_BLOCK = 1024


@triton.jit
def _partial_kernel(a_ptr, b_ptr, part_ptr, n, chunk, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * chunk
    acc_d = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, chunk, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        m = offs < n
        a = tl.load(a_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
        b = tl.load(b_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
        acc_d += tl.abs(a - b)
        acc_b += tl.abs(b)
    tl.store(part_ptr + 2 * pid, tl.sum(acc_d, axis=0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(acc_b, axis=0))


@triton.jit(do_not_specialize=["programs", "n"])  # n == 1 would become a constexpr
def _final_kernel(part_ptr, out_ptr, programs, n, BLOCK: tl.constexpr):
    acc_d = tl.zeros((BLOCK,), dtype=tl.float64)
    acc_b = tl.zeros((BLOCK,), dtype=tl.float64)
    for p0 in range(0, programs, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        m = p < programs
        acc_d += tl.load(part_ptr + 2 * p, mask=m, other=0.0).to(tl.float64)
        acc_b += tl.load(part_ptr + 2 * p + 1, mask=m, other=0.0).to(tl.float64)
    nf = n.to(tl.float64)
    tl.store(out_ptr, (tl.sum(acc_d, axis=0) / nf).to(tl.float32))
    tl.store(out_ptr + 1, (tl.sum(acc_b, axis=0) / nf).to(tl.float32))


def rel_l1(a: Tensor, b: Tensor, *, max_programs: int | None = None) -> Tensor:
    """fp32 (2,) ``[mean|a - b|, mean|b|]`` on a's device; NaNs for empty inputs."""
    n = a.numel()
    if n == 0:
        return torch.full((2,), float("nan"), dtype=torch.float32, device=a.device)
    if not same_dense_layout(a, b):  # a reduction does not care about order, only about pairing
        a, b = contiguous(a, b)
    if max_programs is None:
        max_programs = 8 if interpreted(a) else PROGRAMS_PER_SM * sm_count(a.device.index or 0)
    programs = min(triton.cdiv(n, BLOCK), max_programs)
    chunk = triton.cdiv(triton.cdiv(n, programs), BLOCK) * BLOCK
    programs = triton.cdiv(n, chunk)
    part = torch.empty((programs, 2), dtype=torch.float32, device=a.device)
    out = torch.empty((2,), dtype=torch.float32, device=a.device)
    with on_device(a):
        _partial_kernel[(programs,)](a, b, part, n, chunk, BLOCK=BLOCK, num_warps=NUM_WARPS)
        _final_kernel[(1,)](part, out, programs, n, BLOCK=FINAL_BLOCK, num_warps=4)
    return out
