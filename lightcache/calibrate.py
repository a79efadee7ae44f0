"""Calibration: the policy setting that hits a target speed-up on one pipeline (issue 12c).

``calibrate(pipe, policy, target_speedup=2.0, **call_kwargs)`` runs the pipeline with the caller's
call arguments a few times and returns a :class:`Calibration`: the policy with its knob set, and
what the runs measured. The speed-up here is block work: 1 / ``Report.block_compute_ratio`` (the
fraction of the denoiser's block work that ran; the policy's own cost, e.g. PreciseCache's trial
forward, is not in it).

1. Recording run, lossless: EasyCache at threshold 0, PreciseCache at alpha 0 (every step
   computed, the per-step criterion recorded: EasyCache's ε_t, PreciseCache's s_t), DeepCache at
   interval 1. It gives the number of steps, of calls and of blocks.
2. The knob is picked from that recording. EasyCache / PreciseCache: the decisions the policy's
   rule would make on the recorded criterion are replayed for every threshold at which they can
   change (the partial sums of consecutive criterion values: E = Σ ε for EasyCache, A / max s for
   PreciseCache), and the threshold in the middle of the interval whose predicted block ratio is
   closest to 1 / target is taken. DeepCache: the predicted ratio of each interval follows from
   its full steps and the blocks a partial call runs; the closest interval is taken.
3. Verification run with the picked setting; its report's ratio is the measured figure. Reusing
   steps changes the trajectory, so the criterion of the verification run differs from the
   recording: while the measured ratio misses 1 / target by more than ``tolerance`` and runs are
   left (``max_runs``), the threshold moves to the next candidate in the direction that closes the
   gap and the pipeline runs again. The setting whose measured ratio came closest is returned.

The pipeline is left as it was: lightcache is disabled after every run (a pipeline that already has
lightcache enabled is refused, since its configuration could not be put back as it was), and a
``generator`` in the call arguments is rewound before every run (every run starts from the same
noise) and left in the state it had.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from lightcache.policies.base import check_float, check_int
from lightcache.policies.deepcache import DeepCache
from lightcache.policies.easycache import EasyCache
from lightcache.policies.forecast import ForecastCache
from lightcache.policies.precisecache import PreciseCache
from lightcache.reporting import Report


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found.

    policy: the calibrated policy (the given one with its threshold / alpha / interval set).
    target_speedup: what was asked; ``1 / target_speedup`` is the block ratio aimed at.
    predicted_ratio: the block compute ratio the recording predicted for ``policy``.
    measured_ratio: ``report.block_compute_ratio`` of the run with ``policy``.
    report: that run's Report.
    runs: pipeline calls made (the recording included).
    max_speedup: the largest speed-up the policy's rule allows on this pipeline as recorded
        (warm-up, forced last step, alpha <= 1, one full step).
    """

    policy: object
    target_speedup: float
    predicted_ratio: float
    measured_ratio: float
    report: Report
    runs: int
    max_speedup: float

    @property
    def measured_speedup(self) -> float:
        """1 / measured_ratio (block work)."""
        return math.inf if self.measured_ratio == 0 else 1.0 / self.measured_ratio


