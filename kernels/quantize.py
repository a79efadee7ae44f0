"""Triton: per-row fp8 (e4m3fn) quantisation, ``scale = amax|x| / 448`` (1 for zero rows),
``q = RNE(x / scale)``.

The fp32 -> e4m3fn rounding is done with integer bit operations (exact round-to-nearest-even,
subnormals included) rather than a cast: the Triton interpreter's fp8 cast mis-rounds, and one code
path that is bit-exact against torch on CPU and GPU alike is worth a few integer ops in a
memory-bound kernel. Divisions use ``div_rn`` (IEEE) so scale and q match torch bit for bit.
Rows up to 8192 channels are read once (held in registers); wider rows are read twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightcache.kernels._launch import contiguous, next_pow2, on_device

FP8_MAX = 448.0
TILE = 4096
MAX_BLOCK_D = 8192


@triton.jit
def _e4m3_bits(v):
    """uint8 e4m3fn code of fp32 ``v`` with |v| <= 448, rounded to nearest even."""
    bits = v.to(tl.uint32, bitcast=True)
    sign = (bits >> 31) << 7
    mag = bits & 0x7FFFFFFF
    # normal (|v| >= 2^-6): keep 3 of 23 mantissa bits with RNE (carry may bump the exponent),
    # then rebias the exponent from 127 to 7: (127 - 7) << 3 = 960
    normal = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - 960
    # subnormal: code = RNE(|v| / 2^-9) = RNE(mantissa_with_hidden_bit >> (141 - exponent))
    # shift clamped to [1, 31] so lanes that take the normal branch never shift out of range
    s = tl.minimum(tl.maximum(141 - (mag >> 23).to(tl.int32), 1), 31).to(tl.uint32)
    man = (mag & 0x7FFFFF) | 0x800000
    q = man >> s
    rem = man & ((1 << s) - 1)
    half = 1 << (s - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    sub = q + up.to(tl.uint32)
    return (tl.where(mag >= 0x3C800000, normal, sub) | sign).to(tl.uint8)


@triton.jit
def _encode(x, scale):
    v = tl.math.div_rn(x, scale[:, None])
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    return _e4m3_bits(v)


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, rows, cols, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = r < rows
    c = tl.arange(0, BLOCK_D)
    base = r[:, None] * cols
    if SINGLE:  # whole row in registers: one read
        m = rm[:, None] & (c < cols)[None, :]
        x = tl.load(x_ptr + base + c[None, :], mask=m, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)
    else:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for c0 in range(0, cols, BLOCK_D):
            m = rm[:, None] & (c0 + c < cols)[None, :]
            x = tl.load(x_ptr + base + c0 + c[None, :], mask=m, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale = tl.where(amax == 0.0, 1.0, tl.math.div_rn(amax, 448.0))
    tl.store(s_ptr + r, scale, mask=rm)
    if SINGLE:
        tl.store(q_ptr + base + c[None, :], _encode(x, scale), mask=m)
    else:
        for c0 in range(0, cols, BLOCK_D):
            m = rm[:, None] & (c0 + c < cols)[None, :]
            x = tl.load(x_ptr + base + c0 + c[None, :], mask=m, other=0.0).to(tl.float32)
            tl.store(q_ptr + base + c0 + c[None, :], _encode(x, scale), mask=m)


def quantize_fp8(x: Tensor, *, max_block_d: int = MAX_BLOCK_D) -> tuple[Tensor, Tensor]:
    """``(q, scale)``: q float8_e4m3fn of x's shape (contiguous), scale fp32 of shape x.shape[:-1].
    ``max_block_d`` (power of two) caps the channel tile; rows wider than it take the two-pass path."""
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.ones(x.shape[:-1], dtype=torch.float32, device=x.device)
    if x.numel() == 0:  # also covers zero-width rows: scale 1, as for all-zero rows
        return q, scale
    (x,) = contiguous(x)
    cols = x.shape[-1]
    rows = x.numel() // cols
    block_d = min(next_pow2(cols), max_block_d)
    block_m = max(1, TILE // block_d)
    single = block_d >= cols
    num_warps = 8 if block_m * block_d >= 4096 else 4
    with on_device(x):
        _quantize_kernel[(triton.cdiv(rows, block_m),)](
            x, q.view(torch.uint8), scale, rows, cols,
            BLOCK_M=block_m, BLOCK_D=block_d, SINGLE=single, num_warps=num_warps,
        )  # fmt: skip
    return q, scale
