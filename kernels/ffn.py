"""Triton kernels of ``lightcache::chunked_ffn``: Linear -> GELU(tanh) -> Linear over token chunks.

Per chunk of rows: GEMM1 (cuBLAS, ``torch.mm(out=)``) into one reused (chunk, hidden) buffer;
``_bias_gelu_kernel`` adds b1 and applies GELU(tanh) in place; GEMM2 writes straight into the
chunk's rows of the output; ``_epilogue_kernel`` applies ``residual + gate * (y + b2)`` in place,
reading gate/residual through their (broadcast, stride-0) strides. Extra memory: the hidden buffer,
(chunk, hidden) in x's dtype, plus cuBLAS workspace.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightcache.kernels._launch import on_device


@triton.jit
def _bias_gelu_kernel(
    H, B1, n_rows, n_cols, sh, sb1, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    ptrs = H + rows.to(tl.int64)[:, None] * sh + cols[None, :]
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(B1 + cols * sb1, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    # 0.5·x·(1 + tanh(z)) == x·sigmoid(2z); this form saturates cleanly at both ends.
    z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    y = x / (1.0 + tl.exp(-2.0 * z))
    tl.store(ptrs, y.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _epilogue_kernel(
    Y, B2, G, R,
    n_rows, n_cols, row0, L,
    sy, sb2, sgb, sgl, sgc, srb, srl, src,
    HAS_B2: tl.constexpr, HAS_G: tl.constexpr, HAS_R: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < n_cols
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    ptrs = Y + rows.to(tl.int64)[:, None] * sy + cols[None, :]
    y = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_B2:
        y += tl.load(B2 + cols * sb2, mask=cmask, other=0.0).to(tl.float32)[None, :]
    # global token index -> (batch, position), so gate/residual are read through their own strides
    grow = (row0 + rows).to(tl.int64)
    bi = grow // L
    li = grow % L
    if HAS_G:
        g = tl.load(G + (bi * sgb + li * sgl)[:, None] + cols[None, :] * sgc, mask=mask, other=0.0)
        y *= g.to(tl.float32)
    if HAS_R:
        r = tl.load(R + (bi * srb + li * srl)[:, None] + cols[None, :] * src, mask=mask, other=0.0)
        y += r.to(tl.float32)
    tl.store(ptrs, y.to(Y.dtype.element_ty), mask=mask)


def _blocks(n_cols: int):
    block_c = min(1024, triton.next_power_of_2(max(n_cols, 16)))
    return max(1, 4096 // block_c), block_c


def _segments(x3: Tensor, o3: Tensor):
    """(x rows, out rows, global row offset) segments: the whole (B·L, D) when x flattens as a view,
    else one per batch (the GEMMs take any 2-D strides, the epilogue indexes globally)."""
    n_batch, length, d = x3.shape
    try:
        return [(x3.view(n_batch * length, d), o3.view(n_batch * length, -1), 0)]
    except RuntimeError:
        return [(x3[b], o3[b], b * length) for b in range(n_batch)]


def chunked_ffn(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    chunk_size: int,
    gate: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """Chunked FFN on the device of x; arguments as ``lightcache::chunked_ffn`` (validated by
    lightcache.ops). Returns a contiguous tensor of shape x.shape[:-1] + (out,)."""
    out_shape = tuple(x.shape[:-1]) + (w2.shape[0],)
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    x3 = x if x.dim() == 3 else x.unsqueeze(0)
    o3 = out if out.dim() == 3 else out.unsqueeze(0)
    n_batch, length = x3.shape[0], x3.shape[1]
    if n_batch * length == 0:
        return out
    hidden, n_out = w1.shape[0], w2.shape[0]

    def _strides3(t):
        if t is None:
            return out, (0, 0, 0)
        t3 = t.expand(out_shape)
        t3 = t3 if t3.dim() == 3 else t3.unsqueeze(0)
        return t3, tuple(t3.stride())

    g3, sg = _strides3(gate)
    r3, sr = _strides3(residual)
    segs = _segments(x3, o3)
    chunk = min(chunk_size, max(s[0].shape[0] for s in segs))
    hbuf = torch.empty((chunk, hidden), dtype=x.dtype, device=x.device)  # reused by every chunk
    w1t, w2t = w1.t(), w2.t()
    br_h, bc_h = _blocks(hidden)
    br_o, bc_o = _blocks(n_out)
    sb1 = b1.stride(0) if b1 is not None else 0  # biases are read through their stride (a view, an expand)
    sb2 = b2.stride(0) if b2 is not None else 0
    with on_device(x):  # torch.mm follows x's device by itself; Triton launches on the current one
        for xs, os_, row_base in segs:
            for s in range(0, xs.shape[0], chunk):
                e = min(s + chunk, xs.shape[0])
                n = e - s
                h = hbuf[:n]
                torch.mm(xs[s:e], w1t, out=h)
                _bias_gelu_kernel[(triton.cdiv(n, br_h), triton.cdiv(hidden, bc_h))](
                    h, b1 if b1 is not None else h, n, hidden, h.stride(0), sb1,
                    HAS_BIAS=b1 is not None, BLOCK_R=br_h, BLOCK_C=bc_h,
                )
                oc = os_[s:e]  # contiguous rows of the output
                torch.mm(h, w2t, out=oc)
                if b2 is None and gate is None and residual is None:
                    continue
                _epilogue_kernel[(triton.cdiv(n, br_o), triton.cdiv(n_out, bc_o))](
                    oc, b2 if b2 is not None else oc, g3, r3,
                    n, n_out, row_base + s, length,
                    oc.stride(0), sb2, *sg, *sr,
                    HAS_B2=b2 is not None, HAS_G=gate is not None, HAS_R=residual is not None,
                    BLOCK_R=br_o, BLOCK_C=bc_o,
                )
    return out
