"""PreciseCache's BlockCache window (issue 12b): the paper recomputes the pivotal blocks "for the
next L computed steps" after a ranking step, so a window is 1 refresh (every block runs, blocks
re-ranked) + L pivotal-only computed steps, counted per branch over computed steps only (steps
LFCache reuses do not count). Decision sequences against that formula, without a model (< 1 s)."""

import math

import pytest
import torch

import lightcache.ops  # noqa: F401  (registers torch.ops.lightcache.*)
from lightcache.adapters.base import ModelAdapter
from lightcache.memory.store import DeviceStore
from lightcache.policies import PreciseCache
from lightcache.policies.base import CallInfo, RunContext

SCALES = [0.01, 0.5, 0.02, 0.3, 0.05, 0.2]  # mean|D_j| ranks blocks 1, 3, 5, 4, 2, 0


class Block(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, hidden_states):  # the one-stream adapter's input name
        return hidden_states + self.scale  # D_j = scale exactly: the ranking is SCALES'


class Scripted(PreciseCache):
    """PreciseCache whose LFCache decisions are given (``plan[t]``: compute step t): the window
    is then exercised under reused steps without crafting signals."""

    def _lead(self, state, call, x):
        compute = PLAN[call.step]
        state.decisions[call.step] = compute
        return compute


PLAN = {}


def drive(policy, computed, branches=("cond", "uncond")):
    """Run ``len(computed)`` steps as the engine does; returns, per (step, branch), the blocks that
    ran (None for a reused step)."""
    PLAN.clear()
    PLAN.update(enumerate(computed))
    blocks = [Block(s) for s in SCALES]
    run = RunContext(store=DeviceStore(), adapter=ModelAdapter(family="fake", model_classes=()), num_blocks=len(blocks))
    state = policy.new_state(run)
    ran = {}
    n = len(computed)
    for t in range(n):
        for i, br in enumerate(branches):
            call = CallInfo(step=t, num_steps=n, branch=br, leader=i == 0)
            x = torch.zeros(1)
            if not policy.should_compute(state, call, x):
                policy.reused_output(state, call, x)
                ran[t, br] = None
                continue
            h = torch.full((2, 3), float(t + 1) * (1 if br == "cond" else -1))
            ran[t, br] = []
            for j, blk in enumerate(blocks):
                out = policy.block_begin(state, call, j, blk, (h,), {})
                if out is None:
                    ran[t, br].append(j)
                    out = policy.block_end(state, call, j, blk, (h,), {}, blk(h))
                h = out
            policy.after_compute(state, call, x, h)
    return ran


def expected(computed, L, ratio):
    """The formula: the k-th computed step of a branch (k = 0, 1, ...) refreshes iff k % (L + 1) == 0."""
    pivotal = sorted(sorted(range(len(SCALES)), key=lambda j: -SCALES[j])[: max(1, math.ceil(ratio * len(SCALES)))])
    out, k = [], 0
    for c in computed:
        if not c:
            out.append(None)
            continue
        out.append(list(range(len(SCALES))) if k % (L + 1) == 0 else pivotal)
        k += 1
    return out


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_window_is_one_refresh_then_L_pivotal_steps(L):
    n = 13
    computed = [True] * n
    ran = drive(Scripted(mode="flash", block_ratio=0.4, refresh_steps=L, signal="input"), computed)
    want = expected(computed, L, 0.4)
    for br in ("cond", "uncond"):
        assert [ran[t, br] for t in range(n)] == want
    # the flash default, L = 3: refreshes at computed steps 0, 4, 8, 12
    if L == 3:
        assert [t for t in range(n) if ran[t, "cond"] == list(range(6))] == [0, 4, 8, 12]


@pytest.mark.parametrize("L", [1, 3])
def test_reused_steps_do_not_count_in_the_window(L):
    computed = [True, True, False, True, False, False, True, True, True, False, True, True]
    ran = drive(Scripted(mode="flash", block_ratio=0.5, refresh_steps=L, signal="input"), computed)
    want = expected(computed, L, 0.5)
    for br in ("cond", "uncond"):
        assert [ran[t, br] for t in range(len(computed))] == want


def test_flash_block_work_per_window():
    # flash: 40 % pivotal of 6 blocks = 3 (ceil), L = 3: (6 + 3·3) blocks per 4 computed steps
    computed = [True] * 8
    ran = drive(Scripted(mode="flash", signal="input"), computed, branches=("joint",))
    assert sum(len(ran[t, "joint"]) for t in range(8)) == 2 * (6 + 3 * 3)


class StoresEverything(Scripted):
    """The former BlockCache: every computed block's residual stored, pivotal-only calls included."""

    def block_end(self, state, call, index, block, args, kwargs, out):
        if state.refreshing.get(call.branch, True):
            return super().block_end(state, call, index, block, args, kwargs, out)
        adapter = state.run.adapter
        for s, (o, i) in enumerate(zip(adapter.output_streams(out), adapter.block_streams(block, args, kwargs))):
            state.store.put((call.branch, "block", index, s), o - i)
        return out


class Counting(DeviceStore):
    def __init__(self):
        super().__init__()
        self.block_puts = []

    def put(self, key, value):
        if key[1] == "block":
            self.block_puts.append(key)
        return super().put(key, value)


@pytest.mark.parametrize("computed", [[True] * 9, [True, True, False, True, False, True, True, True, True]])
def test_pivotal_only_calls_store_no_residual_and_change_nothing(computed, monkeypatch):
    """A pivotal-only call's residuals are never read (the window reuses the refresh call's D_j;
    the next refresh stores every block again): such calls store none (with swap: no copy to the
    host), refresh calls store every block, and the blocks run and the final latents are those of
    a policy that stores every computed residual, exactly."""
    results = {}
    for cls in (Scripted, StoresEverything):
        store = Counting()
        monkeypatch.setattr("test_precisecache_window.DeviceStore", lambda: store)
        ran = drive(cls(mode="flash", block_ratio=0.5, refresh_steps=2, signal="input"), computed)
        results[cls] = (ran, store)
    (ran, store), (ran_all, store_all) = results[Scripted], results[StoresEverything]
    assert ran == ran_all
    refreshes = [(t, br) for (t, br), blocks in ran.items() if blocks == list(range(len(SCALES)))]
    pivotal_only = [(t, br) for (t, br), blocks in ran.items() if blocks and blocks != list(range(len(SCALES)))]
    assert refreshes and pivotal_only
    assert len(store.block_puts) == len(refreshes) * len(SCALES)
    assert len(store_all.block_puts) == len(store.block_puts) + sum(len(ran[k]) for k in pivotal_only)
