"""Policy decision sequences against an independent step-by-step evaluation of each formula
(docs/design.md §3), on recorded (x_t, v_t) trajectories, without a model."""

import math

import pytest
import torch

import lightcache.ops  # noqa: F401
from lightcache.memory.store import DeviceStore
from lightcache.policies import DeepCache, EasyCache, PreciseCache
from lightcache.policies.base import CallInfo, RunContext


def trajectory(n=20, shape=(1, 4, 2, 8, 8), seed=0):
    """A recorded (x_t, v_t) trajectory with large early and small late changes, like a real one."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(shape, generator=g)]
    v = []
    base = torch.randn(shape, generator=g)
    for t in range(n):
        scale = math.exp(-t / 4.0)
        v.append(base + scale * torch.randn(shape, generator=g))
        x.append(x[-1] - 0.1 * (0.2 + scale) * v[-1] + 0.05 * scale * torch.randn(shape, generator=g))
    return x[:n], v


def mean_abs(t):
    return t.abs().double().mean().item()


def easycache_reference(xs, vs, tau, warmup):
    """EasyCache as written in docs/design.md §3.1, in plain Python."""
    n = len(xs)
    decisions, E, k, last = [], 0.0, None, None  # last = (x_i, v_i)
    for t in range(n):
        forced = t < warmup or t == n - 1 or k is None
        if forced:
            compute = True
        else:
            eps = k * mean_abs(xs[t] - xs[t - 1]) / mean_abs(last[1])
            E += eps
            compute = not E < tau  # the authors' rule: reuse only while E < τ (a NaN E computes)
        if compute:
            E = 0.0
            if last is not None:
                dx = mean_abs(xs[t] - last[0])
                k = mean_abs(vs[t] - last[1]) / dx if dx > 0 else math.inf
            last = (xs[t], vs[t])
        decisions.append(compute)
    return decisions


def drive(policy, xs, vs, branches=("cond",), with_blocks=None):
    """Run a policy through a trajectory as the engine would; returns the leader's decisions and outputs."""
    state = policy.new_state(_run(len(with_blocks) if with_blocks else 0))
    decisions, outputs = [], []
    n = len(xs)
    for t in range(n):
        for bi, br in enumerate(branches):
            call = CallInfo(step=t, num_steps=n, branch=br, leader=bi == 0)
            compute = policy.should_compute(state, call, xs[t])
            if compute:
                out = vs[t] if br == "cond" else vs[t] * 0.5
                policy.after_compute(state, call, xs[t], out)
            else:
                out = policy.reused_output(state, call, xs[t])
            if hasattr(policy, "after_call"):
                policy.after_call(state, call, xs[t])
            if bi == 0:
                decisions.append(compute)
                outputs.append(out)
            else:
                assert compute == decisions[-1], "the uncond branch must follow the cond decision"
    return decisions, outputs, state


@pytest.mark.parametrize("tau,warmup", [(0.05, 3), (0.2, 2), (0.5, 5), (1e9, 2)])
def test_easycache_decisions_match_formula(tau, warmup):
    xs, vs = trajectory()
    got, _, _ = drive(EasyCache(threshold=tau, warmup_steps=warmup), xs, vs)
    assert got == easycache_reference(xs, vs, tau, warmup)
    assert all(got[:warmup]) and got[-1]


def test_easycache_reuses_and_outputs_x_plus_delta():
    xs, vs = trajectory()
    decisions, outputs, _ = drive(EasyCache(threshold=0.3, warmup_steps=2), xs, vs, branches=("cond", "uncond"))
    assert not all(decisions), "this threshold must reuse some steps"
    last = None
    for t, (c, out) in enumerate(zip(decisions, outputs)):
        if c:
            last = vs[t] - xs[t]
            assert torch.equal(out, vs[t])
        else:
            torch.testing.assert_close(out, xs[t] + last, rtol=0, atol=1e-6)