def calibrate(pipe, policy, target_speedup: float = 2.0, *, tolerance: float = 0.05, max_runs: int = 4,
              memory=None, **call_kwargs) -> Calibration:
    """Set ``policy``'s knob so that ``pipe(**call_kwargs)`` runs 1 / ``target_speedup`` of its
    block work (the module docstring has the method).

    Args:
        pipe: a diffusers pipeline lightcache supports, without lightcache enabled.
        policy: an EasyCache or ForecastCache (its ``threshold`` is set), PreciseCache
            (``alpha``) or DeepCache (``interval``); its other fields are kept.
        target_speedup (float, defaults to 2.0): 1 / the block compute ratio aimed at, >= 1 (1:
            the lossless setting).
        tolerance (float, defaults to 0.05): stop when |measured ratio − 1 / target| <= this, in
            [0, 1].
        max_runs (int, defaults to 4): pipeline calls at most, the recording included, >= 2.
        memory: a MemoryPlan to run under (lightcache.enable's ``memory``), or None.
        **call_kwargs: the pipeline call's arguments, as for ``pipe(**call_kwargs)``.

    Raises:
        TypeError: a policy calibrate cannot set, or an argument of the wrong type.
        ValueError: a target below 1 or above what the policy allows on this pipeline (the
            message says the maximum), an argument out of range, a pipeline with lightcache
            already enabled.
    """
    from lightcache import api

    target = check_float("calibrate", "target_speedup", target_speedup, lo=1.0)
    tolerance = check_float("calibrate", "tolerance", tolerance, lo=0.0, hi=1.0)
    max_runs = check_int("calibrate", "max_runs", max_runs, lo=2)
    if not isinstance(policy, (EasyCache, ForecastCache, PreciseCache, DeepCache)):
        raise TypeError(
            "calibrate: policy must be an EasyCache, ForecastCache, PreciseCache or DeepCache, got "
            f"{type(policy).__name__}"
        )
    denoisers, _ = api._resolve(pipe)
    from lightcache.engine import session_of

    if any(session_of(d) is not None for d in denoisers):
        raise ValueError(
            "calibrate: lightcache is already enabled on this pipeline; call lightcache.disable(pipe) first "
            "(calibrate enables and disables it itself, and leaves the pipeline as it found it)"
        )
    runner = _Runner(pipe, memory, call_kwargs)
    try:
        return _calibrate(runner, policy, target, tolerance, max_runs)
    finally:
        runner.restore()


# ---------------------------------------------------------------------------------------------
# running the pipeline
# ---------------------------------------------------------------------------------------------


class _Runner:
    """Runs the pipeline with lightcache enabled, rewinding the caller's generators each time."""

    def __init__(self, pipe, memory, call_kwargs):
        self.pipe, self.memory, self.kwargs = pipe, memory, call_kwargs
        gens = call_kwargs.get("generator")
        gens = gens if isinstance(gens, (list, tuple)) else [gens]
        self.generators = [(g, g.get_state()) for g in gens if isinstance(g, torch.Generator)]
        self.runs = 0

    def __call__(self, policy, states: Optional[list] = None) -> Report:
        from lightcache import api

        for g, state in self.generators:
            g.set_state(state)
        if states is not None:
            policy = _recording(policy, states)
        api.enable(self.pipe, policy=policy, memory=self.memory)
        try:
            self.runs += 1
            self.pipe(**self.kwargs)
            return api.report(self.pipe)
        finally:
            api.disable(self.pipe)

    def restore(self) -> None:
        for g, state in self.generators:
            g.set_state(state)


def _recording(policy, states: list):
    """``policy`` as an instance of a subclass whose new_state also hands the run's state to
    ``states`` (the recorded criterion lives there)."""
    cls = type(policy)
    recording = type(cls.__name__, (cls,), {"new_state": lambda self, run: _keep(states, cls.new_state(self, run))})
    return recording(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)})


def _keep(states: list, state):
    states.append(state)
    return state


# ---------------------------------------------------------------------------------------------
# the knob
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """What the recording run says about the pipeline."""

    steps: int  # denoising steps
    calls: Tuple[Tuple[int, str], ...]  # (step, branch) of every denoiser call, in order
    blocks: int  # hooked blocks per call


def _shape(report: Report) -> _Shape:
    if not report.decisions:
        raise ValueError("calibrate: the pipeline call made no denoiser call (nothing to calibrate)")
    calls = tuple((d.step, d.branch) for d in report.decisions)
    return _Shape(steps=max(s for s, _ in calls) + 1, calls=calls, blocks=report.num_blocks)


