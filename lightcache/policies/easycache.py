"""EasyCache: runtime-adaptive reuse of the whole denoiser (docs/design.md §3.1).

At each fully computed step i the transformation vector Δ_i = v_i − x_i is cached (per CFG branch).
Between two consecutive full computes i' < i the transformation rate is
    k = mean|v_i − v_i'| / mean|x_i − x_i'|.
At a later step t the predicted relative output change is ε_t = k · mean|x_t − x_{t−1}| / mean|v_i|;
E accumulates ε_t and the step is computed unless E < threshold (E ≥ τ, or NaN; then E = 0), else the output is
x_t + Δ_i. The first ``warmup_steps`` steps and the last step are always computed, and so is every
step before k is known (two full computes are needed). The leader call of a step (cond, or the
joint call) decides; the other branch follows that decision with its own Δ.

Choices where the method leaves room: means are over all elements of the batch (one decision per
call, as the issue asks); for image-conditioned models whose input has more channels than the
output, x is the input's first ``out_channels`` channels (the noisy latent), along the channel
dimension of the family's latent layout (``run.adapter.layout.channel_dim``: dim 1 of Wan I2V's
(B, C, T, H, W), dim 2 of CogVideoX I2V's (B, F, C, H, W)).

Under context parallelism (lightcache.parallel) the means are over the whole latents (which every
rank holds), summed from each rank's part: the rate terms of a full compute wait as partial means
(``pending``) and are reduced together with the next decision's mean|x_t − x_{t−1}|, so a
decision costs one all-reduce. Without a group the same values are plain means, computed as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from lightcache.models.layout import CHANNELS_FIRST, latent_part as _latent_part
from lightcache.policies.base import (
    CachePolicy,
    CallInfo,
    RunContext,
    check_float,
    check_int,
    family_preset,
    global_means,
    part_mean_abs,
    part_mean_abs_diff,
)


def latent_part(x: Tensor, out: Tensor, channel_dim: int = 1) -> Tensor:
    """The part of the denoiser input that its output refers to (I2V inputs carry extra channels
    on ``channel_dim``: the latent layout's, see lightcache.models.layout)."""
    return _latent_part(x, out, channel_dim)


@dataclass
class EasyCacheState:
    store: object = None  # the run's FeatureStore (RunContext.store)
    layout: object = CHANNELS_FIRST  # the denoiser's latent layout (RunContext.adapter.layout)
    accumulated: Optional[Tensor] = None  # E (device, fp32)
    rate: Optional[Tensor] = None  # k (device, fp32)
    prev_x: Optional[Tensor] = None  # leader input of the previous call (x_{t-1})
    has_last: bool = False  # x_i, v_i of the last full compute are in the store
    last_channels: Optional[int] = None  # channels of v (the latent part of x, on layout.channel_dim)
    last_out_mean: Optional[Tensor] = None  # mean|v_i|
    decisions: dict = field(default_factory=dict)  # step -> computed?
    epsilons: dict = field(default_factory=dict)  # step -> ε_t (0-d device tensor)
    parallel: object = None  # lightcache.parallel.ContextParallel (RunContext.parallel), None in one process
    # (means, counts, totals) over this rank's parts of mean|v_i − v_i'|, mean|x_i − x_i'|, mean|v_i|
    # of the last full compute: turned into rate and last_out_mean at the next decision
    pending: Optional[tuple] = None
    # the weight of the next decision's ε_t in E (1: EasyCache's sum; ForecastCache sets g^p per call)
    eps_scale: float = 1.0


@dataclass(frozen=True)
class EasyCache(CachePolicy):
    """Whole-denoiser reuse with the transformation-rate criterion (docs/design.md §3.1), for video
    transformers (DiTs): a step is reused while the accumulated predicted change E stays below
    ``threshold``, and then outputs x_t + Δ_i without running the denoiser.

    Args:
        threshold (float, defaults to 0.05): τ >= 0 on the accumulated predicted change (0 never
            reuses: lossless).
        warmup_steps (int, defaults to 10): R >= 0 leading steps that are always computed.

    Reference defaults: Wan2.1 τ = 0.05, R = 10; HunyuanVideo τ = 0.025, R = 5
    (see :meth:`for_model`)."""

    threshold: float = 0.05
    warmup_steps: int = 10
    extra_stream_reuse = "delta"  # a reused call is input + the branch's last change (not a field)

    def __post_init__(self):
        # stored normalised (plain float/int): see the field checks in lightcache.policies.base
        object.__setattr__(self, "threshold", check_float("EasyCache", "threshold", self.threshold, lo=0.0))
        object.__setattr__(self, "warmup_steps", check_int("EasyCache", "warmup_steps", self.warmup_steps, lo=0))

    @classmethod
    def for_model(cls, model) -> "EasyCache":
        """The family's EasyCache preset from the model registry (lightcache.models); ``model`` is a
        family name ("wan"), a diffusers pipeline or its denoiser, instance or class. A family
        without a preset is a ValueError (lightcache.calibrate picks a threshold instead)."""
        return cls(**family_preset(cls, model))

    def check_model(self, adapter, model) -> None:
        if adapter.unet:
            raise ValueError(
                f"policy: EasyCache works on video transformers (DiTs); {adapter.family} is a video UNet: "
                "use DeepCache"
            )

    def new_state(self, run: RunContext) -> EasyCacheState:
        # no adapter (a policy driven by hand): the default adapter's channels-first layout
        layout = CHANNELS_FIRST if run.adapter is None else run.adapter.layout
        return EasyCacheState(store=run.store, layout=layout, parallel=run.parallel)

    def should_compute(self, state: EasyCacheState, call: CallInfo, x: Tensor) -> bool:
        if not call.leader:
            return state.decisions.get(call.step, True)
        compute = True
        has_rate = state.rate is not None or state.pending is not None
        forced = call.step < self.warmup_steps or call.is_last_step or not has_rate or state.prev_x is None
        if not forced:
            x_lat = state.layout.narrow_channels(x, state.last_channels)
            mean, count, total = part_mean_abs_diff(state.parallel, x_lat, state.prev_x)
            means, counts, totals = ([], [], []) if state.pending is None else state.pending
            g = global_means(state.parallel, list(means) + [mean], list(counts) + [count], list(totals) + [total])
            if state.pending is not None:
                dv, dx, state.last_out_mean = g[0], g[1], g[2]
                # identical inputs give an infinite rate: every later step is computed
                state.rate = torch.where(dx > 0, dv / dx, torch.full_like(dv, float("inf")))
                state.pending = None
            eps = state.rate * g[-1] / state.last_out_mean
            added = eps if state.eps_scale == 1.0 else eps * state.eps_scale
            state.accumulated = added if state.accumulated is None else state.accumulated + added
            # reuse only while E < τ (the authors' test): a NaN E (k = inf times an unchanged
            # input, inf · 0) computes instead of reusing every later step
            compute = not bool(state.accumulated < self.threshold)  # the call's one host sync
            state.epsilons[call.step] = eps  # a device tensor: reading it later costs no sync now
        if compute:
            state.accumulated = None
        state.decisions[call.step] = compute
        return compute

    def after_compute(self, state: EasyCacheState, call: CallInfo, x: Tensor, out: Tensor) -> None:
        x_lat = state.layout.latent_part(x, out)
        state.store.put((call.branch, "delta"), out - x_lat)
        if not call.leader:
            return
        # x_i and v_i are only needed at the next full compute (for k): they live in the store,
        # so with swapping they wait on the host
        if state.has_last:  # k needs two full computes; k and mean|v_i| are formed at the next decision
            parts = (
                part_mean_abs_diff(state.parallel, out, state.store.load(("rate", "v"))),
                part_mean_abs_diff(state.parallel, x_lat, state.store.load(("rate", "x"))),
                part_mean_abs(state.parallel, out),
            )
            state.pending = tuple(zip(*parts))  # (means, counts, totals)
        state.store.put(("rate", "x"), x_lat)
        state.store.put(("rate", "v"), out)
        state.has_last = True
        state.last_channels = state.layout.channels(out)

    def after_call(self, state: EasyCacheState, call: CallInfo, x: Tensor) -> None:
        if call.leader:
            lat = x if state.last_channels is None else state.layout.narrow_channels(x, state.last_channels)
            state.prev_x = lat.detach()  # the pipeline's own latent: a new tensor every step

    def reused_output(self, state: EasyCacheState, call: CallInfo, x: Tensor) -> Tensor:
        delta, scale = state.store.get((call.branch, "delta"))
        return torch.ops.lightcache.reuse(state.layout.latent_part(x, delta), delta, scale)
