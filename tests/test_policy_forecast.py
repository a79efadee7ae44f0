"""ForecastCache (lightcache/policies/forecast.py): its decisions are EasyCache's (docs/design.md
§3.1) with a warm-up of ⌈warmup_ratio · N⌉ steps and each step's ε_t weighed by g^gap_power in E
(g: steps since the last compute), and a reused call outputs the first-order
forecast x_t + Δ_k + (Δ_k − Δ_{k−1}) · (t − t_k) / (t_k − t_{k−1}) of its branch's last two
computed Δs. Checked on scripted trajectories against a plain-Python evaluation of the formula,
exactly on a hand-built fp32 case, and on the tiny Wan pipeline (lossless at τ = 0, work skipped,
swap and bf16 storage plans)."""

import math
import sys
import threading
from pathlib import Path

import pytest
import torch

import lightcache
import lightcache.ops  # noqa: F401
from lightcache import MemoryPlan, metrics
from lightcache.memory.store import DeviceStore
from lightcache.parallel import ContextParallel
from lightcache.policies.base import CallInfo, RunContext
from lightcache.policies.forecast import ForecastCache, delta_key

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipelines import build, denoiser, output_of  # noqa: E402


# the recorded trajectory and the mean|t| of EasyCache's decision tests (the same schedule)
from test_policy_decisions import mean_abs, trajectory  # noqa: E402


def forecast_reference(xs, vs, tau, warmup_ratio, order=1, gap_power=0.0):
    """ForecastCache as its docstring writes it, in plain Python (float64): the leader's decisions
    and every branch's outputs (the uncond branch outputs 0.5 · v_t when computed)."""
    n = len(xs)
    warmup = math.ceil(warmup_ratio * n - 1e-9)
    decisions, outputs = [], {"cond": [], "uncond": []}
    E, k, last, t_k = 0.0, None, None, None  # last = (x_i, v_i) of the leader, computed at step t_k
    computed = {"cond": [], "uncond": []}  # (step, Δ) of each branch's computes
    for t in range(n):
        compute = True
        if not (t < warmup or t == n - 1 or k is None):
            eps = k * mean_abs(xs[t] - xs[t - 1]) / mean_abs(last[1])
            E += eps * (t - t_k) ** gap_power
            compute = not E < tau
        if compute:
            t_k = t
            E = 0.0
            if last is not None:
                dx = mean_abs(xs[t] - last[0])
                k = mean_abs(vs[t] - last[1]) / dx if dx > 0 else math.inf
            last = (xs[t], vs[t])
        decisions.append(compute)
        for br, v in (("cond", vs[t]), ("uncond", 0.5 * vs[t])):
            if compute:
                computed[br].append((t, (v - xs[t]).double()))
                outputs[br].append(v.double())
                continue
            (t1, d1) = computed[br][-1]
            if order == 0 or len(computed[br]) < 2:
                forecast = d1
            else:
                t0, d0 = computed[br][-2]
                forecast = d1 + (d1 - d0) * (t - t1) / (t1 - t0)
            outputs[br].append(xs[t].double() + forecast)
    return decisions, outputs


def drive(policy, xs, vs, run=None):
    """Run ``policy`` through a recorded trajectory as the engine does (cond leads, uncond
    follows); returns the leader's decisions, every branch's outputs and the state."""
    state = policy.new_state(run or RunContext(store=DeviceStore(), adapter=None))
    decisions, outputs = [], {"cond": [], "uncond": []}
    n = len(xs)
    for t in range(n):
        for bi, br in enumerate(("cond", "uncond")):
            call = CallInfo(step=t, num_steps=n, branch=br, leader=bi == 0)
            compute = policy.should_compute(state, call, xs[t])
            if compute:
                out = vs[t] if br == "cond" else 0.5 * vs[t]
                policy.after_compute(state, call, xs[t], out)
            else:
                out = policy.reused_output(state, call, xs[t])
            policy.after_call(state, call, xs[t])
            outputs[br].append(out)
            if bi == 0:
                decisions.append(compute)
            else:
                assert compute == decisions[-1], "the uncond branch must follow the cond decision"
    return decisions, outputs, state


