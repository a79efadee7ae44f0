"""How big a chunk is: a fixed number of rows (tokens), or as many as a byte budget allows.

Every chunked operation asks the spec for its chunk at call time, giving the bytes one row (token)
of its widest chunked intermediate takes at the shapes it sees: a feed-forward layer its hidden
width, attention one query row of scores (heads × keys), a UNet module a frame or pixel of its
feature width. With a budget the chunk is the largest that keeps that one intermediate within it.
"""

from __future__ import annotations

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
