"""DeepCache for video UNets (docs/design.md §3.3): every ``interval`` steps the whole UNet runs and the
input of the shallow up block at skip branch b — the output of the up block just deeper than it —
is cached; in between only down_blocks[0..b] and up_blocks[-(b+1):] run, and the deeper blocks
return placeholders of their recorded shapes (never read: the cached feature replaces the output of
the deepest skipped up block).

Steps come from the pipeline's loop (the engine's scheduler tap), never from a timestep lookup.
Full steps: step % interval == 0 (so step 0 is always full).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_map

from lightcache.policies.base import CachePolicy, CallInfo, check_int


@dataclass
class DeepCacheState:
    store: object = None
    run: object = None  # RunContext
    full: dict = field(default_factory=dict)  # step -> full compute?
    templates: dict = field(default_factory=dict)  # block index -> output shapes/dtypes
    layout: tuple = None  # (n_down, n_up)


@dataclass(frozen=True)
class DeepCache(CachePolicy):
    """Reuse of a video UNet's deep features between full steps (docs/design.md §3.3), for SVD,
    AnimateDiff and TextToVideoSD.

    Steps with step % interval == 0 run the whole UNet and cache the input of the shallow up path
    at ``branch``; the steps in between run only ``down_blocks[0..branch]`` and the last
    ``branch + 1`` up blocks on the cached feature. Every denoiser call still runs (the report
    counts it as partially computed), so ``report.block_compute_ratio`` is the figure to read.

    Args:
        interval (int, defaults to 3): N, the distance between full steps, >= 1 (1 never reuses).
        branch (int, defaults to 0): b, the skip branch whose shallow path keeps running: 0 keeps
            only the outermost down/up block pair; at most (number of up blocks − 2), checked at
            enable().

    Raises:
        ValueError / TypeError: a field out of its range or of the wrong type, naming the field.
    """

    interval: int = 3
    branch: int = 0

    block_level = True

    def __post_init__(self):
        # stored normalised (plain int): see the field checks in lightcache.policies.base
        object.__setattr__(self, "interval", check_int("DeepCache", "interval", self.interval, lo=1))
        object.__setattr__(self, "branch", check_int("DeepCache", "branch", self.branch, lo=0))

    def check_model(self, adapter, model) -> None:
        if not adapter.unet:
            raise ValueError(
                f"policy: DeepCache works on video UNets (SVD, AnimateDiff, TextToVideoSD); {adapter.family} is a "
                "transformer: use EasyCache or PreciseCache"
            )
        self._layout_of(model)

    def _layout_of(self, model):
        n_down, n_up = len(model.down_blocks), len(model.up_blocks)
        if self.branch > n_up - 2:
            raise ValueError(
                f"DeepCache.branch must be <= {n_up - 2} for this UNet ({n_up} up blocks), got {self.branch}"
            )
        return n_down, n_up

    def new_state(self, run) -> DeepCacheState:
        return DeepCacheState(store=run.store, run=run)

    def _layout(self, state: DeepCacheState):
        if state.layout is None:
            state.layout = self._layout_of(state.run.denoiser)
        return state.layout

    def should_compute(self, state: DeepCacheState, call: CallInfo, x) -> bool:
        self._layout(state)
        if call.leader:
            state.full[call.step] = call.step % self.interval == 0 or ("deep", call.branch) not in state.store
        if not state.full.get(call.step, True):
            state.store.prefetch(("deep", call.branch))  # its copy overlaps the shallow down blocks
        return True  # the UNet always runs; what is skipped is decided per block

    def _role(self, state: DeepCacheState, call: CallInfo, index: int):
        n_down, n_up = self._layout(state)
        cache_at = n_down + 1 + (n_up - 2 - self.branch)  # deepest skipped up block: its output is cached
        shallow = index <= self.branch or index > cache_at
        full = state.full.get(call.step, True) or ("deep", call.branch) not in state.store
        return full, shallow, cache_at

    def block_begin(self, state: DeepCacheState, call: CallInfo, index: int, block, args, kwargs):
        """None: run the block; else the cached deep feature or a shape-only placeholder."""
        full, shallow, cache_at = self._role(state, call, index)
        if full or shallow:
            return None
        if index == cache_at:
            return state.store.load(("deep", call.branch))
        # a skipped deep block: shapes only (its output flows only into other skipped blocks)
        return tree_map(_placeholder, state.templates[index], is_leaf=_is_meta)

    def block_end(self, state: DeepCacheState, call: CallInfo, index: int, block, args, kwargs, out):
        full, shallow, cache_at = self._role(state, call, index)
        if full and not shallow:
            state.templates[index] = tree_map(_meta, out)
            if index == cache_at:
                state.store.put(("deep", call.branch), out)
        return out


def _meta(t):
    return (tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else t


def _is_meta(m) -> bool:
    return isinstance(m, tuple) and len(m) == 3 and isinstance(m[1], torch.dtype)


def _placeholder(m):
    return torch.empty(m[0], dtype=m[1], device=m[2]) if _is_meta(m) else m
