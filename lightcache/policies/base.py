"""The policy interface: what a caching method decides, independent of models and memory.

A policy is a frozen, validated dataclass (its configuration). The engine asks it, once per
denoiser call, whether the call is computed; a policy that works inside the model (BlockCache,
DeepCache) also decides per block. Per-run state lives in an object the policy creates with
``new_state()``, owned by the engine and discarded at the start of every pipeline call.

Cached tensors are never held by a policy directly: it puts them in the :class:`FeatureStore` it
is handed (``state.store``), which is where the memory plan decides where they live (device, or
swapped to the pinned host ring).

Under diffusers' context parallelism (``state.parallel``, set by the engine; None in one process) a
policy computes each metric as partial sums over this rank's part and reduces the sums of one
decision together (:func:`global_means`, :func:`reduce_sums`): every rank then decides alike (see
lightcache.parallel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lightcache.parallel import partial_sums


@dataclass(frozen=True)
class CallInfo:
    """Where a denoiser call sits in the pipeline's loop."""

    step: int  # denoising step index, from the pipeline's own loop
    num_steps: Optional[int]  # total steps of this run, when known
    branch: str  # "cond", "uncond" (separate CFG calls) or "joint" (one call for the step)
    leader: bool  # first call of its step: the call that makes the step's decision

    @property
    def is_last_step(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps - 1


class CachePolicy:
    """Base of every policy. Subclasses are frozen dataclasses that validate in __post_init__ and
    implement new_state and should_compute, plus reused_output if they ever skip a whole call (the
    base raises NotImplementedError for these: they are the interface, not stubs)."""

    #: policies that skip work inside a computed call set this and implement block_begin/block_end
    block_level: bool = False

    def new_state(self) -> Any:
        raise NotImplementedError

    def should_compute(self, state: Any, call: CallInfo, x: Tensor) -> bool:
        """Decide (leader calls) or follow the step's decision (other branches)."""
        raise NotImplementedError

    def after_compute(self, state: Any, call: CallInfo, x: Tensor, out: Tensor) -> None:
        """Record what a computed call produced (x: latent input, out: denoiser output)."""

    def reused_output(self, state: Any, call: CallInfo, x: Tensor) -> Tensor:
        """The output of a call that is not computed."""
        raise NotImplementedError

    # block-level policies (block_level = True); the engine calls, for block ``index`` of a computed call:
    #   out = block_begin(...); if out is None: out = block_end(..., block(*args, **kwargs))

    def block_begin(self, state: Any, call: CallInfo, index: int, block, args, kwargs) -> Optional[Any]:
        """None to run the block, or the block's output without running it."""
        return None

    def block_end(self, state: Any, call: CallInfo, index: int, block, args, kwargs, out: Any) -> Any:
        """Record what a block that ran produced; returns its output."""
        return out


# ---------------------------------------------------------------------------------------------
# field validation shared by the policy dataclasses (errors name the field and the allowed range)
# ---------------------------------------------------------------------------------------------


def check_float(owner: str, name: str, value, *, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) and not (hi == math.inf and value == math.inf):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value}")
    bad_lo = value <= lo if lo_open else value < lo
    if bad_lo or value > hi:
        left = "(" if lo_open else "["
        right = "]" if hi != math.inf else ")"
        raise ValueError(f"{owner}.{name} must be in {left}{lo}, {hi}{right}, got {value}")


def check_int(owner: str, name: str, value, *, lo: int = 0, hi: Optional[int] = None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{owner}.{name} must be {rng}, got {value}")


def mean_abs_diff(a: Tensor, b: Tensor) -> Tensor:
    """mean|a - b| as an fp32 0-d device tensor (through the fused op)."""
    return torch.ops.lightcache.rel_l1(a, b)[0]


def mean_abs(t: Tensor) -> Tensor:
    """mean|t| as an fp32 0-d device tensor (second output of the fused op, with a = b = t)."""
    return torch.ops.lightcache.rel_l1(t, t)[1]


# ---------------------------------------------------------------------------------------------
# metrics under context parallelism (lightcache.parallel): partial sums, one reduction per decision
# ---------------------------------------------------------------------------------------------


def reduce_sums(parallel, sums: Tensor) -> Tensor:
    """This rank's partial sums of one decision summed over the context-parallel group (one
    all-reduce); unchanged without a group (``parallel`` None)."""
    return sums if parallel is None else parallel.all_reduce_sums(sums)


def _part_mean(parallel, mean, *tensors: Tensor) -> Tuple[Tensor, int, int]:
    """(``mean(*parts)`` over this rank's parts of ``tensors`` (whole on every rank), elements in
    the part, elements in all); without a group the part is everything."""
    total = tensors[0].numel()
    if parallel is not None:
        if len({t.is_contiguous() for t in tensors}) > 1:  # shard() cuts by layout: make the parts correspond
            tensors = tuple(t.contiguous() for t in tensors)
        tensors = tuple(parallel.shard(t) for t in tensors)
    n = tensors[0].numel()
    if n == 0:  # a rank whose part is empty contributes nothing (the op's mean would be 0/0)
        return torch.zeros((), dtype=torch.float32, device=tensors[0].device), 0, total
    return mean(*tensors), n, total


def part_mean_abs_diff(parallel, a: Tensor, b: Tensor) -> Tuple[Tensor, int, int]:
    """(mean|a − b| over this rank's part as an fp32 0-d tensor, elements in the part, elements in
    all) for ``a``, ``b`` whole on every rank; without a group :func:`mean_abs_diff` itself."""
    return _part_mean(parallel, mean_abs_diff, a, b)


def part_mean_abs(parallel, t: Tensor) -> Tuple[Tensor, int, int]:
    """(mean|t| over this rank's part, elements in the part, elements in all) for ``t`` whole on
    every rank; without a group :func:`mean_abs` itself."""
    return _part_mean(parallel, mean_abs, t)


def global_means(parallel, means: Sequence[Tensor], counts: Sequence[int], totals: Optional[Sequence[int]] = None) -> Tensor:
    """Means over whole tensors from this rank's means over its parts (``counts`` elements each).

    ``totals``: the elements of each whole tensor when every rank knows them (replicated tensors);
    None for sharded tensors, whose counts are then reduced in the same all-reduce as the sums.
    One all-reduce in all; without a group the means are returned stacked and untouched (they are
    already over the whole tensors), so single-process results are bit-identical to plain means."""
    means = torch.stack([m.reshape(()).float() for m in means])
    if parallel is None:
        return means
    counts_t = torch.tensor(list(counts), dtype=torch.float64, device=means.device)
    sums = partial_sums(means, counts_t)
    if totals is None:
        reduced = reduce_sums(parallel, torch.cat([sums, counts_t]))
        sums, totals_t = reduced[: len(counts)], reduced[len(counts):]
    else:
        sums = reduce_sums(parallel, sums)
        totals_t = torch.tensor(list(totals), dtype=torch.float64, device=means.device)
    return (sums / totals_t).float()
