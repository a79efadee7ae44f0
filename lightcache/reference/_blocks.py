"""Bounded-memory iteration over paired views (private helper of the reference kernels).

The reference kernels work on slices of at most ``max_elems`` elements so that their fp32 temporaries
never grow to a full extra copy of the input. Slices are views: no input is copied up front, also
when it is non-contiguous.
"""

from __future__ import annotations

from typing import Iterator

from torch import Tensor

BLOCK_ELEMS = 1 << 20  # 4 MiB of fp32 temporaries per slice


def aligned_slices(*ts: Tensor, max_elems: int = BLOCK_ELEMS) -> Iterator[tuple[Tensor, ...]]:
    """Yield tuples of same-shape views, one per tensor (all of one shape; expanded views are
    fine), covering every element once, each with about ``max_elems`` elements."""
    a = ts[0]
    if a.numel() == 0:
        return
    try:
        flat = [t.view(-1) for t in ts]
    except RuntimeError:  # not flattenable without a copy: recurse over the leading dim
        per = a[0].numel()
        if per <= max_elems:
            rows = max(1, max_elems // per)
            for i in range(0, a.shape[0], rows):
                yield tuple(t[i : i + rows] for t in ts)
        else:
            for i in range(a.shape[0]):
                yield from aligned_slices(*(t[i] for t in ts), max_elems=max_elems)
        return
    for s in range(0, a.numel(), max_elems):
        yield tuple(f[s : s + max_elems] for f in flat)


def frame_slices(a: Tensor, b: Tensor, max_elems: int = BLOCK_ELEMS) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield views ``(a_part, b_part)`` of shape (frames, H, W) covering every frame of ``(..., H, W)``
    once, with about ``max_elems`` elements per part (at least one frame)."""
    if a.numel() == 0:
        return
    h, w = a.shape[-2:]
    if a.dim() == 2:
        yield a.unsqueeze(0), b.unsqueeze(0)
        return
    try:
        fa, fb = a.view(-1, h, w), b.view(-1, h, w)
    except RuntimeError:
        for i in range(a.shape[0]):
            yield from frame_slices(a[i], b[i], max_elems)
        return
    per = max(1, max_elems // (h * w))
    for s in range(0, fa.shape[0], per):
        yield fa[s : s + per], fb[s : s + per]
