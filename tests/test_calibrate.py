"""lightcache.calibrate (issue 12c): the returned policy's measured block compute ratio is within
the stated tolerance of 1 / target on tiny pipelines, impossible targets are refused naming the
maximum, and the pipeline (and the caller's generator) is left as it was.

Tolerance: the tiny runs have 12 steps, so a ratio moves in steps of 1/12 of the work: the tests
ask for |measured − 1/target| <= 1/12 (one step). Budget: about 15 s on 2 cores (CogVideoX tiny
runs of about 1 s, AnimateDiff at 2 frames)."""

import math
import sys
from pathlib import Path

import pytest
import torch

import lightcache
from lightcache.calibrate import calibrate
from lightcache.engine import session_of

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipelines import build, denoiser  # noqa: E402

STEPS = 12
TOL = 1 / STEPS


@pytest.fixture(scope="module")
def cog():
    pipe, kwargs = build("cogvideox")
    return pipe, dict(kwargs, num_inference_steps=STEPS, output_type="latent")


def assert_left_as_it_was(pipe, gen, state):
    assert session_of(denoiser(pipe)) is None
    with pytest.raises(ValueError, match="not enabled"):
        lightcache.report(pipe)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_easycache_threshold_hits_the_target(cog, target):
    pipe, kwargs = cog
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    c = calibrate(pipe, lightcache.EasyCache(warmup_steps=2), target_speedup=target, generator=gen, **kwargs)
    assert isinstance(c.policy, lightcache.EasyCache) and c.policy.warmup_steps == 2 and c.policy.threshold > 0
    assert abs(c.measured_ratio - 1 / target) <= TOL, c
    assert c.measured_ratio == c.report.block_compute_ratio and 2 <= c.runs <= 4
    assert c.max_speedup == STEPS / 3  # steps 0, 1 (no rate yet) and the last are forced
    assert_left_as_it_was(pipe, gen, state)
    # the policy it returns does what was measured when the caller runs it (same noise)
    lightcache.enable(pipe, policy=c.policy)
    try:
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        assert lightcache.report(pipe).block_compute_ratio == c.measured_ratio
    finally:
        lightcache.disable(pipe)


def test_forecastcache_threshold_hits_the_target(cog):
    """ForecastCache's schedule is EasyCache's: the same recording and replay set its threshold;
    its warm-up (a ratio of the steps) is kept."""
    pipe, kwargs = cog
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    c = calibrate(pipe, lightcache.ForecastCache(warmup_ratio=0.2), target_speedup=2.0, generator=gen, **kwargs)
    assert isinstance(c.policy, lightcache.ForecastCache) and c.policy.warmup_ratio == 0.2 and c.policy.threshold > 0
    assert abs(c.measured_ratio - 0.5) <= TOL, c
    assert c.max_speedup == STEPS / 4  # steps 0-2 (warm-up ceil(0.2 * 12) = 3) and the last are forced
    assert_left_as_it_was(pipe, gen, state)


def test_forecastcache_replay_weighs_the_gap():
    """The replay accumulates ForecastCache's ε_t · g^gap_power (g: steps since the last compute):
    equal ε = 0.1 on steps 2-10 and τ = 0.35 compute every 4th step with the plain sum (0.1 · 4),
    every 3rd with g^1 (0.1 + 0.2 + 0.3)."""
    from types import SimpleNamespace

    from lightcache.calibrate import _EasyKnob, _Shape

    shape = _Shape(steps=STEPS, calls=tuple((t, "cond") for t in range(STEPS)), blocks=2)
    state = SimpleNamespace(epsilons={t: 0.1 for t in range(2, STEPS - 1)})  # 0, 1: no rate yet; 11: the last

    def schedule(policy):
        return "".join("C" if c else "R" for c in _EasyKnob(policy, shape, state).computed_steps(0.35))

    assert schedule(lightcache.EasyCache()) == schedule(lightcache.ForecastCache(gap_power=0.0)) == "CCRRRCRRRCRC"
    assert schedule(lightcache.ForecastCache(gap_power=1.0)) == "CCRRCRRCRRCC"


def test_precisecache_alpha_hits_the_target(cog):
    pipe, kwargs = cog
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    c = calibrate(pipe, lightcache.PreciseCache(signal="input"), target_speedup=1.5, generator=gen, **kwargs)
    assert isinstance(c.policy, lightcache.PreciseCache) and 0 < c.policy.alpha <= 1 and c.policy.signal == "input"
    assert abs(c.measured_ratio - 1 / 1.5) <= TOL, c
    assert_left_as_it_was(pipe, gen, state)


def test_impossible_targets_are_refused(cog):
    pipe, kwargs = cog
    for bad in (0.5, 0.0, -2.0):
        with pytest.raises(ValueError, match=r"calibrate.target_speedup must be a finite number >= 1.0"):
            calibrate(pipe, lightcache.EasyCache(), target_speedup=bad, **kwargs)
    with pytest.raises(ValueError, match=r"calibrate.target_speedup must be a finite number"):
        calibrate(pipe, lightcache.EasyCache(), target_speedup=math.inf, **kwargs)
    # EasyCache(warmup_steps=6) of 12 steps: steps 0..5 and the last are computed: at most 12/7
    with pytest.raises(ValueError, match=r"target_speedup=2.0 is above what EasyCache allows .*at most 1.714x"):
        calibrate(pipe, lightcache.EasyCache(warmup_steps=6), target_speedup=2.0,
                  generator=torch.Generator().manual_seed(0), **kwargs)
    assert session_of(denoiser(pipe)) is None
    with pytest.raises(TypeError, match="calibrate: policy must be an EasyCache, ForecastCache, PreciseCache or DeepCache"):
        calibrate(pipe, None, target_speedup=2.0, **kwargs)
    with pytest.raises(ValueError, match="calibrate.max_runs must be an int in"):
        calibrate(pipe, lightcache.EasyCache(), target_speedup=2.0, max_runs=1, **kwargs)
    lightcache.enable(pipe, policy=lightcache.EasyCache())
    try:
        with pytest.raises(ValueError, match="lightcache is already enabled on this pipeline"):
            calibrate(pipe, lightcache.EasyCache(), target_speedup=2.0, **kwargs)
    finally:
        lightcache.disable(pipe)


def test_deepcache_interval_is_the_closest_by_the_formula():
    pipe, kwargs = build("animatediff")
    n = 8
    kwargs = dict(kwargs, num_inference_steps=n, num_frames=2, output_type="latent")
    unet = denoiser(pipe)
    blocks = len(unet.down_blocks) + 1 + len(unet.up_blocks)
    partial = 2  # branch 0 keeps down_blocks[0] and the last up block
    target = 1 / 0.6

    def ratio(interval):
        full = len(range(0, n, interval))
        return (full * blocks + (n - full) * partial) / (n * blocks)

    want = min(range(1, n + 1), key=lambda iv: (abs(ratio(iv) - 0.6), iv))
    gen = torch.Generator().manual_seed(0)
    c = calibrate(pipe, lightcache.DeepCache(branch=0), target_speedup=target, generator=gen, **kwargs)
    assert c.policy == lightcache.DeepCache(interval=want, branch=0)
    assert c.measured_ratio == pytest.approx(ratio(want), abs=1e-12) == c.predicted_ratio
    assert c.runs == 2  # recording + verification: the schedule is exact
    assert session_of(unet) is None
