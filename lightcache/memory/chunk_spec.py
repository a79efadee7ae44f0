"""How big a chunk is: a fixed number of rows (tokens), or as many as a byte budget allows.

Every chunked operation asks the spec for its chunk at call time, giving the bytes one row (token)
of its widest chunked intermediate takes at the shapes it sees: a feed-forward layer its hidden
width, attention one query row of scores (heads × keys), a UNet module a frame or pixel of its
feature width. With a budget the chunk is the largest that keeps that one intermediate within it.
"""

from __future__ import annotations

import contextlib
from typing import Optional


class ChunkSpec:
    def __init__(self, size: Optional[int] = None, budget: Optional[int] = None):
        if (size is None) == (budget is None):
            raise ValueError("ChunkSpec needs exactly one of size (rows) and budget (bytes)")
        self.size = size
        self.budget = budget

    def rows(self, row_bytes: int, what: str) -> int:
        """Rows per chunk for an operation whose widest intermediate takes ``row_bytes`` per row;
        ``what`` names one row in the error when the budget is below it."""
        if self.size is not None:
            return self.size
        if row_bytes > self.budget:
            raise ValueError(
                f"MemoryPlan.chunk_budget={self.budget} bytes is below the minimum for {what}: "
                f"{row_bytes} bytes; raise chunk_budget to at least {row_bytes}"
            )
        return self.budget // row_bytes

    def items(self, tokens_per_item: int, row_bytes: int, what: str) -> int:
        """Whole items (frames or pixels of ``tokens_per_item`` rows each) per chunk, at least one
        with a fixed size (an item cannot be split); with a budget, one item must fit."""
        if self.size is not None:
            return max(1, self.size // max(1, tokens_per_item))
        return self.rows(tokens_per_item * row_bytes, what)  # one "row" here is a whole item

    def __repr__(self):
        return f"ChunkSpec(size={self.size})" if self.size is not None else f"ChunkSpec(budget={self.budget})"


def chunk_hook_base():
    from diffusers.hooks.hooks import ModelHook

    return ModelHook


class PieceCount:
    """What the chunk hooks ran while :func:`counting` is active: ``calls`` chunked calls that ran
    in more than one piece, ``pieces`` the pieces (module passes) they ran (a DiT block call over
    sequence pieces counts its key and query passes), ``copied`` bytes written into preallocated
    outputs and key/value buffers piece by piece (copies an unchunked call does not make). For the
    planner's cost model (lightcache.simulate.planner)."""

    __slots__ = ("calls", "pieces", "copied")

    def __init__(self):
        self.calls = self.pieces = self.copied = 0

    def __repr__(self):
        return f"PieceCount(calls={self.calls}, pieces={self.pieces}, copied={self.copied})"


_COUNT: Optional[PieceCount] = None


@contextlib.contextmanager
def counting():
    """Count the chunk hooks' split calls, pieces and copies inside the block (yields the
    :class:`PieceCount`)."""
    global _COUNT
    outer, _COUNT = _COUNT, PieceCount()
    try:
        yield _COUNT
    finally:
        _COUNT = outer


def count(pieces: int, copied: int = 0) -> None:
    """Record one chunked call of ``pieces`` pieces (no-op unless :func:`counting` is active)."""
    c = _COUNT
    if c is not None:
        c.calls += 1
        c.pieces += pieces
        c.copied += copied
