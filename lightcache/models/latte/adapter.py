"""Latte's adapter: its blocks in execution order, spatial and temporal interleaved."""

from __future__ import annotations

from typing import List

from torch import nn

from lightcache.models.adapter import ModelAdapter


class LatteAdapter(ModelAdapter):
    """``block_lists`` name lists of equal length that run interleaved: block i of each list in
    turn, then block i + 1 (Latte: spatial block i, temporal block i). The policies see the blocks
    in that order (BlockCache ranks after the last one and prefetches the next one's residuals)."""

    def blocks(self, model: nn.Module) -> List[nn.Module]:
        lists = [_list(model, path) for path in self.block_lists]
        if len({len(x) for x in lists}) > 1:
            raise ValueError(
                f"{self.family}: {type(model).__name__}'s block lists {self.block_lists} have different lengths "
                f"{[len(x) for x in lists]}; they run interleaved, so they must match"
            )
        return [block for group in zip(*lists) for block in group]


def _list(model: nn.Module, path: str) -> List[nn.Module]:
    mod = model
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return []
    return list(mod) if isinstance(mod, nn.ModuleList) else [mod]
