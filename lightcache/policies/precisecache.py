"""PreciseCache: LFCache (step level) + BlockCache (inside computed steps) (docs/design.md §3.2).

LFCache. At every step after warm-up a cheap signal F_t is formed and
    s_t = ‖LP(F_t − F_{t−1})‖₂        (lightcache.lowfreq_energy, circle radius radius_ratio·min(H, W))
is accumulated over reused steps: A += s_t. The step is recomputed when A > α · max_{t' ≤ t} s_t'
(then A = 0); otherwise the step returns the branch's cached prediction v_i.

BlockCache. Inside computed steps, per block j and stream the residual D_j = out_j − in_j is kept
(stored by the refresh steps, which run every block; the pivotal blocks of the other computed steps
store none: their residuals are never read). A refresh step ranks the blocks by mean|D_j| (all
streams); the top ``block_ratio``
fraction are pivotal and are the only blocks recomputed in the next L = ``refresh_steps``
computed steps (the paper's "for the next L computed steps"); the others return in_j + D_j. The
computed step after those L refreshes again: a window is 1 refresh + L pivotal-only steps, so
the refreshes are the branch's computed steps 0, L + 1, 2(L + 1), ... (steps LFCache reuses do
not count).

Choices the paper leaves open, each a parameter:
  * signal: "trial" = the prediction of a trial forward on the latent average-pooled by
    ``trial_downsample`` (time, height, width) = (2, 4, 4) (the paper's); "input" = the latent
    input itself (free, no trial forward). Either way F is read as the canonical video
    (B, C, T, H, W) through the family's latent layout (``run.adapter.layout``: CogVideoX's
    (B, F, C, H, W) is permuted, LTX-Video's packed tokens unpacked over the call's grid), so the
    low-frequency signal sees (H, W) frames, and the trial call is built by the adapter
    (``run.adapter.trial_call``) with every size-dependent argument (grid sizes, rotary tables,
    per-token timesteps, side latents) made consistent with the pooled grid. Pooled sizes are
    ceil(size / factor), rounded up to the model's patch multiple (at least 2 in height and width:
    a one-pixel frame has no spatial frequencies). Models that accept no other size (CogVideoX
    with learned positional embeddings) are refused at enable() for the trial signal.
  * the max in δ = α · max s is over all signals of the current run so far (including the current
    one); the sum A includes the current step's signal.
  * warm-up: the first ceil(warmup_ratio · N) steps are computed (at least 1); the last step is
    computed when ``compute_last``.
  * the norm is the spatial L2 norm of the low-passed difference (Parseval), summed over all
    channels and frames and the batch; no normalisation by the signal's size (α is a ratio).
  * block ranking uses mean|D_j| over the whole batch, cond and uncond ranked separately.
Modes: base α = 0.5, turbo α = 0.7 (LFCache only); flash = turbo + BlockCache (40 %, L = 3).

Under context parallelism (lightcache.parallel) s_t is summed from each rank's frames (energies add
over frames) and mean|D_j| from each rank's shard of the sequence (sums and element counts); one
all-reduce per decision carries the step's s_t and every block ranking queued since the last one,
so every rank reuses the same steps and the same blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from torch import Tensor

from lightcache.models.layout import pool_to
from lightcache.parallel import partial_sums
from lightcache.policies.base import (
    CachePolicy,
    CallInfo,
    check_bool,
    check_choice,
    check_float,
    check_int,
    reduce_sums,
    show_value,
)

_MODES = {
    "base": dict(alpha=0.5, block_ratio=None),
    "turbo": dict(alpha=0.7, block_ratio=None),
    "flash": dict(alpha=0.7, block_ratio=0.4),
}
_SIGNALS = ("trial", "input")


@dataclass
class PreciseCacheState:
    store: object = None
    run: object = None  # RunContext
    accumulated: float = 0.0
    max_signal: float = 0.0
    prev_signal_input: Optional[Tensor] = None  # F_{t−1}
    decisions: dict = field(default_factory=dict)
    signals: dict = field(default_factory=dict)  # step -> s_t
    computed_count: dict = field(default_factory=dict)  # branch -> computed calls so far
    pivotal: dict = field(default_factory=dict)  # branch -> set of pivotal block indices
    refreshing: dict = field(default_factory=dict)  # branch -> this call runs every block
    # (branch, j) -> (mean|D_j| per stream over this rank's tokens (device), their element counts)
    block_scores: dict = field(default_factory=dict)
    pending_rank: dict = field(default_factory=dict)  # branch -> (block indices, (J, S) means, counts) not yet read
    parallel: object = None  # lightcache.parallel.ContextParallel (RunContext.parallel), None in one process


@dataclass(frozen=True)
class PreciseCache(CachePolicy):
    """LFCache (which steps run) with optional BlockCache (which blocks run inside them), for video
    transformers (DiTs); the method is in docs/design.md §3.2 and the choices it leaves open are
    listed in this module's docstring.

    LFCache: after warm-up, each step's signal s_t = ‖LP(F_t − F_{t−1})‖₂ is added to A; the step
    is recomputed when A > alpha · (the largest s so far in the run), then A = 0; otherwise it
    returns the branch's cached prediction. BlockCache (``block_ratio`` set): every
    refresh step runs all blocks and ranks them by mean|out_j − in_j|; the top ``block_ratio``
    fraction are the only blocks run in the next ``refresh_steps`` computed steps, the others
    return in_j + (cached out_j − in_j); then the next computed step refreshes.

    Args:
        mode (str, defaults to "turbo"): a preset for ``alpha`` and ``block_ratio``: "base"
            (alpha 0.5, no BlockCache), "turbo" (alpha 0.7, no BlockCache), "flash" (alpha 0.7,
            block_ratio 0.4). Explicit ``alpha`` / ``block_ratio`` override it.
        alpha (float, optional, defaults to the mode's): the recompute threshold as a fraction of
            the largest signal so far, in [0, 1]; larger reuses more steps.
        block_ratio (float, optional, defaults to the mode's: None for "base" and "turbo", 0.4
            for "flash"): the fraction of blocks recomputed in computed steps, in (0, 1]; None or
            1.0 runs every block (no BlockCache).
        refresh_steps (int, defaults to 3): L, the computed steps of a branch that run only the
            pivotal blocks after each refresh (ranking) step, >= 1: a window is L + 1 computed
            steps.
        warmup_ratio (float, defaults to 0.1): the first ceil(warmup_ratio · num_steps) steps (at
            least 1) are always computed, in [0, 1]. Needs the number of steps: enable on the
            pipeline, or pass ``num_inference_steps`` through ``cache_context``.
        compute_last (bool, defaults to True): always compute the last step.
        signal (str, defaults to "trial"): F_t: "trial" = the prediction of a trial forward on the
            pooled latent (costs one small forward per step; refused at enable() for models that
            accept no other size), "input" = the latent input itself (free).
        trial_downsample (tuple of 3 ints, defaults to (2, 4, 4)): average-pooling factors
            (time, height, width) of the trial latent, each >= 1; pooled sizes are rounded up to
            the model's patch multiple.
        radius_ratio (float, defaults to 0.2): the low-pass radius as a fraction of min(H, W) of
            the signal's frames (0.2 = min(H, W)/5), > 0.

    Raises:
        ValueError / TypeError: a field out of its range or of the wrong type, naming the field.
    """

    mode: str = "turbo"
    alpha: Optional[float] = None
    block_ratio: Optional[float] = None
    refresh_steps: int = 3
    warmup_ratio: float = 0.1
    compute_last: bool = True
    signal: str = "trial"
    trial_downsample: Tuple[int, int, int] = (2, 4, 4)
    radius_ratio: float = 0.2
    extra_stream_reuse = "output"  # a reused call returns the branch's last prediction (not a field)

    def __post_init__(self):
        def put(name, value):  # stored normalised (plain str/float/int): see lightcache.policies.base
            object.__setattr__(self, name, value)

        put("mode", check_choice("PreciseCache", "mode", self.mode, _MODES))
        if self.alpha is None:
            put("alpha", _MODES[self.mode]["alpha"])
        if self.block_ratio is None:
            put("block_ratio", _MODES[self.mode]["block_ratio"])
        put("alpha", check_float("PreciseCache", "alpha", self.alpha, lo=0.0, hi=1.0))
        if self.block_ratio is not None:
            put("block_ratio", check_float("PreciseCache", "block_ratio", self.block_ratio, lo=0.0, lo_open=True, hi=1.0))
        put("refresh_steps", check_int("PreciseCache", "refresh_steps", self.refresh_steps, lo=1))
        put("warmup_ratio", check_float("PreciseCache", "warmup_ratio", self.warmup_ratio, lo=0.0, hi=1.0))
        put("signal", check_choice("PreciseCache", "signal", self.signal, _SIGNALS))
        ds = self.trial_downsample
        what = "PreciseCache.trial_downsample must be a tuple of 3 ints (time, height, width), each in [1, 2**63 - 1]"
        if isinstance(ds, list):  # not converted: the field is documented as a tuple (and must hash)
            raise TypeError(f"{what}; got the list {show_value(ds)}: write it as a tuple, e.g. (2, 4, 4)")
        if not isinstance(ds, tuple):
            raise TypeError(f"{what}, got {type(ds).__name__} {show_value(ds)}")
        if len(ds) != 3:
            raise ValueError(f"{what}, got {len(ds)} values {show_value(ds)}")
        put("trial_downsample", tuple(check_int("PreciseCache", f"trial_downsample[{i}]", v, lo=1) for i, v in enumerate(ds)))
        # no upper bound: a radius beyond the spectrum keeps every frequency (the plain L2 norm)
        put("radius_ratio", check_float("PreciseCache", "radius_ratio", self.radius_ratio, lo=0.0, lo_open=True))
        check_bool("PreciseCache", "compute_last", self.compute_last)

    @property
    def block_level(self) -> bool:  # type: ignore[override]
        return self.block_ratio is not None and self.block_ratio < 1.0

    def check_model(self, adapter, model) -> None:
        if adapter.unet:
            raise ValueError(
                f"policy: PreciseCache works on video transformers (DiTs); {adapter.family} is a video UNet: "
                "use DeepCache"
            )
        if self.signal == "trial":
            reason = adapter.layout.trial_refusal(model)
            if reason is not None:
                raise ValueError(
                    f"PreciseCache.signal='trial' (the default): {reason}; use PreciseCache(signal='input') "
                    "(the latent input itself as the signal, no trial forward)"
                )

    def new_state(self, run) -> PreciseCacheState:
        return PreciseCacheState(store=run.store, run=run, parallel=run.parallel)

    def warmup_steps(self, num_steps: Optional[int]) -> int:
        if num_steps is None:
            raise RuntimeError("PreciseCache needs the number of steps of the run (pass the pipeline to enable())")
        return max(1, math.ceil(self.warmup_ratio * num_steps))

    # -- LFCache -------------------------------------------------------------------------------

    def _signal_input(self, state: PreciseCacheState, x: Tensor) -> Tensor:
        """F_t as a canonical (B, C, T, H, W) video: the latent itself, or the trial forward's
        prediction on the pooled latent."""
        run = state.run
        layout = run.adapter.layout
        args, kwargs = _call_arguments(run)
        video = layout.to_bcthw(x, args, kwargs)
        if self.signal == "input":
            return video
        # without a denoiser (a policy driven by hand) no patch sizes are known: only the (1, 2, 2) floor
        multiple = layout.patch_multiple(run.denoiser) if run.denoiser is not None else (1, 1, 1)
        pooled = downsample(video, self.trial_downsample, multiple)
        return layout.to_bcthw(run.trial(pooled), grid=tuple(pooled.shape[2:]))

    def should_compute(self, state: PreciseCacheState, call: CallInfo, x: Tensor) -> bool:
        if not call.leader:
            compute = state.decisions.get(call.step, True)
        else:
            compute = self._lead(state, call, x)
        if compute:
            self._begin_computed_call(state, call)
        return compute

    def _lead(self, state: PreciseCacheState, call: CallInfo, x: Tensor) -> bool:
        warm = call.step < self.warmup_steps(call.num_steps)
        # the signal is needed from the last warm-up step on (its F is the first F_{t−1})
        needs_signal = call.step >= self.warmup_steps(call.num_steps) - 1
        f = self._signal_input(state, x) if needs_signal else None
        compute = True
        if not warm and state.prev_signal_input is not None:
            s = self._resolve(state, self._local_energy(state, f))  # the call's one host sync
            state.signals[call.step] = s
            state.max_signal = max(state.max_signal, s)
            state.accumulated += s
            compute = state.accumulated > self.alpha * state.max_signal
        if call.is_last_step and self.compute_last:
            compute = True
        if compute:
            state.accumulated = 0.0
        state.prev_signal_input = None if f is None else f.detach()
        state.decisions[call.step] = compute
        return compute

    def _local_energy(self, state: PreciseCacheState, f: Tensor) -> Tensor:
        """s_t (one process), or this rank's share of s_t² (its frames' low-frequency energy)."""
        prev, par = state.prev_signal_input, state.parallel
        if par is None:
            return torch.ops.lightcache.lowfreq_energy(f, prev, self.radius_ratio)
        f, prev = par.frame_shard(f), par.frame_shard(prev)
        if f.numel() == 0:
            return torch.zeros((), dtype=torch.float32, device=f.device)
        return torch.ops.lightcache.lowfreq_energy(f, prev, self.radius_ratio).square()

    def _resolve(self, state: PreciseCacheState, signal: Optional[Tensor] = None) -> Optional[float]:
        """One host sync (and, under context parallelism, one all-reduce) for the step's signal
        (from :meth:`_local_energy`, or None) and every block ranking queued so far; applies the
        rankings and returns s_t (None without a signal)."""
        pending = list(state.pending_rank.items())
        if signal is None and not pending:
            return None
        state.pending_rank.clear()
        par = state.parallel
        if par is None:
            parts = [] if signal is None else [signal.reshape(1)]
            parts += [means.sum(dim=1) for _, (_, means, _) in pending]
            values = torch.cat(parts).tolist() if parts else []
        else:
            device = (signal if signal is not None else pending[0][1][1]).device
            sums = [] if signal is None else [signal.reshape(1).double()]
            counts = [torch.tensor(c, dtype=torch.float64, device=device).reshape(-1) for _, (_, _, c) in pending]
            sums += [partial_sums(m.reshape(-1).to(device), c) for (_, (_, m, _)), c in zip(pending, counts)]
            reduced = reduce_sums(par, torch.cat(sums + counts)).tolist()
            values = []
            if signal is not None:
                values.append(math.sqrt(reduced.pop(0)))
            n_sums = sum(c.numel() for c in counts)
            red_sums, red_counts = reduced[:n_sums], reduced[n_sums:]
            at = 0
            for _, (indices, means, _) in pending:
                streams = means.shape[1]
                for _ in indices:  # mean|D_j| summed over the block's streams
                    values.append(sum(red_sums[at + k] / red_counts[at + k] for k in range(streams)))
                    at += streams
        s = values.pop(0) if signal is not None else None
        for branch, (indices, _, _) in pending:
            self._apply_rank(state, branch, indices, values[: len(indices)])
            values = values[len(indices):]
        return s

    def after_compute(self, state: PreciseCacheState, call: CallInfo, x: Tensor, out: Tensor) -> None:
        state.store.put((call.branch, "pred"), out)

    def reused_output(self, state: PreciseCacheState, call: CallInfo, x: Tensor) -> Tensor:
        return state.store.load((call.branch, "pred"), copy=True)  # the caller owns its output

    # -- BlockCache ----------------------------------------------------------------------------

    def _begin_computed_call(self, state: PreciseCacheState, call: CallInfo) -> None:
        n = state.computed_count.get(call.branch, 0)
        state.computed_count[call.branch] = n + 1
        has_ranking = call.branch in state.pivotal or call.branch in state.pending_rank
        # a window: 1 refresh + refresh_steps pivotal-only computed steps of this branch
        state.refreshing[call.branch] = (n % (self.refresh_steps + 1) == 0) or not has_ranking
        if state.refreshing[call.branch]:
            state.block_scores = {k: v for k, v in state.block_scores.items() if k[0] != call.branch}
        else:
            self._prefetch_next(state, call, 0)

    def block_begin(self, state: PreciseCacheState, call: CallInfo, index: int, block, args, kwargs):
        """None: run the block (refresh calls, pivotal blocks); else its reused output in_j + D_j."""
        if state.refreshing.get(call.branch, True) or index in self._pivotal(state, call.branch):
            return None
        adapter = state.run.adapter
        self._prefetch_next(state, call, index + 1)  # overlaps the next reused block's copy with this one
        outs = []
        for s, t in enumerate(adapter.block_streams(block, args, kwargs)):
            d, scale = state.store.get((call.branch, "block", index, s))
            outs.append(torch.ops.lightcache.reuse(t, d, scale))
        return adapter.pack_streams(tuple(outs))

    def block_end(self, state: PreciseCacheState, call: CallInfo, index: int, block, args, kwargs, out):
        if not state.refreshing.get(call.branch, True):
            # a pivotal block of a pivotal-only call: its residual is never read (the window's reused
            # blocks read the refresh call's D_j; the next refresh recomputes every block and stores
            # them all again), so neither computing nor storing it (no copy to the host with swap)
            return out
        adapter = state.run.adapter
        ins = adapter.block_streams(block, args, kwargs)
        residuals = [o - i for o, i in zip(adapter.output_streams(out), ins)]
        for s, r in enumerate(residuals):
            state.store.put((call.branch, "block", index, s), r)
        if state.refreshing.get(call.branch, True):  # device tensors; ranked after the last block
            means = torch.stack([r.abs().float().mean() for r in residuals])
            state.block_scores[(call.branch, index)] = (means, [r.numel() for r in residuals])
            if index == state.run.num_blocks - 1:
                self._rank(state, call.branch)
        return out

    def _prefetch_next(self, state: PreciseCacheState, call: CallInfo, start: int) -> None:
        """Ask the store to bring back the residuals of the next block that will be reused."""
        pivotal = self._pivotal(state, call.branch)
        n = state.run.num_blocks
        j = start
        while j < n and j in pivotal:
            j += 1
        if j < n:
            for s in range(len(state.run.adapter.block_outputs)):
                state.store.prefetch((call.branch, "block", j, s))

    def _rank(self, state: PreciseCacheState, branch: str) -> None:
        """Queue the ranking of a refresh call (device tensors); materialised on first use."""
        items = [(j, v) for (b, j), v in state.block_scores.items() if b == branch]
        state.pending_rank[branch] = (
            [j for j, _ in items],
            torch.stack([means for _, (means, _) in items]),  # (blocks, streams)
            [counts for _, (_, counts) in items],
        )
        state.block_scores = {k: v for k, v in state.block_scores.items() if k[0] != branch}

    def _pivotal(self, state: PreciseCacheState, branch: str):
        if branch in state.pending_rank:
            self._resolve(state)  # one host sync for every queued ranking
        return state.pivotal.get(branch, ())

    def _apply_rank(self, state: PreciseCacheState, branch: str, indices, values) -> None:
        scores = sorted(zip(values, indices), key=lambda p: (-p[0], p[1]))
        keep = max(1, math.ceil(self.block_ratio * len(scores)))
        state.pivotal[branch] = {j for _, j in scores[:keep]}


def _call_arguments(run):
    """(args, kwargs) of the current denoiser call, or empty ones where the run cannot give them
    (a RunContext made without ``call_args``: layouts that need them say so)."""
    current = run.call_args() if run.call_args is not None else None
    return current if current is not None else ((), {})


def downsample(x: Tensor, factors: Tuple[int, int, int], multiple: Tuple[int, int, int] = (1, 2, 2)) -> Tensor:
    """Average-pool a (B, C, T, H, W) latent by (t, h, w) with ceil sizes, each rounded up to a
    multiple of ``multiple`` (the model's patch sizes; height and width also even, so at least 2)."""
    if x.dim() != 5:
        raise ValueError(f"the trial forward needs a (B, C, T, H, W) latent, got shape {tuple(x.shape)}")
    steps = (multiple[0], math.lcm(2, multiple[1]), math.lcm(2, multiple[2]))
    size = tuple(max(m, m * math.ceil(n / f / m)) for n, f, m in zip(x.shape[2:], factors, steps))
    return pool_to(x, size)
