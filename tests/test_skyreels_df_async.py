"""SkyReels-V2 diffusion forcing beyond the synchronous short video the matrix runs.

The pipeline loops over the rows of its own per-frame timestep matrix
(``generate_timestep_matrix``), not over its scheduler's timesteps: in asynchronous mode
(``ar_step > 0``) each latent frame starts ``ar_step`` iterations after the one before, so the loop
has more iterations than the scheduler has timesteps (here 4 timesteps, 3 latent frames, ar_step 1:
6 iterations), and a long video (``num_frames > base_num_frames``) builds one matrix per segment.
lightcache's step is the loop's iteration and its step count the matrix's rows, each segment a run
of its own (lightcache/engine.py ``_RUN_METHODS``): the policies' warm-up, last-step and decisions
follow the loop, and reuse skips work in every segment.

Tiny pipeline: tests/tiny_families/skyreels_v2_df.py (2 blocks, CFG: a cond and an uncond call per
iteration); latents out (the decode is the matrix's business). The module: about 1 s of test time
(--durations, 2 shared cores).
"""

from __future__ import annotations

import math

import pytest
import torch

import lightcache
from lightcache.engine import session_of

from tiny_pipelines import build, denoiser, output_of

STEPS = 4
ASYNC = dict(num_inference_steps=STEPS, ar_step=1, output_type="latent")
ITERATIONS = 6  # 4 timesteps, the third latent frame 2 iterations behind the first
LONG = dict(num_inference_steps=STEPS, ar_step=0, num_frames=17, base_num_frames=9, overlap_history=5,
            output_type="latent")
SEGMENTS = 3  # 5 latent frames in windows of 3 overlapping by 2: 3 segments of 4 iterations (synchronous)


@pytest.fixture(scope="module")
def df():
    """(pipeline, its call kwargs in asynchronous mode, their plain latents). The plain call runs
    first: a pipeline's first call sets attributes of its own, not lightcache's to undo."""
    pipe, kwargs = build("skyreels_v2_df")
    kwargs = dict(kwargs, **ASYNC)
    plain = run(pipe, kwargs)
    assert pipe.num_timesteps == ITERATIONS  # the pipeline's own count of its loop
    return pipe, kwargs, plain


def run(pipe, kwargs):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))


def run_enabled(pipe, kwargs, policy):
    """(latents, report, block executions counted on each block's query projection, outside trial
    forwards) of one call with lightcache enabled; checks that disable() gives the pipeline its own attributes back."""
    before = sorted(vars(pipe))
    lightcache.enable(pipe, policy=policy)
    session = session_of(denoiser(pipe))
    runs = [0]

    def count(module, args, out):
        if not session.in_trial:  # PreciseCache's pooled trial forward is not the call's work
            runs[0] += 1

    handles = [next(m for n, m in b.named_modules() if n.endswith("to_q")).register_forward_hook(count)
               for b in session.blocks]
    try:
        out = run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        for h in handles:
            h.remove()
        lightcache.disable(pipe)
    assert sorted(vars(pipe)) == before, "disable() left pipeline attributes behind"
    return out, rep, runs[0]


def computed_steps(rep):
    """Per branch: the steps, in order, and whether each was computed."""
    by = {}
    for d in rep.decisions:
        by.setdefault(d.branch, []).append((d.step, d.computed))
    return by


def test_async_steps_are_the_matrix_rows_and_reuse_skips_block_work(df):
    pipe, kwargs, plain = df
    out, rep, runs = run_enabled(pipe, kwargs, lightcache.EasyCache(threshold=10.0, warmup_steps=1))
    # step 0 (warm-up) and 1 (no rate yet) computed, 2-4 reused, the last iteration (5) computed;
    # with the scheduler's 4 timesteps as the count, 3-5 were all forced as "last steps"
    expected = [(i, i in (0, 1, ITERATIONS - 1)) for i in range(ITERATIONS)]
    assert computed_steps(rep) == {"cond": expected, "uncond": expected}
    n_blocks = len(denoiser(pipe).blocks)
    assert runs == sum(d.blocks_computed for d in rep.decisions) == 3 * 2 * n_blocks
    assert out.shape == plain.shape and torch.isfinite(out).all() and not torch.equal(out, plain)


def test_async_precisecache_warms_up_on_the_matrix_rows(df):
    pipe, kwargs, _ = df
    out, rep, runs = run_enabled(pipe, kwargs, lightcache.PreciseCache(alpha=1.0, warmup_ratio=0.25))
    warm = math.ceil(0.25 * ITERATIONS)  # 2 (of 6 iterations; 1 of the scheduler's 4)
    cond = computed_steps(rep)["cond"]
    assert [s for s, _ in cond] == list(range(ITERATIONS))
    assert all(c for s, c in cond if s < warm or s == ITERATIONS - 1)
    assert rep.reuse_ratio > 0 and runs == sum(d.blocks_computed for d in rep.decisions)


@pytest.mark.parametrize("policy", [lambda: lightcache.EasyCache(threshold=0.0, warmup_steps=0),
                                    lambda: lightcache.PreciseCache(alpha=0.0)], ids=["easycache", "precisecache"])
def test_async_lossless_setting_is_bit_identical(df, policy):
    pipe, kwargs, plain = df
    out, rep, runs = run_enabled(pipe, kwargs, policy())
    assert torch.equal(out, plain)
    assert len(rep.decisions) == 2 * ITERATIONS and rep.reuse_ratio == 0.0
    assert runs == sum(d.blocks_total for d in rep.decisions)


def test_long_video_segments_each_restart_the_step_count(df):
    pipe, kwargs, _ = df
    kwargs = dict(kwargs, **LONG)
    out, rep, runs = run_enabled(pipe, kwargs, lightcache.EasyCache(threshold=10.0, warmup_steps=1))
    # each segment: steps 0-3, 0 and 1 computed, 2 reused, 3 (its last) computed; counted on as
    # one run, every step after the first segment's was forced as a "last step"
    expected = [(i, i != 2) for i in range(STEPS)] * SEGMENTS
    assert computed_steps(rep) == {"cond": expected, "uncond": expected}
    assert runs == sum(d.blocks_computed for d in rep.decisions)
    assert torch.isfinite(out).all()