def _calibrate(run: _Runner, policy, target: float, tolerance: float, max_runs: int) -> Calibration:
    goal = 1.0 / target
    states: list = []
    if isinstance(policy, (EasyCache, ForecastCache)):
        # ForecastCache's schedule is EasyCache's, made by the EasyCache in its state
        recorded = run(dataclasses.replace(policy, threshold=0.0), states)
        state = states[-1].schedule if isinstance(policy, ForecastCache) else states[-1]
        knob = _EasyKnob(policy, _shape(recorded), state)
    elif isinstance(policy, PreciseCache):
        recorded = run(dataclasses.replace(policy, alpha=0.0), states)
        knob = _PreciseKnob(policy, _shape(recorded), states[-1])
    else:
        recorded = run(dataclasses.replace(policy, interval=1))
        knob = _DeepKnob(policy, _shape(recorded), run.pipe)
    candidates = knob.candidates()  # [(setting, predicted ratio)], from most to least block work
    best_ratio = min(r for _, r in candidates)
    max_speedup = math.inf if best_ratio == 0 else 1.0 / best_ratio
    if goal < best_ratio - 1e-12:
        raise ValueError(
            f"calibrate: target_speedup={target} is above what {type(policy).__name__} allows on this pipeline "
            f"({knob.limit}): at most {max_speedup:.4g}x of block work ({best_ratio:.4g} of it run)"
        )
    i = min(range(len(candidates)), key=lambda k: (abs(candidates[k][1] - goal), k))
    tried = {}
    best = None
    while True:
        setting, predicted = candidates[i]
        report = run(knob.policy(setting))
        measured = report.block_compute_ratio
        tried[i] = measured
        result = Calibration(policy=knob.policy(setting), target_speedup=target, predicted_ratio=predicted,
                             measured_ratio=measured, report=report, runs=run.runs, max_speedup=max_speedup)
        if best is None or abs(measured - goal) < abs(best.measured_ratio - goal):
            best = result
        if abs(measured - goal) <= tolerance or run.runs >= max_runs:
            break
        # too much work ran: a candidate further on (more reuse); too little: one back
        step = 1 if measured > goal else -1
        j = i + step
        while 0 <= j < len(candidates) and candidates[j][1] == candidates[i][1] and j not in tried:
            j += step  # settings the recording could not tell apart: skip to the next distinct one
        if not 0 <= j < len(candidates) or j in tried:
            break
        i = j
    return dataclasses.replace(best, runs=run.runs)


def _midpoints(values: Sequence[float], hi: float = math.inf) -> List[float]:
    """Thresholds between (and around) the sorted distinct breakpoints ``values`` (kept <= hi)."""
    points = sorted({v for v in values if math.isfinite(v) and 0 <= v <= hi})
    out = [0.0]
    for a, b in zip(points, points[1:] + [None]):
        if b is None:
            out.append(min(hi, a * 2 if a > 0 else 1.0) if hi == math.inf else hi)
        else:
            out.append((a + b) / 2)
    return sorted(set(out))


class _EasyKnob:
    limit = "its warm-up, the forced last step and the two full computes the rate needs"

    def __init__(self, policy: EasyCache, shape: _Shape, state):
        self.base, self.shape = policy, shape
        # ε_t of the recording (every step computed): the criterion as the rule would accumulate it
        self.eps = {t: float(e) for t, e in state.epsilons.items()}
        # ForecastCache weighs ε_t by g^p in E, g the steps since the last compute (EasyCache: p = 0)
        self.power = policy.gap_power if isinstance(policy, ForecastCache) else 0.0

    def policy(self, threshold):
        return dataclasses.replace(self.base, threshold=threshold)

    def computed_steps(self, tau: float) -> List[bool]:
        n, out, acc, last = self.shape.steps, [], 0.0, 0  # last: the step of the last compute
        for t in range(n):
            if t not in self.eps or t == n - 1:  # forced: warm-up, no rate yet, last step
                compute = True
            else:
                acc += self.eps[t] * (t - last) ** self.power
                compute = not acc < tau
            if compute:
                acc, last = 0.0, t
            out.append(compute)
        return out

    def candidates(self):
        ts = sorted(self.eps)
        # E over reused steps ts[i..j] after a compute at ts[i] − 1
        sums = [sum(self.eps[t] * (t - ts[i] + 1) ** self.power for t in ts[i:j + 1])
                for i in range(len(ts)) for j in range(i, len(ts))]
        out = []
        for tau in _midpoints(sums):
            steps = self.computed_steps(tau)
            out.append((tau, _ratio(self.shape, lambda step, branch, k: self.shape.blocks if steps[step] else 0)))
        return out


