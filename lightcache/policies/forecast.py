"""ForecastCache: EasyCache's schedule, with the reused output forecast instead of held.

EasyCache (docs/design.md §3.1) decides which steps run with the accumulated transformation rate
and, on a reused step t, outputs x_t + Δ_i: the transformation Δ = v − x of the last full compute
i, held constant. Δ is not constant over the steps between two computes: it drifts smoothly with
the noise level. TaylorSeer's observation (forecasting features from their recent trajectory beats
holding them) applied to EasyCache's schedule: keep the Δ of the last two computed calls of each
branch, Δ_k at step t_k and Δ_{k−1} at step t_{k−1}, and output on a reused step t the first-order
(Taylor) forecast in the step index

    Δ̂_t = Δ_k + (Δ_k − Δ_{k−1}) · (t − t_k) / (t_k − t_{k−1})
        = lerp(Δ_{k−1}, Δ_k, w),   w = (t − t_{k−1}) / (t_k − t_{k−1}) > 1,
    output = x_t + Δ̂_t,

through the fused ``lerp`` op (fp32 arithmetic; a weight above 1 extrapolates) and the fused
``reuse`` op. The decision is EasyCache's (an EasyCache inside the state makes it, on its own
state) with the two changes below. A branch with a single computed call so far holds its Δ (order 0).

Two changes to EasyCache's schedule fit it to a forecast rather than a held Δ:

- a short warm-up: the first R = ⌈warmup_ratio · N⌉ steps are computed (3 of 50 at the default
  0.06, TaylorSeer's warm-up; EasyCache's reference settings are a ratio of 0.2, 10 of 50 Wan
  steps). The forecast follows the early steps' drift, and at a budget of about 17 computes of 50
  (3x) a 10-step warm-up leaves 6 for the other 40 steps;
- the accumulated change weighs each step by its distance from the last compute: on a step t at
  g = t − t_k steps from the last compute t_k, E grows by ε_t · g^p (p = ``gap_power``, 1 by
  default; EasyCache adds ε_t), and the step is computed unless E < τ, as in EasyCache. The
  forecast's error on a step g away grows faster than the change ε accumulated so far (a
  first-order extrapolation misses by about the curvature times g², whose increments grow like g),
  and EasyCache's plain sum does not see it; p = 0 is EasyCache's schedule.

Measured on the trained Wan proxy (benchmarks/forecast_sweep.py, results in
benchmarks/results/forecast-wan-proxy-cpu.txt): at the same threshold (the same block work) the
forecast gains several dB PSNR over EasyCache's held Δ at 20 and 50 steps.

The warm-up and the weighting were chosen on the envelope: mean PSNR over 4 conditions x 2 seeds
against the block-FLOP fraction of the first (lightcache.bench's sweep rules), thresholds swept, on
the trained Wan and CogVideoX proxies (CPU), at 50 steps and checked at 20; figures are "fraction of
the block FLOPs / mean PSNR". A 3-step warm-up instead of 10 (EasyCache's sum): Wan proxy
0.34/44.2 dB (threshold 0.1) where 10 steps gave 0.32/38.2 (0.2), and 0.26/39.4 (0.15) where 10
gave 0.26/30.1 (0.5); CogVideoX proxy 0.28/45.7 (0.2) where 10 gave 0.30/30.8 (0.5). Warm-ups of
2 and 5 steps of 50 are within 1.2 dB of 3 at matched block work (2 lower on the Wan proxy, 5
coarser and no higher). At 20 steps the warm-up barely matters (EasyCache computes two steps
before it knows k anyway). The weighting (p = 1, 3-step warm-up) then gives, at 50 steps, the
CogVideoX proxy 0.34/50.5 and 0.28/47.4 where the plain sum gave 0.34/48.9 and 0.28/45.7 (and
0.42/54.0 where it gave 0.42/55.5: 1.6 dB lower there), and the Wan proxy 0.46/52.7 and 0.32/44.5
where the plain sum gave 0.50/54.1, 0.34/44.2 and 0.26/39.4; at 20 steps the CogVideoX proxy
0.50/44.8 (plain sum: 0.55/45.9, 0.45/39.8) and the Wan proxy 0.50/40.0 (0.45/37.5). p = 0.5 is
0.1-0.5 dB higher on the 50-step envelopes' least margins below and 0.8-2.1 dB lower at 2x at 20
steps; p = 2 is mixed (CogVideoX proxy, 50 steps: +1.9 dB at 0.48, −1.6 dB at 0.34). Against
diffusers' TaylorSeer (interval 2-6, warm-up 3, order 1; its slowest point is 1.9x) the 50-step
envelope is above at every matched block-FLOP speed-up up to 3x on both proxies (least margin
+7.3 dB CogVideoX proxy, +4.4 dB Wan proxy; with the 10-step warm-up and the plain sum: −5.6 and
−1.0 dB); at 20 steps it is above on the CogVideoX proxy (least +8.3 dB) and on the Wan proxy up
to about 2.1x, TaylorSeer ahead beyond (by 1.6 dB at 2.5x; the 10-step warm-up: 2.6 dB).

Tried and left out (one condition, 20 and 50 steps, unless stated): the forecast in the scheduler's
timestep instead of the step index (1.8-5.2 dB lower at every threshold), a damped or amplified
extrapolation (w − 1 scaled by 0.5 or 1.25: lower everywhere; by 0.75: +0.3 to +1.7 dB at three
settings, −2.7 dB at a fourth, so no consistent gain), forecasting the prediction v instead of Δ
(mixed, within ±1.5 dB, and it would keep a further tensor per branch), a second-order forecast from
the last three Δs (6-15 dB lower), a fixed compute interval instead of EasyCache's criterion (1.5 dB
lower at 20 steps, 9 dB at 50 steps, at the same block work; on the envelope, 4 conditions x 2 seeds
at 50 steps, with TaylorSeer's schedule: Wan proxy 0.38/41.1 and 0.30/35.9, CogVideoX proxy
0.38/46.9 and 0.30/45.9, 3-8 dB below the weighted criterion's envelope), and a cap on consecutive
reused steps (at most ⌈0.1 · N⌉, then a compute; 4 conditions x 2 seeds): with the plain sum it
lifted the 50-step envelopes by up to 1 dB up to 3x and 2 dB beyond, and the 20-step CogVideoX
proxy's by 2.7 dB at 2.5x, but lowered the 20-step Wan proxy's by 0.6-1.0 dB at 2-2.2x; on top of
the weighting it moved no 50-step point by more than 0.3 dB and cost the 20-step Wan proxy 3 dB at
2.2x. An earlier "a shorter warm-up is 5-9 dB lower" (a ratio of 0.15) compared one threshold, which
then reuses more steps: at matched block work it is higher (above).

Both Δs of every branch live in the run's store (two slots per branch, written alternately, so a
new compute overwrites the older one without moving the newer), so swapping to the host and
bf16/fp8 storage apply to them like to EasyCache's one Δ; the forecast reads them back dense in
the feature's dtype. Under context parallelism the decision is EasyCache's, with its reductions;
the weighting scales the reduced ε_t, so every rank decides alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor

from lightcache.models.layout import CHANNELS_FIRST
from lightcache.policies.base import CachePolicy, CallInfo, RunContext, check_float, check_int, family_preset
from lightcache.policies.easycache import EasyCache, EasyCacheState


def delta_key(branch, slot: int) -> tuple:
    """The store key of ``branch``'s Δ in ``slot`` (0 or 1): EasyCache's key for the call's
    branch, which ForecastCache names as (branch, slot) (see ForecastCache.after_compute)."""
    return ((branch, slot), "delta")


@dataclass
class ForecastCacheState:
    criterion: Optional[EasyCache] = None  # EasyCache with this run's warm-up (made at the first call)
    schedule: Optional[EasyCacheState] = None  # its state: E, k, the decisions
    run: Optional[RunContext] = None
    layout: object = CHANNELS_FIRST
    steps: dict = field(default_factory=dict)  # branch -> [t_{k−1}, t_k]: steps of its last two computes
    newest: dict = field(default_factory=dict)  # branch -> the slot (0 or 1) holding Δ_k
    weights: dict = field(default_factory=dict)  # (step, branch) -> the lerp weight a reused call used
    gaps: dict = field(default_factory=dict)  # step -> g (steps since the last compute) where E was weighted


@dataclass(frozen=True)
class ForecastCache(CachePolicy):
    """EasyCache's step schedule with a first-order forecast of the reused output (module doc).

    Args:
        threshold (float, defaults to 0.2): τ >= 0, EasyCache's threshold on the accumulated
            (gap-weighted) predicted change (0 never reuses: lossless).
        warmup_ratio (float, defaults to 0.06): the first ⌈warmup_ratio · N⌉ of N steps are always
            computed, in [0, 1] (3 of 50).
        gap_power (float, defaults to 1.0): p >= 0, each step's predicted change ε_t adds
            ε_t · g^p to the accumulated E, g the steps since the last compute; 0 is EasyCache's
            plain sum.
        order (int, defaults to 1): 1 forecasts Δ from the last two computes; 0 holds the last Δ
            (EasyCache's output).
    """

    threshold: float = 0.2
    warmup_ratio: float = 0.06
    gap_power: float = 1.0
    order: int = 1
    # a denoiser's further output streams (LTX-2's audio) are reused by the engine as input + the
    # branch's last change, held as EasyCache holds it (not forecast): see CachePolicy
    extra_stream_reuse = "delta"

    def __post_init__(self):
        object.__setattr__(self, "threshold", check_float("ForecastCache", "threshold", self.threshold, lo=0.0))
        object.__setattr__(self, "warmup_ratio",
                           check_float("ForecastCache", "warmup_ratio", self.warmup_ratio, lo=0.0, hi=1.0))
        object.__setattr__(self, "gap_power", check_float("ForecastCache", "gap_power", self.gap_power, lo=0.0))
        object.__setattr__(self, "order", check_int("ForecastCache", "order", self.order, lo=0, hi=1))

    @classmethod
    def for_model(cls, model) -> "ForecastCache":
        """The family's ForecastCache preset from the model registry (lightcache.models); ``model`` is a
        family name ("wan"), a diffusers pipeline or its denoiser, instance or class. A family
        without a preset is a ValueError (lightcache.calibrate picks a threshold instead)."""
        return cls(**family_preset(cls, model))

    def warmup_steps(self, num_steps: Optional[int]) -> int:
        """R = ⌈warmup_ratio · num_steps⌉, the steps always computed at the start of the run."""
        if num_steps is None:
            if self.warmup_ratio == 0:
                return 0
            raise ValueError(
                "ForecastCache.warmup_ratio is a fraction of the run's steps, and this denoiser call came without "
                "the step count (CallInfo.num_steps is None); use warmup_ratio=0 or call the denoiser from its pipeline"
            )
        # the epsilon keeps 0.2 · 20 at 4, not 5 after a float rounding above 4
        return math.ceil(self.warmup_ratio * num_steps - 1e-9)

    def check_model(self, adapter, model) -> None:
        if adapter.unet:
            raise ValueError(
                f"policy: ForecastCache works on video transformers (DiTs); {adapter.family} is a video UNet: "
                "use DeepCache"
            )

    def new_state(self, run: RunContext) -> ForecastCacheState:
        layout = CHANNELS_FIRST if run.adapter is None else run.adapter.layout
        return ForecastCacheState(run=run, layout=layout)

    def should_compute(self, state: ForecastCacheState, call: CallInfo, x: Tensor) -> bool:
        if state.criterion is None:
            state.criterion = EasyCache(threshold=self.threshold, warmup_steps=self.warmup_steps(call.num_steps))
            state.schedule = state.criterion.new_state(state.run)
        schedule = state.schedule
        # EasyCache adds ε_t to E; here E gets ε_t · g^p instead (g: steps since the branch's last
        # compute), through the criterion's own ε weight: one decision, one host sync
        gap = None
        if call.leader and self.gap_power != 0 and state.steps.get(call.branch):
            gap = call.step - state.steps[call.branch][-1]
            schedule.eps_scale = float(gap) ** self.gap_power
        compute = state.criterion.should_compute(schedule, call, x)
        schedule.eps_scale = 1.0
        if gap is not None and call.step in schedule.epsilons:  # the weight was used (not a forced step)
            state.gaps[call.step] = gap
        return compute

    def after_compute(self, state: ForecastCacheState, call: CallInfo, x: Tensor, out: Tensor) -> None:
        steps = state.steps.setdefault(call.branch, [])
        slot = 0 if not steps else 1 - state.newest[call.branch]  # the older slot (or the first)
        # EasyCache keys its one Δ by the call's branch: naming the slot in the branch makes it
        # write this compute's Δ there, beside the previous one
        state.criterion.after_compute(state.schedule, replace(call, branch=(call.branch, slot)), x, out)
        state.newest[call.branch] = slot
        steps.append(call.step)
        del steps[:-2]

    def after_call(self, state: ForecastCacheState, call: CallInfo, x: Tensor) -> None:
        state.criterion.after_call(state.schedule, call, x)

    def forecast_weight(self, state: ForecastCacheState, call: CallInfo) -> Optional[float]:
        """w = (t − t_{k−1}) / (t_k − t_{k−1}) of ``lerp(Δ_{k−1}, Δ_k, w)`` for this reused call;
        None: hold Δ_k (order 0, or the branch has one compute so far)."""
        steps = state.steps.get(call.branch, [])
        if self.order == 0 or len(steps) < 2:
            return None
        older, newer = steps
        return (call.step - older) / (newer - older)

    def reused_output(self, state: ForecastCacheState, call: CallInfo, x: Tensor) -> Tensor:
        store = state.run.store
        newest = state.newest[call.branch]
        w = self.forecast_weight(state, call)
        state.weights[(call.step, call.branch)] = w
        if w is None:  # EasyCache's output: x_t + Δ_k, dequantised in the fused op
            delta, scale = store.get(delta_key(call.branch, newest))
            return torch.ops.lightcache.reuse(state.layout.latent_part(x, delta), delta, scale)
        prev = store.load(delta_key(call.branch, 1 - newest))
        last = store.load(delta_key(call.branch, newest))
        forecast = torch.ops.lightcache.lerp(prev, last, w)
        return torch.ops.lightcache.reuse(state.layout.latent_part(x, forecast), forecast)
