"""The policy interface: what a caching method decides, independent of models and memory.

A policy is a frozen, validated dataclass (its configuration). The engine asks it, once per
denoiser call, whether the call is computed; a policy that works inside the model (BlockCache,
DeepCache) also decides per block. Per-run state lives in an object the policy creates with
``new_state()``, owned by the engine and discarded at the start of every pipeline call.

What a policy may use of the engine is exactly the :class:`RunContext` handed to ``new_state``:
the run's feature store, the model adapter, the denoiser, its block count, the trial forward and
the context-parallel group. Cached tensors are never held by a policy directly: it puts them in
the run's store (``run.store``), which is where the memory plan decides where they live (device,
or swapped to the pinned host ring).

Under diffusers' context parallelism (``run.parallel``; None in one process) a policy computes each
metric as partial sums over this rank's part and reduces the sums of one decision together
(:func:`global_means`, :func:`reduce_sums`): every rank then decides alike (see
lightcache.parallel).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lightcache.parallel import partial_sums


@dataclass(frozen=True)
class CallInfo:
    """Where a denoiser call sits in the pipeline's loop."""

    step: int  # denoising step index, from the pipeline's own loop
    num_steps: Optional[int]  # total steps of this run, when known
    # "cond", "uncond" (separate CFG calls), "joint" (one call for the step), or the pipeline's own
    # context name (a further guidance call, e.g. LTX-2's "uncond_stg")
    branch: str
    leader: bool  # first call of its step: the call that makes the step's decision

    @property
    def is_last_step(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps - 1


@dataclass(frozen=True)
class RunContext:
    """Everything a policy may use of the engine during one pipeline call.

    store: the run's FeatureStore (lightcache.memory.store): every cached tensor goes through it.
    adapter: the denoiser family's ModelAdapter (where the blocks are, the latent layout, the
        block input/output streams).
    denoiser: the denoiser module (read its structure; never call it: use ``trial``).
    num_blocks: the number of blocks the engine hooks (block indices run 0 .. num_blocks - 1).
    trial: ``trial(sample) -> output``: runs the current denoiser call on a replacement latent
        ``sample`` given as a canonical (B, C, T, H, W) video (lightcache.models.layout), uncached
        and not counted as computed work (LFCache's cheap trial forward). The call is built by
        ``adapter.trial_call``, which puts the sample in the denoiser's layout and makes every
        size-dependent argument match its grid; the output comes back in the denoiser's layout
        (``adapter.layout.to_bcthw(out, grid=sample.shape[2:])`` reads it as a video).
    parallel: the context-parallel group (lightcache.parallel), None in one process.
    call_args: ``call_args() -> (args, kwargs)`` of the current denoiser call as the pipeline
        passed them (None outside a call), for reading the latent through the layout (LTX-Video's
        packed tokens need the call's grid); read them, never modify them.
    """

    store: Any
    adapter: Any
    denoiser: Any = None
    num_blocks: int = 0
    trial: Optional[Callable[[Tensor], Tensor]] = None
    parallel: Any = None
    call_args: Optional[Callable[[], Optional[Tuple[tuple, dict]]]] = None


class CachePolicy:
    """Base of every policy. Subclasses are frozen dataclasses that validate in __post_init__ and
    implement new_state and should_compute, plus reused_output if they ever skip a whole call (the
    base raises NotImplementedError for these: they are the interface, not stubs). Every other
    method has a no-op default here, so the engine never probes for optional methods."""

    #: policies that skip work inside a computed call set this and implement block_begin/block_end
    block_level: bool = False
    #: how a call that is not computed makes a denoiser's further output streams (an adapter's
    #: ``extra_outputs``, e.g. LTX-2's audio), the way the policy makes the sample: "delta" -- the
    #: stream's input + (output - input) of the branch's last computed call (EasyCache), "output" --
    #: the last computed call's output (PreciseCache); None -- the policy cannot, and such denoisers
    #: are refused at enable(). The engine keeps them in the run's store.
    extra_stream_reuse: Optional[str] = None

    def check_model(self, adapter, model) -> None:
        """Refuse (ValueError naming the field or the family) a model this policy cannot run on;
        called by ``lightcache.enable`` before anything is changed."""

    def new_state(self, run: RunContext) -> Any:
        """Fresh per-run state (a new pipeline call); ``run`` is all the policy may use."""
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

    def after_call(self, state: Any, call: CallInfo, x: Tensor) -> None:
        """End of a denoiser call (computed or not)."""

    def release_state(self, state: Any) -> None:
        """The run's state is dropped (the pipeline call ended, or raised): undo anything the
        policy changed outside ``state`` (e.g. patched modules), so nothing is left behind."""


def family_preset(policy_cls, model) -> dict:
    """The field values of ``policy_cls``'s preset for ``model``'s family (``model``: a family
    name, a diffusers pipeline or denoiser, instance or class; see
    lightcache.models.registry.family_name_of). A family without one is a ValueError naming the
    families that have one and pointing at lightcache.calibrate, never a silent default."""
    from lightcache.models import family_name_of, presets

    name = family_name_of(model)
    found = presets(policy_cls.__name__)
    if name not in found:
        raise ValueError(
            f"model: the {name!r} family has no {policy_cls.__name__} preset (families with one: {sorted(found)}); "
            f"use lightcache.calibrate(pipe, {policy_cls.__name__}(), target_speedup=...) to pick the threshold on "
            "your pipeline"
        )
    return dict(found[name])


# ---------------------------------------------------------------------------------------------
# field validation shared by the policy dataclasses (errors name the field and the allowed range)
# ---------------------------------------------------------------------------------------------


# Numbers are accepted as Python or numpy scalars (numbers.Real / numbers.Integral: numpy registers
# its types there) and stored converted to plain float / int, so a frozen policy stays hashable and
# equal to the same policy written with literals. bool is refused everywhere although it is an int.
# NaN and ±inf are refused even where the range is unbounded: no field means anything at infinity.
# Ints are capped at int64 because some reach torch ops and the C++ ring as int64.

INT64_MAX = 2**63 - 1


def show_value(value) -> str:
    """``repr(value)`` for an error message, short even for a huge int (whose repr can itself fail)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int_bound(v: int) -> str:
    return "2**63 - 1" if v == INT64_MAX else str(v)


def check_float(owner: str, name: str, value, *, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf) -> float:
    """``value`` as a float in the range (``hi`` inf: unbounded above, inf itself still refused);
    TypeError for a non-number, ValueError outside the range, both naming ``owner.name``."""
    if hi == math.inf:
        rng = f"{'>' if lo_open else '>='} {lo}"
    else:
        rng = f"in {'(' if lo_open else '['}{lo}, {hi}]"
    what = f"{owner}.{name} must be a finite number {rng}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}, got {type(value).__name__} {show_value(value)}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{what}, got {show_value(value)}") from None
    if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
        raise ValueError(f"{what}, got {show_value(value)}")
    return v


def check_int(owner: str, name: str, value, *, lo: int = 0, hi: int = INT64_MAX) -> int:
    """``value`` as an int in [lo, hi] (numpy integers accepted; bool and floats such as 3.0 are
    not); TypeError for a non-int, ValueError outside the range, both naming ``owner.name``."""
    what = f"{owner}.{name} must be an int in [{_int_bound(lo)}, {_int_bound(hi)}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what}, got {type(value).__name__} {show_value(value)}")
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{what}, got {show_value(value)}")
    return v


def check_choice(owner: str, name: str, value, choices) -> str:
    """``value`` as a str among ``choices``; anything else (another type, a list, which would not
    even hash for a dict lookup) is a ValueError naming ``owner.name`` and the choices."""
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {show_value(value)}")
    return str(value)


def check_bool(owner: str, name: str, value) -> bool:
    """``value`` if it is a bool (not 0/1, not numpy.bool_), else TypeError naming ``owner.name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be a bool (True or False), got {type(value).__name__} {show_value(value)}")
    return value


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