def test_easycache_nan_accumulation_computes_and_resets():
    """Identical inputs at two full computes give k = inf; an unchanged input next gives
    ε = inf · 0 = NaN. The step must be computed (reuse only while E < τ) and E reset, so that
    reuse resumes once the rate is finite again (before the fix every step up to the last reused)."""
    shape = (1, 4, 2, 8, 8)
    a = torch.full(shape, 0.5)
    xs = [a, a, a, a + 1.0, a + 1.0 + 1e-3, a + 1.0 + 2e-3]
    vs = [torch.full(shape, 1.0 + 0.1 * t) for t in range(len(xs))]
    policy = EasyCache(threshold=0.05, warmup_steps=0)
    state = policy.new_state(RunContext(store=DeviceStore(), adapter=None))
    got, accumulated = [], []
    for t, (x, v) in enumerate(zip(xs, vs)):
        call = CallInfo(step=t, num_steps=len(xs), branch="cond", leader=True)
        compute = policy.should_compute(state, call, x)
        accumulated.append(state.accumulated)
        if compute:
            policy.after_compute(state, call, x, v)
        else:
            policy.reused_output(state, call, x)
        policy.after_call(state, call, x)
        got.append(compute)
    # steps 0, 1: no rate yet; 2: NaN computes; 3: inf computes; 4: k·1e-3/1.3 < τ reuses; 5: last
    assert got == [True, True, True, True, False, True]
    assert got == easycache_reference(xs, vs, 0.05, 0)
    assert math.isnan(state.epsilons[2].item())  # the case itself: ε_2 = inf · 0
    assert math.isinf(state.epsilons[3].item())  # k still inf (x_2 == x_1), mean|x_3 − x_2| = 1
    assert state.rate.item() == pytest.approx(0.1, rel=1e-5)  # from steps 2, 3: mean|Δv| 0.1 / mean|Δx| 1
    assert accumulated[2] is None and accumulated[3] is None  # E reset after each computed step
    torch.testing.assert_close(state.epsilons[4], torch.tensor(0.1 * 1e-3 / 1.3), rtol=1e-4, atol=0)


def test_easycache_threshold_zero_never_reuses():
    xs, vs = trajectory()
    decisions, _, _ = drive(EasyCache(threshold=0.0, warmup_steps=0), xs, vs)
    assert all(decisions)


def lfcache_reference(signals_f, alpha, warm, n, compute_last=True):
    """LFCache as written in the PreciseCache docstring: A += s_t; compute when A > α·max s."""
    from lightcache.reference import lowfreq_energy

    decisions, A, mx, prev = [], 0.0, 0.0, None
    for t in range(n):
        compute = True
        f = signals_f[t] if t >= warm - 1 else None
        if t >= warm and prev is not None:
            s = float(lowfreq_energy(f, prev, 0.2))
            mx = max(mx, s)
            A += s
            compute = A > alpha * mx
        if t == n - 1 and compute_last:
            compute = True
        if compute:
            A = 0.0
        prev = f
        decisions.append(compute)
    return decisions


@pytest.mark.parametrize("mode", ["base", "turbo"])
def test_lfcache_decisions_match_formula(mode):
    xs, vs = trajectory()
    policy = PreciseCache(mode=mode, signal="input", warmup_ratio=0.15)
    got, _, _ = drive(policy, xs, vs)
    warm = math.ceil(0.15 * len(xs))
    assert got == lfcache_reference(xs, policy.alpha, warm, len(xs))
    assert all(got[:warm]) and got[-1] and not all(got)


def test_lfcache_reused_step_returns_cached_prediction():
    xs, vs = trajectory()
    decisions, outputs, _ = drive(PreciseCache(mode="turbo", signal="input"), xs, vs)
    last = None
    for t, (c, out) in enumerate(zip(decisions, outputs)):
        if c:
            last = vs[t]
        else:
            assert torch.equal(out, last)


def block_call(policy, state, call, j, blk, h, ran=None):
    """One block through a block-level policy, as the engine does it."""
    out = policy.block_begin(state, call, j, blk, (h,), {})
    if out is None:
        if ran is not None:
            ran.append(j)
        out = policy.block_end(state, call, j, blk, (h,), {}, blk(h))
    return out


class _Block(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, hidden_states):
        return hidden_states * (1 + self.scale) + self.scale


def _run(n_blocks=0):
    """The RunContext the engine would hand a policy: a device store, a one-stream adapter."""
    from lightcache.adapters.base import ModelAdapter

    return RunContext(store=DeviceStore(), adapter=ModelAdapter(family="fake", model_classes=()), num_blocks=n_blocks)


def test_blockcache_pivotal_choice_and_refresh_window():
    scales = [0.01, 0.5, 0.02, 0.3, 0.05]  # |D_j| ranks blocks 1, 3 first
    blocks = [_Block(s) for s in scales]
    policy = PreciseCache(mode="flash", block_ratio=0.4, refresh_steps=3, warmup_ratio=1.0, signal="input")  # every step computed
    state = policy.new_state(_run(len(blocks)))
    n = 7
    ran_per_step = []
    for t in range(n):
        call = CallInfo(step=t, num_steps=n, branch="cond", leader=True)
        assert policy.should_compute(state, call, torch.zeros(1))
        h = torch.full((2, 3), float(t + 1))
        ran = []
        for j, blk in enumerate(blocks):
            h = block_call(policy, state, call, j, blk, h, ran)
        ran_per_step.append(ran)
    # refresh steps (0, 4) run every block (1 refresh + L = 3 pivotal-only steps); the others only the top ceil(0.4·5) = 2 by mean|D_j|
    for t, ran in enumerate(ran_per_step):
        assert ran == ([0, 1, 2, 3, 4] if t % 4 == 0 else [1, 3]), (t, ran)