class _PreciseKnob:
    limit = "alpha <= 1, its warm-up and the forced last step"

    def __init__(self, policy: PreciseCache, shape: _Shape, state):
        self.base, self.shape = policy, shape
        self.signals = {t: float(s) for t, s in state.signals.items()}
        pivotal = self.shape.blocks if not policy.block_level else max(1, math.ceil(policy.block_ratio * shape.blocks))
        self.pivotal = pivotal

    def policy(self, alpha):
        return dataclasses.replace(self.base, alpha=alpha)

    def computed_steps(self, alpha: float) -> List[bool]:
        n, out, acc, peak = self.shape.steps, [], 0.0, 0.0
        for t in range(n):
            compute = True
            if t in self.signals:
                s = self.signals[t]
                peak = max(peak, s)
                acc += s
                compute = acc > alpha * peak
            if t == n - 1 and self.base.compute_last:
                compute = True
            if compute:
                acc = 0.0
            out.append(compute)
        return out

    def candidates(self):
        ts = sorted(self.signals)
        ratios = []
        for i in range(len(ts)):
            for j in range(i, len(ts)):
                peak = max(self.signals[t] for t in ts[: j + 1])
                if peak > 0:
                    ratios.append(sum(self.signals[t] for t in ts[i:j + 1]) / peak)
        out = []
        L = self.base.refresh_steps
        for alpha in _midpoints(ratios, hi=1.0):
            steps = self.computed_steps(alpha)

            def blocks(step, branch, k, steps=steps):
                if not steps[step]:
                    return 0
                return self.shape.blocks if k % (L + 1) == 0 else self.pivotal  # BlockCache's window

            out.append((alpha, _ratio(self.shape, blocks)))
        return out


class _DeepKnob:
    limit = "one full step in the run"

    def __init__(self, policy: DeepCache, shape: _Shape, pipe):
        from lightcache.api import _resolve

        self.base, self.shape = policy, shape
        model = _resolve(pipe)[0][0]
        r = policy._roles_of(model)
        # blocks a partial call runs: those before the branch's down block, the down block unless
        # it is skipped whole, the branch's up block and every block after it
        self.partial = r.down + (0 if r.down_skip is None else 1) + (shape.blocks - r.up)

    def policy(self, interval):
        return dataclasses.replace(self.base, interval=interval)

    def candidates(self):
        out = []
        for interval in range(1, self.shape.steps + 1):
            try:
                full = self.policy(interval).full_steps(self.shape.steps)
            except ValueError:  # a non-uniform schedule with no solution at this interval
                continue
            full = set(range(self.shape.steps)) if full is None else full
            out.append((interval, _ratio(self.shape, lambda step, branch, k: self.shape.blocks if step in full
                                          else self.partial)))
        return out


def _ratio(shape: _Shape, blocks) -> float:
    """Predicted block compute ratio: ``blocks(step, branch, k)`` blocks run by each call (k: the
    computed calls of that branch before it)."""
    done, counts = 0, {}
    for step, branch in shape.calls:
        k = counts.get(branch, 0)
        b = blocks(step, branch, k)
        if b:
            counts[branch] = k + 1
        done += b
    return done / (len(shape.calls) * shape.blocks)