# gap_power 0: EasyCache's plain sum of ε_t
@pytest.mark.parametrize("tau,warmup_ratio,order,gap_power", [
    (0.05, 0.2, 1, 0.0), (0.3, 0.1, 1, 0.0), (0.5, 0.25, 1, 0.0), (1e9, 0.1, 1, 0.0), (0.3, 0.1, 0, 0.0),
    (0.3, 0.06, 1, 1.0), (0.6, 0.06, 1, 1.0), (0.3, 0.0, 0, 0.5), (0.6, 0.06, 1, 2.0)])
def test_decisions_and_forecasts_match_the_formula(tau, warmup_ratio, order, gap_power):
    xs, vs = trajectory()
    policy = ForecastCache(threshold=tau, warmup_ratio=warmup_ratio, order=order, gap_power=gap_power)
    got, outputs, state = drive(policy, xs, vs)
    want, want_outputs = forecast_reference(xs, vs, tau, warmup_ratio, order, gap_power)
    assert got == want
    assert not all(got), "every case here reuses some steps"
    # each weighted case here computes a step the plain sum would reuse
    plain, _ = forecast_reference(xs, vs, tau, warmup_ratio, order)
    assert (plain != want) == (gap_power > 0) == bool(state.gaps)
    assert any(g > 1 for g in state.gaps.values()) == (gap_power > 0)
    for br in ("cond", "uncond"):
        for t, (out, ref) in enumerate(zip(outputs[br], want_outputs[br])):
            if not got[t]:
                torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    reused = [t for t, c in enumerate(got) if not c]
    assert all(state.weights[(t, br)] is None for t in reused for br in ("cond", "uncond")) == (order == 0)


def test_order_zero_is_easycache():
    """order=0 holds Δ_k and gap_power=0 sums ε_t: the outputs and decisions of EasyCache with the same
    warm-up, bit for bit."""
    from lightcache import EasyCache

    xs, vs = trajectory()
    got, outs, _ = drive(ForecastCache(threshold=0.3, warmup_ratio=0.1, order=0, gap_power=0.0), xs, vs)
    want, want_outs, _ = drive(EasyCache(threshold=0.3, warmup_steps=2), xs, vs)
    assert got == want
    assert all(torch.equal(a, b) for br in outs for a, b in zip(outs[br], want_outs[br]))


def test_forecast_is_exact_on_a_hand_built_case():
    """Dyadic values, so fp32 arithmetic is exact: computes at steps 0, 1 (no rate yet), reuse at
    2 and 3 with w = 2 and 3; the output equals x_t + Δ_1 + (Δ_1 − Δ_0)(t − 1) exactly."""
    shape = (1, 2, 1, 2, 2)
    ramp = torch.arange(8, dtype=torch.float32).reshape(shape) / 8  # 0, 1/8, ..., 7/8
    xs = [ramp * 0.5, ramp * 0.25, ramp * 0.125, ramp * 0.0625, ramp * 0.03125]
    vs = [ramp + 1.0, ramp + 1.5, None, None, ramp - 1.0]
    deltas = [vs[0] - xs[0], vs[1] - xs[1]]
    policy = ForecastCache(threshold=1e9, warmup_ratio=0.0)
    state = policy.new_state(RunContext(store=DeviceStore(), adapter=None))
    for t in range(5):
        call = CallInfo(step=t, num_steps=5, branch="cond", leader=True)
        compute = policy.should_compute(state, call, xs[t])
        assert compute == (t in (0, 1, 4))
        if compute:
            policy.after_compute(state, call, xs[t], vs[t])
        else:
            out = policy.reused_output(state, call, xs[t])
            assert state.weights[(t, "cond")] == float(t)
            expected = xs[t] + deltas[1] + (deltas[1] - deltas[0]) * (t - 1)
            assert out.dtype == torch.float32 and torch.equal(out, expected)
        policy.after_call(state, call, xs[t])
    # both Δs of the branch are in the store, in alternating slots (the newest: step 4's)
    assert state.steps["cond"] == [1, 4]
    assert torch.equal(state.run.store.load(delta_key("cond", state.newest["cond"])), vs[4] - xs[4])
    assert torch.equal(state.run.store.load(delta_key("cond", 1 - state.newest["cond"])), deltas[1])


