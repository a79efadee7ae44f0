"""DeepCache for video UNets (docs/design.md §3.3): on full steps the whole UNet runs and one deep
feature is cached; in between only the shallow path of one skip branch runs on that feature, and
the deeper blocks and layers return placeholders of their recorded shapes (never read).

Skip branch and layer. A branch is a (down block, up block) pair at the same depth b
(``down_blocks[b]`` and ``up_blocks[-(b + 1)]``). ``layer=None`` (the default) keeps the whole pair
running and caches the pair's up-path input (the output of the up block just deeper). ``layer=l``
is the DeepCache package's finer choice: inside the pair, the down block's layers are its resnet
layers 0 .. R−1 (a resnet with what is paired with it: attention, temporal conv or attention,
motion module) then its downsampler as layer R; the up block's layers are counted from its end
(its last resnet layer is layer 0). On the steps in between, down layers i < l and up layers
m <= l run; the cached feature is the output of up layer l + 1 (the last module it calls), or the
up block's input when the up block has no layer l + 1.

Steps come from the pipeline's loop (the engine's scheduler tap), never from a timestep lookup.
Full steps: ``uniform`` (the default) step % interval == 0; otherwise the package's quadratic
schedule around ``center`` (:func:`nonuniform_full_steps`). Step 0 is always full.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import FrozenSet, Optional

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from lightcache.policies.base import CachePolicy, CallInfo, check_bool, check_float, check_int

# the per-layer module lists of diffusers' video UNet blocks (SVD, AnimateDiff, TextToVideoSD):
# entry i of each belongs to resnet layer i
_LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules")
_POW_MAX = 10.0  # the schedule search lowers pow by 0.02 per try: bounded, it stays a few hundred tries


@dataclass
class DeepCacheState:
    store: object = None
    run: object = None  # RunContext
    full: dict = field(default_factory=dict)  # step -> full compute?
    templates: dict = field(default_factory=dict)  # block index or (block, list, i) -> output shapes/dtypes
    roles: object = None  # _Roles
    schedule: Optional[FrozenSet[int]] = None  # full steps of this run (None: not known yet)
    patched: list = field(default_factory=list)  # modules whose forward is patched now
    candidate: object = None  # (module key, output) of the cache layer's last module this full step
    cache_module: object = None  # key of the module whose output is the cached feature
    cache_spec: object = None  # pytree spec and non-tensor leaves of that output
    cached: set = field(default_factory=set)  # CFG branches whose deep feature is in the store


@dataclass(frozen=True)
class _Roles:
    down: int  # engine block index of the branch's down block
    up: int  # engine block index of the branch's up block
    down_skip: tuple  # layer indices of the down block skipped on partial steps (() none; None: all)
    up_skip: tuple  # forward layer indices of the up block skipped on partial steps
    cache_at: Optional[int]  # engine block index whose output is the cached feature (None: an up layer)
    cache_layer: Optional[int]  # forward index of the up layer whose output is cached


@dataclass(frozen=True)
class DeepCache(CachePolicy):
    """Reuse of a video UNet's deep features between full steps (docs/design.md §3.3), for SVD,
    AnimateDiff and TextToVideoSD.

    Full steps run the whole UNet and cache one deep feature; the steps in between run only the
    shallow path of skip branch ``branch`` (and, with ``layer``, only part of that branch's own
    down and up blocks) on it. Every denoiser call still runs (the report counts it as partially
    computed), so ``report.block_compute_ratio`` is the figure to read; it counts blocks, so a
    block that runs only some of its layers counts as run.

    Branches and layers (this module's docstring has the rule). ``layer=None`` runs
    ``down_blocks[0..branch]`` and the last ``branch + 1`` up blocks whole. ``layer=l`` runs the
    down layers i < l of ``down_blocks[branch]`` (its resnet layers, then its downsampler) and the
    up layers m <= l of ``up_blocks[-(branch + 1)]`` counted from its end. The DeepCache package
    (``DeepCacheSDHelper.set_params(cache_branch_id=p)``) splits p into block p // 3 and layer
    p % 3, so ``DeepCache.from_package`` maps

        ======================  ==============================================================
        package                 here
        ======================  ==============================================================
        cache_branch_id = p     ``DeepCache(branch=p // 3, layer=p % 3)``
        p = 0 (its default)     branch 0, layer 0: down_blocks[0] skipped, only the last resnet
                                layer of the last up block runs (shallower than ``branch=0``)
        p = 3·b + R             (R resnet layers per down block, 2 in SD-sized UNets) the whole
                                up block runs, the down block's downsampler is skipped: the same
                                output as ``DeepCache(branch=b)``, one downsampler less work
        ``DeepCache(branch=b)`` ``layer=R + 1``: the downsampler runs too (its output is unused)
        ======================  ==============================================================

    Full-step schedule (the package's ``uniform`` / ``pow`` / ``center``): ``uniform=True``:
    step % interval == 0; ``uniform=False``: :func:`nonuniform_full_steps` (full steps denser
    around step ``center``); ``interval=1`` computes every step either way.

    Args:
        interval (int, defaults to 3): N, the distance between full steps, >= 1 (1 never reuses).
        branch (int, defaults to 0): b, the skip branch whose shallow path keeps running: 0 is
            the outermost down/up block pair. With ``layer=None`` at most (number of up blocks −
            2), with a ``layer`` at most (number of down blocks − 1); checked at enable().
        layer (int, optional, defaults to None): l, the finer split inside the branch (above);
            None keeps the branch's block pair whole. At most (the down block's resnet layers +
            1), checked at enable().
        uniform (bool, defaults to True): the uniform schedule; False for the package's
            non-uniform one, which needs ``pow`` and ``center``.
        pow (float, optional, defaults to None): the non-uniform schedule's starting power, in (1, 10]; only with
            ``uniform=False``.
        center (int, optional, defaults to None): the step the non-uniform schedule concentrates full steps
            around, >= 0 (below the run's number of steps, checked when the run starts); only
            with ``uniform=False``.

    Raises:
        ValueError / TypeError: a field out of its range or of the wrong type, naming the field.
    """

    interval: int = 3
    branch: int = 0
    layer: Optional[int] = None
    uniform: bool = True
    pow: Optional[float] = None
    center: Optional[int] = None

    block_level = True

    def __post_init__(self):
        # stored normalised (plain int): see the field checks in lightcache.policies.base
        object.__setattr__(self, "interval", check_int("DeepCache", "interval", self.interval, lo=1))
        object.__setattr__(self, "branch", check_int("DeepCache", "branch", self.branch, lo=0))
        if self.layer is not None:
            object.__setattr__(self, "layer", check_int("DeepCache", "layer", self.layer, lo=0))
        check_bool("DeepCache", "uniform", self.uniform)
        if self.uniform:
            for name in ("pow", "center"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"DeepCache.{name} shapes the non-uniform schedule only: pass uniform=False with it, "
                        f"got {name}={getattr(self, name)!r} with uniform=True"
                    )
        else:
            for name in ("pow", "center"):
                if getattr(self, name) is None:
                    raise ValueError(f"DeepCache.{name} is required with uniform=False (the non-uniform schedule)")
            object.__setattr__(self, "pow", check_float("DeepCache", "pow", self.pow, lo=1.0, lo_open=True, hi=_POW_MAX))
            object.__setattr__(self, "center", check_int("DeepCache", "center", self.center, lo=0))

    @classmethod
    def from_package(cls, cache_interval=1, cache_branch_id=0, uniform=True, pow=None, center=None) -> "DeepCache":
        """The DeepCache package's settings (``DeepCacheSDHelper.set_params(cache_interval,
        cache_branch_id)``, its pipelines' ``uniform`` / ``pow`` / ``center``), with its defaults,
        as a DeepCache: branch = cache_branch_id // 3, layer = cache_branch_id % 3."""
        check_int("DeepCache.from_package", "cache_interval", cache_interval, lo=1)
        p = check_int("DeepCache.from_package", "cache_branch_id", cache_branch_id, lo=0)
        return cls(interval=cache_interval, branch=p // 3, layer=p % 3, uniform=uniform, pow=pow, center=center)

    # -- schedule ------------------------------------------------------------------------------

    def full_steps(self, num_steps: Optional[int]) -> Optional[FrozenSet[int]]:
        """The steps that run the whole UNet in a run of ``num_steps`` (None for the uniform
        schedule when the count is unknown: then step % interval == 0 decides)."""
        if self.interval == 1:
            return None if num_steps is None else frozenset(range(num_steps))
        if self.uniform:
            return None if num_steps is None else frozenset(range(0, num_steps, self.interval))
        if num_steps is None:
            raise RuntimeError("DeepCache(uniform=False) needs the number of steps of the run (pass the pipeline to enable())")
        if self.center >= num_steps:
            raise ValueError(f"DeepCache.center must be below the run's {num_steps} steps, got {self.center}")
        return nonuniform_full_steps(num_steps, self.interval, self.pow, self.center)

    # -- model ---------------------------------------------------------------------------------

    def check_model(self, adapter, model) -> None:
        if not adapter.unet:
            raise ValueError(
                f"policy: DeepCache works on video UNets (SVD, AnimateDiff, TextToVideoSD); {adapter.family} is a "
                "transformer: use EasyCache or PreciseCache"
            )
        self._roles_of(model)

    def _roles_of(self, model) -> _Roles:
        n_down, n_up = len(model.down_blocks), len(model.up_blocks)
        b = self.branch
        up = n_down + 1 + (n_up - 1 - b)  # engine index of up_blocks[-(b + 1)]: down, mid, then up blocks
        if self.layer is None:
            if b > n_up - 2:
                raise ValueError(f"DeepCache.branch must be <= {n_up - 2} for this UNet ({n_up} up blocks), got {b}")
            return _Roles(down=b, up=up, down_skip=(), up_skip=(), cache_at=up - 1, cache_layer=None)
        if b > min(n_down, n_up) - 1:
            raise ValueError(
                f"DeepCache.branch must be <= {min(n_down, n_up) - 1} with a layer for this UNet "
                f"({n_down} down blocks), got {b}"
            )
        down_block, up_block = model.down_blocks[b], model.up_blocks[n_up - 1 - b]
        n_res = len(down_block.resnets)
        has_down = bool(getattr(down_block, "downsamplers", None))
        if self.layer > n_res + 1:
            raise ValueError(
                f"DeepCache.layer must be <= {n_res + 1} for branch {b} of this UNet (down_blocks[{b}] has "
                f"{n_res} resnet layers, then its downsampler), got {self.layer}"
            )
        lay = self.layer
        if lay == 0:
            down_skip = None  # the whole down block
        else:
            down_skip = tuple(range(lay, n_res + (1 if has_down else 0)))
        n_up_res = len(up_block.resnets)
        if lay >= n_up_res - 1:  # every up layer runs: the cache is the up block's input
            return _Roles(down=b, up=up, down_skip=down_skip, up_skip=(), cache_at=up - 1, cache_layer=None)
        skip = tuple(range(n_up_res - 1 - lay))  # forward indices of up layers m > l
        return _Roles(down=b, up=up, down_skip=down_skip, up_skip=skip, cache_at=None, cache_layer=skip[-1])

    def new_state(self, run) -> DeepCacheState:
        if run.denoiser is not None:  # a call that raised inside a partial block left layers patched
            _unpatch_leftovers(run.denoiser)
        return DeepCacheState(store=run.store, run=run)

    def release_state(self, state: DeepCacheState) -> None:
        _unpatch(state)  # a call that raised inside a partial block: its patched layers go now

    def _roles(self, state: DeepCacheState) -> _Roles:
        if state.roles is None:
            state.roles = self._roles_of(state.run.denoiser)
        return state.roles

    def _cache_key(self, call: CallInfo):
        return ("deep", call.branch)

    def _has_cache(self, state: DeepCacheState, call: CallInfo) -> bool:
        return call.branch in state.cached

    def should_compute(self, state: DeepCacheState, call: CallInfo, x) -> bool:
        self._roles(state)
        if call.leader:
            if self.interval == 1:
                full = True
            elif self.uniform:
                full = call.step % self.interval == 0
            else:
                if state.schedule is None:
                    state.schedule = self.full_steps(call.num_steps)
                full = call.step in state.schedule
            state.full[call.step] = full or not self._has_cache(state, call)
        if not state.full.get(call.step, True) and self._roles(state).cache_at is not None:
            state.store.prefetch(self._cache_key(call))  # its copy overlaps the shallow down blocks
        return True  # the UNet always runs; what is skipped is decided per block

    # -- blocks --------------------------------------------------------------------------------

    def _role(self, state: DeepCacheState, call: CallInfo, index: int):
        """(full step, what block ``index`` does: "run" / "skip" / "cached" / "down" / "up")."""
        r = self._roles(state)
        full = state.full.get(call.step, True) or not self._has_cache(state, call)
        if index < r.down or index > r.up:
            return full, "run"
        if index == r.cache_at:
            return full, "cached"
        if index == r.down:
            return full, "skip" if r.down_skip is None else ("down" if r.down_skip else "run")
        if index == r.up:
            return full, "up" if r.up_skip else "run"
        return full, "skip"

    def block_begin(self, state: DeepCacheState, call: CallInfo, index: int, block, args, kwargs):
        """None: run the block (some of its layers patched); else the cached deep feature or a
        shape-only placeholder."""
        full, role = self._role(state, call, index)
        if role in ("down", "up"):
            self._patch_layers(state, call, index, block, role, full)
            return None
        if full or role == "run":
            return None
        if role == "cached":
            return state.store.load(self._cache_key(call))
        # a skipped deep block: shapes only (its output flows only into other skipped blocks)
        return tree_map(_placeholder, state.templates[index], is_leaf=_is_meta)

    def block_end(self, state: DeepCacheState, call: CallInfo, index: int, block, args, kwargs, out):
        full, role = self._role(state, call, index)
        if role in ("down", "up"):
            _unpatch(state)
            if full and role == "up":
                key, value = state.candidate
                state.candidate = None
                leaves, spec = tree_flatten(value)
                state.cache_module = key
                state.cache_spec = (spec, [None if isinstance(v, torch.Tensor) else v for v in leaves])
                for k, v in enumerate(leaves):
                    if isinstance(v, torch.Tensor):
                        state.store.put(self._cache_key(call) + (k,), v)
                state.cached.add(call.branch)
        elif full and role != "run":
            state.templates[index] = tree_map(_meta, out)
            if role == "cached":
                state.store.put(self._cache_key(call), out)
                state.cached.add(call.branch)
        return out

    def _patch_layers(self, state, call, index, block, role, full) -> None:
        r = self._roles(state)
        if role == "down":
            n_res = len(block.resnets)
            layers = [(name, i) for i in r.down_skip for name in _LAYER_LISTS if i < n_res and _has(block, name, i)]
            layers += [("downsamplers", j) for j in range(len(block.downsamplers or ())) if n_res in r.down_skip]
        else:
            layers = [(name, i) for i in r.up_skip for name in _LAYER_LISTS if _has(block, name, i)]
        for name, i in layers:
            module = getattr(block, name)[i]
            key = (index, name, i)
            cache_layer = role == "up" and i == r.cache_layer and name in _LAYER_LISTS
            _patch(state, module, _layer_forward(self, state, call, module, key, full, cache_layer))

    def _cached_output(self, state, call):
        spec, others = state.cache_spec
        leaves = [state.store.load(self._cache_key(call) + (k,)) if v is None else v for k, v in enumerate(others)]
        return tree_unflatten(leaves, spec)


def _has(block, name, i) -> bool:
    mods = getattr(block, name, None)
    return mods is not None and i < len(mods) and mods[i] is not None


def _layer_forward(policy, state, call, module, key, full, cache_layer):
    original = module.forward

    def forward(*args, **kwargs):
        if not _live(state, module, forward):  # left behind by a call that raised: transparent
            return original(*args, **kwargs)
        if full:  # record the shapes (and, for the cache layer, the output of its last module)
            out = original(*args, **kwargs)
            state.templates[key] = tree_map(_meta, out)
            if cache_layer:
                state.candidate = (key, out)
            return out
        if key == state.cache_module:
            return policy._cached_output(state, call)
        return tree_map(_placeholder, state.templates[key], is_leaf=_is_meta)

    return forward


# Layers are patched only while their block runs (block_begin .. block_end). A block that raises
# never reaches block_end: its patches stay, recorded here, and are (a) transparent, since a patch
# acts only during a denoiser call of its own run (RunContext.call_args) and while it is still the
# module's current patch, and (b) removed when the next run on that denoiser starts.
_PATCHED = weakref.WeakKeyDictionary()  # module -> (denoiser id, had its own forward, that forward, patch)


def _live(state: DeepCacheState, module, forward) -> bool:
    entry = _PATCHED.get(module)
    if entry is None or entry[3] is not forward:
        return False
    call_args = state.run.call_args
    return call_args is None or call_args() is not None


def _patch(state: DeepCacheState, module, forward) -> None:
    own = "forward" in module.__dict__  # e.g. a diffusers hook registry's wrapper
    _PATCHED[module] = (id(state.run.denoiser), own, module.__dict__.get("forward"), forward)
    state.patched.append(module)
    module.forward = forward


def _restore(module) -> None:
    entry = _PATCHED.pop(module, None)
    if entry is None:
        return
    _, own, previous, _ = entry
    if own:
        module.forward = previous
    else:
        module.__dict__.pop("forward", None)


def _unpatch(state: DeepCacheState) -> None:
    while state.patched:
        _restore(state.patched.pop())


def _unpatch_leftovers(denoiser) -> None:
    for module in [m for m, e in list(_PATCHED.items()) if e[0] == id(denoiser)]:
        _restore(module)


# ---------------------------------------------------------------------------------------------
# the DeepCache package's non-uniform schedule
# ---------------------------------------------------------------------------------------------


def nonuniform_full_steps(num_steps: int, interval: int, pow: float, center: int) -> FrozenSet[int]:
    """The full steps of the DeepCache package's non-uniform schedule (its ``uniform=False``).

    k = ceil(num_steps / interval) full steps. For p = ``pow``, then p − 0.02, ... while p > 1:
    take k + 1 points evenly spaced from a = (−center)^(1/p) to b = (num_steps − center)^(1/p)
    (principal complex roots: a is complex for center > 0), raise each to p, keep the real part
    truncated toward zero, sort the distinct values, drop the smallest and the largest, shift by
    ``center`` and add step 0. The first p that yields exactly k steps wins; ValueError (naming
    pow and center) when none does."""
    k = -(-num_steps // interval)
    p = pow
    while p > 1:
        # the package's float operations, in its order (numpy's linspace and complex power): the
        # truncation to whole steps is sensitive to the last bit
        a = complex(-center) ** (1 / p) if center > 0 else 0.0
        points = np.linspace(a, float(num_steps - center) ** (1 / p), k + 1)
        values = np.unique(np.asarray(points ** p).real.astype(np.int32))
        steps = [0] + [int(v) + center for v in values[1:-1]]
        if len(steps) == k:
            return frozenset(steps)
        p -= 0.02
    raise ValueError(
        f"DeepCache(uniform=False, pow={pow}, center={center}): no power in (1, {pow}] places "
        f"{k} distinct full steps in {num_steps} steps (interval {interval}); lower center or raise pow"
    )


def _meta(t):
    return (tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else t


def _is_meta(m) -> bool:
    return isinstance(m, tuple) and len(m) == 3 and isinstance(m[1], torch.dtype)


def _placeholder(m):
    return torch.empty(m[0], dtype=m[1], device=m[2]) if _is_meta(m) else m
