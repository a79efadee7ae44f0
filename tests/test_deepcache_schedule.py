"""DeepCache fidelity to the DeepCache package (issue 12a): its branch numbering (3·block + layer)
mapped onto ours, its finer branches (which layers run on the steps in between, by counting leaf
module calls on the tiny video-UNet pipelines), its non-uniform full-step schedule against an
independent evaluation of the formula, and hostile arguments refused at construction.

Budget: about 20 s on 2 cores (5 tiny 2-step pipeline calls at 2 frames, latent output)."""

import math
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lightcache
from lightcache.policies import DeepCache
from lightcache.policies.base import CallInfo, RunContext
from lightcache.policies.deepcache import nonuniform_full_steps
from lightcache.memory.store import DeviceStore

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipelines import build, denoiser, output_of  # noqa: E402

LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules")

# ------------------------------------------------------------------------------------------------
# the non-uniform schedule against the formula
# ------------------------------------------------------------------------------------------------


def schedule_reference(n, interval, pow_, center):
    """The package's non-uniform schedule, evaluated point by point: k = ceil(n / interval); the
    k + 1 points i·(b − a)/k + a from a = (−center)^(1/p) to b = (n − center)^(1/p) (the last one b
    itself: numpy.linspace's definition), each raised to p as a numpy complex128 scalar (the
    package's arithmetic: (−c)^(1/p))^p lands a hair off −c, which decides whether it merges with
    its neighbour), real part truncated toward zero, distinct values without the smallest and
    largest, shifted by center, plus 0; p lowered by 0.02 until k steps come out. None when no
    p > 1 works."""
    k = -(-n // interval)
    p = pow_
    while p > 1:
        a = complex(-center) ** (1 / p) if center > 0 else 0j
        b = complex((n - center) ** (1 / p))
        step = (b - a) / k
        points = [i * step + a for i in range(k)] + [b]
        ordered = sorted({math.trunc(float((np.complex128(z) ** p).real)) for z in points})
        steps = [0] + [v + center for v in ordered[1:-1]]
        if len(steps) == k:
            return frozenset(steps)
        p -= 0.02
    return None


GRID = [(n, iv, p, c) for n in (10, 12, 25, 50) for iv in (2, 3, 5) for p in (1.2, 1.4, 1.6)
        for c in sorted({0, 3, n // 3, n // 2})]


def test_nonuniform_schedule_matches_the_formula():
    found = 0
    for n, iv, p, c in GRID:
        want = schedule_reference(n, iv, p, c)
        if want is None:
            with pytest.raises(ValueError, match=r"pow=.*center="):
                nonuniform_full_steps(n, iv, p, c)
            continue
        got = nonuniform_full_steps(n, iv, p, c)
        assert got == want, (n, iv, p, c)
        assert len(got) == -(-n // iv) and 0 in got and all(0 <= s < n for s in got)
        found += 1
    assert found >= len(GRID) // 2  # most of the grid has a schedule: the comparison is not vacuous


def test_nonuniform_schedule_concentrates_around_center():
    # gaps between full steps grow with the distance from center (the point of the schedule)
    steps = sorted(nonuniform_full_steps(50, 3, 1.4, 15))
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    near = min(range(len(steps)), key=lambda i: abs(steps[i] - 15))
    assert min(gaps) == min(gaps[max(0, near - 2): near + 2])
    assert gaps[-1] > gaps[near]


def _fake_unet(n=3, res=2):
    down = [SimpleNamespace(resnets=[0] * res, downsamplers=[0] if i < n - 1 else None) for i in range(n)]
    up = [SimpleNamespace(resnets=[0] * (res + 1), upsamplers=[0] if i < n - 1 else None) for i in range(n)]
    return SimpleNamespace(down_blocks=down, up_blocks=up)


def drive_blocks(policy, n_steps, model=None):
    """The engine's calls for ``n_steps`` one-call steps on a fake UNet (block outputs: zeros);
    returns the steps whose call skipped a block."""
    model = model or _fake_unet()
    n_blocks = len(model.down_blocks) + 1 + len(model.up_blocks)
    state = policy.new_state(RunContext(store=DeviceStore(), adapter=None, denoiser=model, num_blocks=n_blocks))
    partial = []
    for t in range(n_steps):
        call = CallInfo(step=t, num_steps=n_steps, branch="joint", leader=True)
        assert policy.should_compute(state, call, None) is True
        skipped = False
        for j in range(n_blocks):
            if policy.block_begin(state, call, j, None, (), {}) is None:
                policy.block_end(state, call, j, None, (), {}, torch.zeros(2))
            else:
                skipped = True
        if skipped:
            partial.append(t)
    return partial


@pytest.mark.parametrize("n,interval,pow_,center", [(25, 3, 1.4, 8), (50, 5, 1.2, 15), (12, 2, 1.6, 4)])
def test_policy_runs_the_nonuniform_full_steps(n, interval, pow_, center):
    full = schedule_reference(n, interval, pow_, center)
    assert full is not None
    partial = drive_blocks(DeepCache(interval=interval, uniform=False, pow=pow_, center=center), n)
    assert partial == [t for t in range(n) if t not in full]


@pytest.mark.parametrize("interval", [1, 2, 3, 7])
def test_policy_runs_the_uniform_full_steps(interval):
    assert drive_blocks(DeepCache(interval=interval), 12) == [t for t in range(12) if t % interval]
    # interval 1 is lossless whatever the schedule's shape
    if interval == 1:
        assert drive_blocks(DeepCache(interval=1, uniform=False, pow=1.4, center=3), 12) == []


def test_center_beyond_the_run_is_refused_when_it_starts():
    with pytest.raises(ValueError, match=r"DeepCache.center must be below the run's 6 steps, got 6"):
        drive_blocks(DeepCache(interval=2, uniform=False, pow=1.4, center=6), 6)


# ------------------------------------------------------------------------------------------------
# the package's numbering
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", range(12))
def test_from_package_maps_branch_ids(p):
    policy = DeepCache.from_package(cache_interval=3, cache_branch_id=p)
    assert (policy.interval, policy.branch, policy.layer) == (3, p // 3, p % 3)
    assert DeepCache.from_package() == DeepCache(interval=1, branch=0, layer=0)  # the package's defaults
    nu = DeepCache.from_package(cache_interval=2, cache_branch_id=p, uniform=False, pow=1.4, center=5)
    assert (nu.uniform, nu.pow, nu.center) == (False, 1.4, 5)


# ------------------------------------------------------------------------------------------------
# hostile arguments
# ------------------------------------------------------------------------------------------------

HOSTILE = [
    (dict(layer=-1), ValueError, r"DeepCache.layer must be an int in \[0, "),
    (dict(layer=1.0), TypeError, r"DeepCache.layer must be an int"),
    (dict(layer=True), TypeError, r"DeepCache.layer must be an int"),
    (dict(uniform=1), TypeError, r"DeepCache.uniform must be a bool"),
    (dict(uniform=None), TypeError, r"DeepCache.uniform must be a bool"),
    (dict(pow=1.4), ValueError, r"DeepCache.pow shapes the non-uniform schedule only"),
    (dict(center=3), ValueError, r"DeepCache.center shapes the non-uniform schedule only"),
    (dict(uniform=False, center=3), ValueError, r"DeepCache.pow is required with uniform=False"),
    (dict(uniform=False, pow=1.4), ValueError, r"DeepCache.center is required with uniform=False"),
    (dict(uniform=False, pow=1.0, center=3), ValueError, r"DeepCache.pow must be a finite number in \(1.0, 10.0\]"),
    (dict(uniform=False, pow=math.nan, center=3), ValueError, r"DeepCache.pow must be a finite number"),
    (dict(uniform=False, pow=11.0, center=3), ValueError, r"DeepCache.pow must be a finite number"),
    (dict(uniform=False, pow="1.4", center=3), TypeError, r"DeepCache.pow must be a finite number"),
    (dict(uniform=False, pow=1.4, center=-1), ValueError, r"DeepCache.center must be an int in \[0, "),
    (dict(uniform=False, pow=1.4, center=2.0), TypeError, r"DeepCache.center must be an int"),
]


@pytest.mark.parametrize("kwargs,exc,message", HOSTILE, ids=[str(h[0]) for h in HOSTILE])
def test_hostile_field_is_refused_naming_it(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        DeepCache(**kwargs)


@pytest.mark.parametrize("value,exc", [(-1, ValueError), (1.5, TypeError), ("0", TypeError)])
def test_from_package_refuses_bad_arguments_naming_them(value, exc):
    with pytest.raises(exc, match=r"DeepCache.from_package.cache_branch_id must be an int"):
        DeepCache.from_package(cache_branch_id=value)
    with pytest.raises(exc, match=r"DeepCache.from_package.cache_interval must be an int in \[1, "):
        DeepCache.from_package(cache_interval=value)


def test_layer_and_branch_beyond_the_unet_are_refused():
    model = _fake_unet(n=3, res=2)
    with pytest.raises(ValueError, match=r"DeepCache.layer must be <= 3 for branch 0 .*got 4"):
        DeepCache(layer=4)._roles_of(model)
    with pytest.raises(ValueError, match=r"DeepCache.branch must be <= 2 with a layer .*got 3"):
        DeepCache(branch=3, layer=0)._roles_of(model)
    DeepCache(branch=2, layer=3)._roles_of(model)  # the deepest pair, whole: only the mid block is skipped


# ------------------------------------------------------------------------------------------------
# end to end on the tiny video-UNet pipelines
# ------------------------------------------------------------------------------------------------

_PIPES = {}


def tiny(family):
    if family not in _PIPES:
        pipe, kwargs = build(family)
        kwargs = dict(kwargs, num_inference_steps=2, num_frames=2, output_type="latent")
        if family == "svd":
            kwargs["decode_chunk_size"] = 2
        _PIPES[family] = (pipe, kwargs)
    return _PIPES[family]


def run(pipe, kwargs, policy=None, count_leaves=False):
    """(output, report, per-call Counter of leaf-module calls) of one 2-step call."""
    model = denoiser(pipe)
    calls, handles = [], []
    if count_leaves:
        handles.append(model.register_forward_pre_hook(lambda m, a: calls.append(Counter())))
        for name, m in model.named_modules():
            if not any(True for _ in m.children()):
                handles.append(m.register_forward_hook(lambda m, a, o, name=name: calls[-1].update([name])))
    if policy is not None:
        lightcache.enable(pipe, policy=policy)
    try:
        out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        rep = lightcache.report(pipe) if policy is not None else None
    finally:
        if policy is not None:
            lightcache.disable(pipe)
        for h in handles:
            h.remove()
    return out, rep, calls


def runs_on_partial_step(model, name, branch, layer):
    """The rule, from the module's name alone: does leaf ``name`` run on a step in between?"""
    parts = name.split(".")
    n_up = len(model.up_blocks)
    if parts[0] == "mid_block":
        return False
    if parts[0] == "down_blocks":
        d = int(parts[1])
        if d != branch:
            return d < branch
        block = model.down_blocks[d]
        if parts[2] in LAYER_LISTS:
            return int(parts[3]) < layer
        if parts[2] == "downsamplers":
            return len(block.resnets) < layer
        return True
    if parts[0] == "up_blocks":
        depth = n_up - 1 - int(parts[1])
        if depth != branch:
            return depth < branch
        block = model.up_blocks[int(parts[1])]
        if parts[2] in LAYER_LISTS:
            return len(block.resnets) - 1 - int(parts[3]) <= layer  # counted from the block's end
        return True  # its upsampler and anything outside the layers
    return True


@pytest.mark.parametrize("family,branch,layer", [
    ("animatediff", 0, 0), ("animatediff", 1, 1), ("text_to_video_sd", 0, 1), ("svd", 1, 0),
])
def test_finer_branch_skips_exactly_the_expected_layers(family, branch, layer):
    pipe, kwargs = tiny(family)
    model = denoiser(pipe)
    _, rep, calls = run(pipe, kwargs, DeepCache(interval=2, branch=branch, layer=layer), count_leaves=True)
    steps = [d.step for d in rep.decisions]
    assert len(calls) == len(steps) and set(steps) == {0, 1}
    full = next(c for c, s in zip(calls, steps) if s == 0)
    for c, s in zip(calls, steps):
        if s == 1:
            want = Counter({k: v for k, v in full.items() if runs_on_partial_step(model, k, branch, layer)})
            assert c == want
            assert sum(c.values()) < sum(full.values())
    assert rep.calls_partial == steps.count(1) and rep.calls_computed == steps.count(0)


def test_lossless_settings_are_bit_identical():
    pipe, kwargs = tiny("animatediff")
    plain, _, _ = run(pipe, kwargs)
    for policy in (DeepCache.from_package(), DeepCache(interval=1, branch=1, layer=1, uniform=False, pow=1.4, center=1)):
        out, rep, _ = run(pipe, kwargs, policy)
        assert torch.equal(out, plain), policy
        assert rep.block_compute_ratio == 1.0
    assert not any("forward" in m.__dict__ for m in denoiser(pipe).modules())  # no patch left behind


def test_package_full_up_block_id_equals_the_whole_branch():
    # package id 3·b + R (R = resnet layers per down block, 1 here) keeps the whole up block: the
    # output of DeepCache(branch=b), which runs the down block's downsampler besides (output unused)
    pipe, kwargs = tiny("text_to_video_sd")
    r = len(denoiser(pipe).down_blocks[0].resnets)
    whole, rep_whole, _ = run(pipe, kwargs, DeepCache(interval=2, branch=0))
    finer, rep_finer, _ = run(pipe, kwargs, DeepCache(interval=2, branch=0, layer=r))
    assert torch.equal(whole, finer)
    assert rep_finer.block_compute_ratio == rep_whole.block_compute_ratio < 1.0


def test_a_block_that_raises_leaves_no_patch_behind():
    # layer 1 of branch 0 (1 resnet layer here) patches down_blocks[0]'s downsampler on the partial
    # step; a resnet that raises there ends the run, and the run's end removes the patch
    pipe, kwargs = tiny("animatediff")
    model = denoiser(pipe)
    plain, _, _ = run(pipe, kwargs)
    resnet, down = model.down_blocks[0].resnets[0], model.down_blocks[0].downsamplers[0]
    calls = []

    def fail_second(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    handle = resnet.register_forward_pre_hook(fail_second)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run(pipe, kwargs, DeepCache(interval=2, branch=0, layer=1))
    finally:
        handle.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left by the failed call
    again, _, _ = run(pipe, kwargs)
    assert torch.equal(again, plain)
    run(pipe, kwargs, DeepCache(interval=2, branch=0, layer=1))
    assert "forward" not in down.__dict__