def test_bf16_storage_forecasts_from_the_rounded_deltas():
    """With bf16 storage the Δs are stored rounded and read back dense in fp32: the reused output
    is exactly x + lerp(bf16(Δ_0), bf16(Δ_1), w) in fp32 (the ops' rounding sequence)."""
    g = torch.Generator().manual_seed(3)
    shape = (1, 4, 2, 4, 4)
    xs = [torch.randn(shape, generator=g) for _ in range(4)]
    vs = [torch.randn(shape, generator=g) for _ in range(4)]
    policy = ForecastCache(threshold=1e9, warmup_ratio=0.0)
    store = DeviceStore(storage_dtype=torch.bfloat16)
    state = policy.new_state(RunContext(store=store, adapter=None))
    for t in range(2):
        call = CallInfo(step=t, num_steps=4, branch="cond", leader=True)
        assert policy.should_compute(state, call, xs[t])
        policy.after_compute(state, call, xs[t], vs[t])
        policy.after_call(state, call, xs[t])
    call = CallInfo(step=2, num_steps=4, branch="cond", leader=True)
    assert not policy.should_compute(state, call, xs[2])
    out = policy.reused_output(state, call, xs[2])
    d0, d1 = ((vs[t] - xs[t]).bfloat16().float() for t in range(2))
    assert store.get(delta_key("cond", 0))[0].dtype == torch.bfloat16
    assert torch.equal(out, xs[2] + ((d1 - d0) * 2.0 + d0))