def test_blockcache_reused_block_is_input_plus_cached_residual():
    blocks = [_Block(0.5), _Block(0.01)]
    policy = PreciseCache(mode="flash", block_ratio=0.5, refresh_steps=2, warmup_ratio=1.0, signal="input")
    state = policy.new_state(_run(2))
    outs = []
    for t in range(2):
        call = CallInfo(step=t, num_steps=2, branch="cond", leader=True)
        policy.should_compute(state, call, torch.zeros(1))
        h0 = torch.full((4,), float(t + 1))
        h1 = block_call(policy, state, call, 0, blocks[0], h0)
        h2 = block_call(policy, state, call, 1, blocks[1], h1)
        outs.append((h0, h1, h2))
    # step 1: block 1 is not pivotal → h1 + D_1 where D_1 is the residual recorded at step 0
    d1_step0 = blocks[1](outs[0][1]) - outs[0][1]
    torch.testing.assert_close(outs[1][2], outs[1][1] + d1_step0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(threshold=-0.1), "EasyCache.threshold"),
        (dict(threshold=float("nan")), "EasyCache.threshold"),
        (dict(warmup_steps=-1), "EasyCache.warmup_steps"),
        (dict(warmup_steps=1.5), "EasyCache.warmup_steps"),
    ],
)
def test_easycache_bad_fields(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EasyCache(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="fast"), "PreciseCache.mode"),
        (dict(alpha=1.5), "PreciseCache.alpha"),
        (dict(alpha=float("nan")), "PreciseCache.alpha"),
        (dict(block_ratio=0.0), "PreciseCache.block_ratio"),
        (dict(refresh_steps=0), "PreciseCache.refresh_steps"),
        (dict(signal="full"), "PreciseCache.signal"),
        (dict(trial_downsample=(2, 4)), "PreciseCache.trial_downsample"),
        (dict(radius_ratio=0), "PreciseCache.radius_ratio"),
    ],
)
def test_precisecache_bad_fields(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PreciseCache(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match", [(dict(interval=0), "DeepCache.interval"), (dict(branch=-1), "DeepCache.branch")]
)
def test_deepcache_bad_fields(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DeepCache(**kwargs)


def test_policies_are_frozen_and_modes_set_parameters():
    p = PreciseCache(mode="flash")
    assert (p.alpha, p.block_ratio) == (0.7, 0.4)
    assert PreciseCache(mode="base").alpha == 0.5 and PreciseCache(mode="base").block_ratio is None
    with pytest.raises(Exception):
        p.alpha = 0.1
    assert EasyCache.for_model("wan") == EasyCache(0.05, 10)
    assert EasyCache.for_model("hunyuan_video") == EasyCache(0.025, 5)


class _SyncCounter(torch.overrides.TorchFunctionMode):
    """Counts device-to-host reads (the host syncs on CUDA) made through tensor methods."""

    SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "policy",
    [
        EasyCache(threshold=0.3, warmup_steps=2),
        PreciseCache(mode="turbo", signal="input"),
        PreciseCache(mode="flash", signal="input", block_ratio=0.4, refresh_steps=3),
    ],
    ids=["easycache", "lfcache", "flash"],
)
def test_at_most_one_host_sync_per_denoiser_call(policy):
    xs, vs = trajectory()
    blocks = [_Block(s) for s in (0.01, 0.5, 0.02, 0.3, 0.05)]
    state = policy.new_state(_run(len(blocks)))
    n = len(xs)
    per_call = []
    for t in range(n):
        for bi, br in enumerate(("cond", "uncond")):
            call = CallInfo(step=t, num_steps=n, branch=br, leader=bi == 0)
            with _SyncCounter() as counter:
                if policy.should_compute(state, call, xs[t]):
                    h = xs[t]
                    if policy.block_level:
                        for j, blk in enumerate(blocks):
                            h = block_call(policy, state, call, j, blk, h)
                    policy.after_compute(state, call, xs[t], vs[t])
                else:
                    policy.reused_output(state, call, xs[t])
                if hasattr(policy, "after_call"):
                    policy.after_call(state, call, xs[t])
            per_call.append(counter.count)
    assert max(per_call) == 1, per_call  # == 1: the counter does see the decision's sync
