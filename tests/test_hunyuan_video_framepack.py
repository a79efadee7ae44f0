"""HunyuanVideo Framepack: a pipeline call denoises in sections, each a run of its own (the
scheduler's set_timesteps starts it): nothing cached in one section is reused in the next, each
section has its own warm-up, and the call's report holds every section's decisions. Runs in < 5 s."""

import torch

import lightcache

from tiny_pipelines import build, denoiser

STEPS = 4


def _calls_that_ran_blocks(pipe, kwargs, policy):
    """Per denoiser call: (run, step, whether its first block ran); a run is counted from the
    session's step going back to 0 (the run that set_timesteps started)."""
    model = denoiser(pipe)
    calls, ran = [], []
    lightcache.enable(pipe, policy=policy)
    session = lightcache.engine.session_of(model)
    handles = [
        model.transformer_blocks[0].attn.to_q.register_forward_hook(lambda m, a, o: ran.append(True)),
        model.register_forward_pre_hook(lambda m, a: ran.clear()),
        model.register_forward_hook(lambda m, a, o: calls.append([session.step, bool(ran)])),
    ]
    try:
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
        rep = lightcache.report(pipe)
    finally:
        for h in handles:
            h.remove()
        lightcache.disable(pipe)
    run, previous = -1, None
    for c in calls:
        run += previous is None or c[0] < previous
        previous = c[0]
        c.insert(0, run)
    return out, rep, calls


def test_each_section_is_a_run_of_its_own():
    pipe, kwargs = build("hunyuan_video_framepack")
    kwargs = dict(kwargs, num_frames=9, num_inference_steps=STEPS)  # two sections
    out, rep, calls = _calls_that_ran_blocks(pipe, kwargs, lightcache.EasyCache(threshold=10.0, warmup_steps=1))
    assert [c[0] for c in calls] == [0] * (2 * STEPS) + [1] * (2 * STEPS)  # cond + uncond a step
    for s in (0, 1):
        section = [c for c in calls if c[0] == s]
        assert [c[1] for c in section] == [i // 2 for i in range(2 * STEPS)]  # steps restart at 0
        assert section[0][2] and section[1][2]  # warm-up: both branches of step 0 computed
        assert not all(c[2] for c in section)  # and later steps reused within the section
    # the report is the pipeline call's: both sections' decisions, each section's steps from 0
    assert [d.step for d in rep.decisions] == [i // 2 for i in range(2 * STEPS)] * 2
    assert [d.computed for d in rep.decisions] == [c[2] for c in calls]
    assert torch.isfinite(out).all()