class _ThreadGroup:
    """A context-parallel group of ``world`` ranks run as threads in one process: each rank's
    ``all_reduce_sums`` waits for every rank's sums and returns their sum (the same order on
    every rank); ``shard`` is ContextParallel's own rule."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=30)
        self.slots = [None] * world

    def rank(self, r):
        group = self

        class Rank:
            rank, world_size = r, group.world
            shard = ContextParallel.shard

            def all_reduce_sums(self, sums):
                group.slots[self.rank] = sums.detach().clone()
                group.barrier.wait()
                out = sum(group.slots[1:], group.slots[0].clone())
                group.barrier.wait()  # nobody overwrites a slot before every rank has summed
                return out

        return Rank()


def test_context_parallel_ranks_decide_alike_and_as_one_process():
    xs, vs = trajectory()
    policy = ForecastCache(threshold=0.3, warmup_ratio=0.1)
    single, single_outs, _ = drive(policy, xs, vs)
    group, results = _ThreadGroup(2), {}

    def rank(r):
        results[r] = drive(policy, xs, vs, RunContext(store=DeviceStore(), adapter=None, parallel=group.rank(r)))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(results) == {0, 1}
    for r in (0, 1):
        assert results[r][0] == single
        for br in ("cond", "uncond"):
            for a, b in zip(results[r][1][br], single_outs[br]):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# on the tiny Wan pipeline (2 blocks, CFG as two calls a step)
# ---------------------------------------------------------------------------------------------

STEPS = 8


@pytest.fixture(scope="module")
def wan():
    pipe, kwargs = build("wan", seed=0)
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    den = denoiser(pipe)
    leaves = [m for name, m in den.named_modules() if name.startswith("blocks.") and isinstance(m, torch.nn.Linear)]
    assert leaves
    calls = [0]
    handles = [m.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for m in leaves]

    def run(policy=None, memory=None):
        """(video, leaf-layer calls inside the blocks, report or None)."""
        calls[0] = 0
        if policy is not None or memory is not None:
            lightcache.enable(pipe, policy=policy, memory=memory)
        try:
            video = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
            report = lightcache.report(pipe) if policy is not None else None
        finally:
            lightcache.disable(pipe)
        return video, calls[0], report

    reference = run()
    yield run, reference
    for h in handles:
        h.remove()


def test_threshold_zero_is_lossless(wan):
    run, (ref_video, ref_calls, _) = wan
    video, calls, report = run(ForecastCache(threshold=0.0))
    assert torch.equal(video, ref_video)
    assert calls == ref_calls and report.calls_reused == 0


@pytest.mark.parametrize("fields,schedule", [
    # warm-up ⌈0.2 · 8⌉ = 2 steps: every step but the last is reused (E stays below τ = 1e9)
    (dict(threshold=1e9, warmup_ratio=0.2), "CCRRRRRC"),
    # the default warm-up ⌈0.06 · 8⌉ = 1 step (the rate's two computes come first anyway)
    (dict(threshold=1e9), "CCRRRRRC"),
])
def test_reuse_skips_the_blocks_work(wan, fields, schedule):
    run, (ref_video, ref_calls, _) = wan
    video, calls, report = run(ForecastCache(**fields))
    for branch in ("cond", "uncond"):  # the uncond branch follows every decision
        assert "".join("C" if d.computed else "R" for d in report.decisions if d.branch == branch) == schedule
    computed = schedule.count("C")
    assert calls * STEPS == ref_calls * computed  # each computed step ran the same leaf calls
    assert report.block_compute_ratio == pytest.approx(computed / STEPS)
    assert torch.isfinite(video).all() and not torch.equal(video, ref_video)


@pytest.mark.parametrize("plan", ["swap", "bf16"])
def test_storage_plans(wan, plan):
    run, _ = wan
    policy = ForecastCache(threshold=0.3)
    base_video, _, base = run(policy, MemoryPlan(swap="off"))
    assert base.calls_reused > 0
    if plan == "swap":  # both Δs per branch wait on the host: exact fp32 round trips
        video, _, report = run(policy, MemoryPlan(swap="on"))
        assert torch.equal(video, base_video)
        assert report.cache_bytes["host"] >= 4 * report.cache_bytes["largest_feature"]  # 2 Δs x 2 branches
    else:  # stored in bf16, read back dense: half the bytes, close to the fp32 run
        video, _, report = run(policy, MemoryPlan(swap="off", cache_dtype="bf16"))
        assert 2 * report.cache_bytes["largest_feature"] == base.cache_bytes["largest_feature"]
        assert [d.computed for d in report.decisions] == [d.computed for d in base.decisions]
        assert metrics.psnr(video, base_video) >= 45.0  # measured 55.3 dB


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(threshold=-0.1), "ForecastCache.threshold"),
        (dict(threshold=float("nan")), "ForecastCache.threshold"),
        (dict(threshold="0.1"), "ForecastCache.threshold"),
        (dict(warmup_ratio=1.5), "ForecastCache.warmup_ratio"),
        (dict(warmup_ratio=-0.1), "ForecastCache.warmup_ratio"),
        (dict(gap_power=-0.5), "ForecastCache.gap_power"),
        (dict(gap_power=float("inf")), "ForecastCache.gap_power"),
        (dict(gap_power=float("nan")), "ForecastCache.gap_power"),
        (dict(gap_power="1"), "ForecastCache.gap_power"),
        (dict(order=2), "ForecastCache.order"),
        (dict(order=True), "ForecastCache.order"),
        (dict(order=1.0), "ForecastCache.order"),
    ],
)
def test_bad_fields_are_refused_by_name(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ForecastCache(**kwargs)


def test_frozen_and_unknown_step_count_refused():
    p = ForecastCache()
    with pytest.raises(Exception):
        p.threshold = 0.5
    assert p.warmup_steps(50) == 3 and p.warmup_steps(20) == 2
    assert ForecastCache(warmup_ratio=0.2).warmup_steps(50) == 10
    assert ForecastCache(warmup_ratio=0.15).warmup_steps(20) == 3
    state = p.new_state(RunContext(store=DeviceStore(), adapter=None))
    with pytest.raises(ValueError, match="ForecastCache.warmup_ratio"):
        p.should_compute(state, CallInfo(step=0, num_steps=None, branch="cond", leader=True), torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(ValueError, match="family"):
        ForecastCache.for_model("no-such-family")
