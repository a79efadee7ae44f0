"""Caching policies at their worst-case residency, with decisions that read no values.

A simulation runs on meta tensors, so a decision that reads a value (EasyCache's accumulated
error, LFCache's low-frequency signal, BlockCache's ranking) cannot be made. :func:`worst_case`
returns the policy with those decisions forced to the pattern that holds the most device memory;
everything else is the policy's own code (its store puts, its trial forward, its reuse ops). A
pipeline keeps the previous step's denoiser output alive while the next call runs (the loop
rebinds it only when the call returns), and after a reused step that output is the reuse's own
tensor, distinct from the cached prediction: so the patterns have a computed call right after a
computed one and right after a reused one.

* EasyCache (4 steps: computed, computed, reused, computed): the forwards of the 2nd and 4th steps
  run while the store holds Δ of every branch and x_i, v_i of the last full compute -- every
  feature EasyCache keeps -- the 4th with the reused outputs x_t + Δ of the step before alive.
* PreciseCache (5 steps: computed, computed, reused, computed, computed): the trial forward runs at
  every step from the second (its pooled prediction F_{t-1} stays held, as in a real run); the
  reused step returns the cached prediction's copy; BlockCache (flash) refreshes at the first three
  computed calls of each branch -- the 2nd and 3rd run every block while D_j of every block, stream
  and branch and the cached predictions are held, the 3rd with the reused outputs alive too -- and
  the 4th reuses blocks with a fixed ranking: ceil(block_ratio * blocks) pivotal blocks at odd
  indices (1, 3, 5, ...), so every pivotal block computes while the next reused block's residuals
  are prefetched (what a swapped cache holds on the device at most while a block computes).
* ForecastCache (5 steps: computed, computed, computed, reused, computed): the 3rd forward runs with
  both Δ slots of every branch filled and x_i, v_i held (every feature it keeps), the reused 4th
  forecasts from both Δs, and the 5th runs with the forecast outputs alive.
* DeepCache (3 steps: full, full, shallow): the second runs while the previous deep feature is held;
  with swapping, the deep feature is prefetched during the shallow blocks.

Later steps repeat these patterns. The same policies run for real on CPU (tests/test_simulate.py),
where the tracker measures what the simulation counts, and a real run's peaks stay at or below them.
"""

from __future__ import annotations

import dataclasses
import math

from lightcache.policies import DeepCache, EasyCache, ForecastCache, PreciseCache

SIM_STEPS = 5  # the most denoising steps a pattern above needs
_REUSED_STEP = 2  # the step the EasyCache and PreciseCache patterns reuse
_FORECAST_STEP = 3  # ForecastCache's: after two computes past the first, both Δ slots are full


def steps_for(policy) -> int:
    """Denoising steps that reach every worst-case pattern of ``policy`` (uncached: 3, so that a
    multistep scheduler's history is as long as it gets for second-order solvers)."""
    if isinstance(policy, (PreciseCache, ForecastCache)):
        return 5
    return 4 if isinstance(policy, EasyCache) else 3


class WorstEasyCache(EasyCache):
    """EasyCache with steps computed, computed, reused, computed (see the module doc)."""

    def should_compute(self, state, call, x):
        if not call.leader:
            return state.decisions.get(call.step, True)
        compute = call.step != _REUSED_STEP or not state.has_last
        state.decisions[call.step] = compute
        return compute


class WorstForecastCache(ForecastCache):
    """ForecastCache with steps computed, computed, computed, reused, computed (module doc); its
    EasyCache records x_i, v_i and the rate's partial sums as in a real run."""

    def should_compute(self, state, call, x):
        if state.criterion is None:
            state.criterion = EasyCache(threshold=self.threshold, warmup_steps=0)
            state.schedule = state.criterion.new_state(state.run)
        decisions = state.schedule.decisions
        if not call.leader:
            return decisions.get(call.step, True)
        compute = call.step != _FORECAST_STEP or len(state.steps.get(call.branch, [])) < 2
        decisions[call.step] = compute
        return compute


class WorstPreciseCache(PreciseCache):
    """PreciseCache with value-free decisions at its worst-case residency (see the module doc)."""

    def _lead(self, state, call, x):
        f = self._signal_input(state, x) if call.step >= 1 else None
        state.prev_signal_input = None if f is None else f.detach()
        compute = call.step != _REUSED_STEP
        state.decisions[call.step] = compute
        return compute

    def _begin_computed_call(self, state, call):
        n = state.computed_count.get(call.branch, 0)
        state.computed_count[call.branch] = n + 1
        refresh = n < 3 or not self.block_level
        state.refreshing[call.branch] = refresh
        if refresh:
            state.block_scores = {k: v for k, v in state.block_scores.items() if k[0] != call.branch}
        else:
            self._prefetch_next(state, call, 0)

    def _rank(self, state, branch):
        n = state.run.num_blocks
        keep = max(1, math.ceil(self.block_ratio * n))
        order = list(range(1, n, 2)) + list(range(0, n, 2))
        state.pivotal[branch] = set(order[:keep])
        state.block_scores = {k: v for k, v in state.block_scores.items() if k[0] != branch}


class WorstDeepCache(DeepCache):
    """DeepCache with steps full, full, shallow (see the module doc)."""

    def should_compute(self, state, call, x):
        roles = self._roles(state)
        if call.leader:
            state.full[call.step] = call.step < 2 or not self._has_cache(state, call)
        if not state.full.get(call.step, True) and roles.cache_at is not None:
            state.store.prefetch(self._cache_key(call))  # as DeepCache does: overlaps the shallow blocks
        return True


def worst_case(policy):
    """The worst-case-residency version of ``policy`` (None stays None)."""
    if policy is None:
        return None
    if isinstance(policy, (WorstEasyCache, WorstForecastCache, WorstPreciseCache, WorstDeepCache)):
        return policy
    if not isinstance(policy, (EasyCache, ForecastCache, PreciseCache, DeepCache)):
        raise TypeError(f"policy: no worst case is known for {type(policy).__name__}")
    fields = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}
    if isinstance(policy, EasyCache):
        return WorstEasyCache(**fields)
    if isinstance(policy, ForecastCache):
        return WorstForecastCache(**fields)
    if isinstance(policy, PreciseCache):
        return WorstPreciseCache(**fields)
    if isinstance(policy, DeepCache):
        return WorstDeepCache(**fields)
    raise TypeError(f"policy: no worst case is known for {type(policy).__name__}")


ASSUMPTION = {
    "EasyCache": "steps computed, computed, reused, computed: the 2nd and 4th forwards run with Δ of every branch "
                 "and x_i, v_i held (every feature EasyCache keeps), the 4th with the reused outputs alive",
    "PreciseCache": "steps computed, computed, reused, computed, computed; trial forward every step from the 2nd "
                    "(F_{t-1} held); BlockCache refreshes at the first 3 computed calls of each branch (the 2nd and "
                    "3rd with D_j of every block, stream and branch and the cached predictions held, the 3rd also "
                    "with the reused outputs), then reuses with pivotal blocks at odd indices (each computes with "
                    "the next reused block's residuals prefetched)",
    "ForecastCache": "steps computed, computed, computed, reused, computed: the 3rd forward with both Δ slots of "
                     "every branch and x_i, v_i held, the reused 4th forecast from both, the 5th with its outputs alive",
    "DeepCache": "steps full, full (with the previous deep feature held), shallow (deep feature prefetched)",
}
