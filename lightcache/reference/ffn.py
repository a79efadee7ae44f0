"""CPU reference of ``lightcache::chunked_ffn``: Linear -> GELU(tanh) -> Linear over token chunks.

One (chunk, hidden) buffer is allocated and reused for every chunk, and each chunk's result is
written straight into the preallocated output, so the widest live intermediate is
(chunk_size, hidden) instead of (L, hidden). Arithmetic stays in x's dtype, as nn.Linear's addmm
does, so the result matches the eager FFN to floating-point tolerance.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


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
    if gate is None and residual is None and x.dim() == 2 and 0 < x.shape[0] <= chunk_size:
        # one chunk of rows (the chunk hook's call that fits): the same three kernels without the
        # loop's views; the hidden buffer is the first GEMM's own output, so the peak is the same
        # (rows x hidden, then the output next to it)
        w1t, w2t = w1.t(), w2.t()
        h = torch.addmm(b1, x, w1t) if b1 is not None else torch.mm(x, w1t)
        torch.ops.aten.gelu_(h, approximate="tanh")
        return torch.addmm(b2, h, w2t) if b2 is not None else torch.mm(h, w2t)
    out_shape = tuple(x.shape[:-1]) + (w2.shape[0],)
    out = x.new_empty(out_shape)
    # Work on (B, L, .) views so 2-D and 3-D inputs share one loop.
    x3 = x if x.dim() == 3 else x.unsqueeze(0)
    o3 = out if out.dim() == 3 else out.unsqueeze(0)
    g3 = None
    if gate is not None:
        g3 = gate.expand(out_shape)  # stride-0 view: broadcasting costs no memory
        g3 = g3 if g3.dim() == 3 else g3.unsqueeze(0)
    r3 = None
    if residual is not None:
        r3 = residual if residual.dim() == 3 else residual.unsqueeze(0)

    n_batch, length = x3.shape[0], x3.shape[1]
    if n_batch * length == 0:  # no tokens: the empty output is the result (a 0-row chunk cannot step)
        return out
    chunk = min(chunk_size, length)
    hbuf = x.new_empty((chunk, w1.shape[0]))  # the one hidden buffer, reused by every chunk
    w1t, w2t = w1.t(), w2.t()
    for b in range(n_batch):
        for s in range(0, length, chunk):
            e = min(s + chunk, length)
            h = hbuf[: e - s]
            xc = x3[b, s:e]
            if b1 is not None:
                torch.addmm(b1, xc, w1t, out=h)
            else:
                torch.mm(xc, w1t, out=h)
            torch.ops.aten.gelu_(h, approximate="tanh")
            oc = o3[b, s:e]  # contiguous rows of the output: the GEMM writes in place
            if b2 is not None:
                torch.addmm(b2, h, w2t, out=oc)
            else:
                torch.mm(h, w2t, out=oc)
            if g3 is not None:
                oc.mul_(g3[b, s:e])
            if r3 is not None:
                oc.add_(r3[b, s:e])
    return out
