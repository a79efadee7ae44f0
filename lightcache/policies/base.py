"""The policy interface: what a caching method decides, independent of models and memory.

A policy is a frozen, validated dataclass (its configuration). The engine asks it, once per
denoiser call, whether the call is computed; a policy that works inside the model (BlockCache,
DeepCache) also decides per block. Per-run state lives in an object the policy creates with
``new_state()``, owned by the engine and discarded at the start of every pipeline call.

Cached tensors are never held by a policy directly: it puts them in the :class:`FeatureStore` it
is handed (``state.store``), which is where the memory plan decides where they live (device, or
swapped to the pinned host ring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor


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
