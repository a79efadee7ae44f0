"""The report a user reads first (issue 14, item 1): the call counts and ratios against their
formulas, the summary text, JSON, and lightcache.history (bounded, immutable, one merged report
per call). About 5 s on 2 cores (one tiny Wan pipeline, a few short calls)."""

import json

import pytest
import torch

import lightcache
from lightcache.reporting import HISTORY_LIMIT, Decision, History, Recorder, Report, _bytes

from tiny_pipelines import build, denoiser_calls, output_of


def _decisions(blocks_per_call, total=40):
    """One Decision per entry: None = reused (not computed), else the blocks that ran."""
    return tuple(
        Decision(step=i, branch="joint", computed=b is not None, blocks_computed=b or 0, blocks_total=total, seconds=0.0)
        for i, b in enumerate(blocks_per_call)
    )


def test_counts_and_ratios_follow_their_formulas():
    # 5 full calls, partial calls that skipped 1 and 20 of 40 blocks, 3 reused calls
    rep = Report(num_blocks=40, decisions=_decisions([40] * 5 + [39, 20] + [None] * 3))
    assert (rep.calls_computed, rep.calls_partial, rep.calls_reused) == (5, 2, 3)
    assert rep.reuse_ratio == (2 + 3) / 10  # the call that skipped 1 block counts as not fully computed
    assert rep.block_compute_ratio == (5 * 40 + 39 + 20) / (10 * 40)
    # the example: reuse_ratio can be far above the block work skipped
    rep = Report(num_blocks=40, decisions=_decisions([39] * 7 + [40] * 3))
    assert rep.reuse_ratio == 0.7
    assert rep.block_compute_ratio == (7 * 39 + 3 * 40) / 400
    empty = Report()
    assert empty.reuse_ratio == 0.0 and empty.block_compute_ratio == 0.0
    assert (empty.calls_computed, empty.calls_partial, empty.calls_reused) == (0, 0, 0)


def test_summary_text_and_pretty_printing():
    rep = Report(
        num_blocks=40,
        decisions=_decisions([40] * 5 + [39, 20] + [None] * 3),
        peak_bytes={"encode": None, "denoise": 3 * 1024**3, "decode": 1536},
        cache_bytes={"device": 512, "host": 5 * 1024**2},
        seconds={"encode": 0.25, "denoise": 12.5, "decode": 1.0},
    )
    text = str(rep)
    lines = text.splitlines()
    assert lines[0] == "lightcache report: 10 denoiser calls over 10 steps (joint), 40 blocks each"
    assert lines[1] == "  calls: 5 computed, 2 partially computed, 3 reused (reuse_ratio 0.50)"
    assert lines[2] == "  blocks run: 259 of 400 (block_compute_ratio 0.65)"
    assert lines[4] == "  encode      0.250  not metered"
    assert lines[5] == "  denoise    12.500  3 GiB"
    assert lines[6] == "  decode      1.000  1.5 KiB"
    assert lines[7] == "  cache high-water: device 512 B, host 5 MiB"
    assert "FAILED" not in text and "FAILED" in str(Report(failed=True))

    class Printer:
        def __init__(self):
            self.out = []

        def text(self, s):
            self.out.append(s)

    p = Printer()
    rep._repr_pretty_(p, cycle=False)
    assert p.out == [text]
    assert _bytes(0) == "0 B" and _bytes(1023) == "1023 B" and _bytes(1024) == "1 KiB"


def test_as_dict_carries_the_new_figures_as_json():
    rep = Report(num_blocks=40, decisions=_decisions([40, 39, None]), failed=True)
    d = json.loads(json.dumps(rep.as_dict()))
    assert d["calls_computed"] == 1 and d["calls_partial"] == 1 and d["calls_reused"] == 1
    assert d["reuse_ratio"] == rep.reuse_ratio == 2 / 3
    assert d["block_compute_ratio"] == rep.block_compute_ratio == 79 / 120
    assert d["failed"] is True
    assert len(d["decisions"]) == 3 and d["decisions"][1]["blocks_computed"] == 39


def test_merge_keeps_failure_and_sums_counts():
    a = Report(num_blocks=40, decisions=_decisions([40, None]))
    b = Report(num_blocks=40, decisions=_decisions([20]), failed=True)
    m = Report.merge([a, b])
    assert m.failed and len(m.decisions) == 3
    assert m.block_compute_ratio == 60 / 120


class _Clock:
    start, peak, end_bytes = 0.0, None, None

    def elapsed(self):
        return 0.0


class _Call:
    def __init__(self, step):
        self.step, self.branch = step, "joint"


def _recorder(n_calls):
    rec = Recorder(num_blocks=2)
    for i in range(n_calls):
        rec.call(_Call(i), computed=True, blocks_computed=2, clock=_Clock(), store=None)
    rec.close()
    return rec


def test_history_keeps_the_last_limit_calls_and_skips_empty_ones():
    h = History(limit=3)
    for n in (1, 2, 0, 3, 4):  # the empty recorder (nothing recorded) is no call
        h.add([_recorder(n)])
    assert [len(r.decisions) for r in h.reports()] == [2, 3, 4]
    assert HISTORY_LIMIT == 16


@pytest.fixture(scope="module")
def wan():
    pipe, kwargs = build("wan")
    return pipe, dict(kwargs, num_inference_steps=2)


def test_history_of_pipeline_calls_is_immutable(wan):
    pipe, kwargs = wan
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=0))
    try:
        assert lightcache.history(pipe) == ()
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        first = lightcache.report(pipe)
        h1 = lightcache.history(pipe)
        assert h1 == (first,) and not first.failed
        pipe(**dict(kwargs, num_inference_steps=3), generator=torch.Generator().manual_seed(0))
        h2 = lightcache.history(pipe)
        assert h2[0] == first and h2[1] == lightcache.report(pipe)
        assert [len({d.step for d in r.decisions}) for r in h2] == [2, 3]
        assert h1 == (first,)  # a tuple handed out earlier does not grow
    finally:
        lightcache.disable(pipe)
    with pytest.raises(ValueError, match="not enabled"):
        lightcache.history(pipe)


def test_history_is_bounded_for_a_denoiser_driven_by_hand(wan):
    """HISTORY_LIMIT + 2 runs of the bare denoiser (cache_context step_index): the last
    HISTORY_LIMIT are kept, in order; a run ends when the next starts."""
    pipe, kwargs = wan
    (args, kw), = denoiser_calls(pipe, kwargs, n=1)
    model = pipe.transformer
    lightcache.enable(model)  # no policy: every call computed
    steps_of_run = [2 + k % 3 for k in range(HISTORY_LIMIT + 2)]  # a run of one step would not end
    try:
        for steps in steps_of_run:
            for i in range(steps):
                with model.cache_context("cond", step_index=i, num_inference_steps=steps):
                    model(*args, **kw)
        kept = lightcache.history(model)
        # 17 runs ended (each when the next began; the last is still open): the first is dropped
        assert [len(r.decisions) for r in kept] == steps_of_run[1:-1]
    finally:
        lightcache.disable(model)


def test_a_vae_call_by_hand_between_pipeline_calls_is_in_no_report(wan):
    """pipe.vae.decode / encode called by the user after a pipeline call (the recorder closed):
    it runs (sliced, metered plans included) and changes neither the last report nor the history."""
    pipe, kwargs = wan
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=0),
                      memory=lightcache.MemoryPlan(decode_slices=1, cpu_tracker=True))
    try:
        out = pipe(**dict(kwargs, output_type="latent"), generator=torch.Generator().manual_seed(0))
        latents = out.frames if hasattr(out, "frames") else out[0]
        before, history = lightcache.report(pipe), lightcache.history(pipe)
        video = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        assert video.shape[2] == (latents.shape[2] - 1) * pipe.vae_scale_factor_temporal + 1
        assert lightcache.report(pipe) == before and lightcache.history(pipe) == history
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # the next call still gets its report
        assert len(lightcache.history(pipe)) == 2 and sum(t["stage"] == "decode" for t in lightcache.report(pipe).timeline) == 1
    finally:
        lightcache.disable(pipe)


def test_failed_call_is_in_the_history(wan):
    pipe, kwargs = wan
    lightcache.enable(pipe)
    blocks = pipe.transformer.blocks

    def boom(*_):
        raise RuntimeError("boom")

    handle = blocks[0].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        handle.remove()
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        failed, ok = lightcache.history(pipe)
        assert failed.failed and not ok.failed
        assert failed.decisions == () and len(ok.decisions) == 2 * 2  # cond + uncond per step
        assert "FAILED" in str(failed)
    finally:
        handle.remove()
        lightcache.disable(pipe)


def test_history_merges_two_experts_per_call(wan):
    """Wan 2.2's two experts (one session each): one history entry per call, both merged."""
    from diffusers import WanPipeline

    pipe, kwargs = wan
    torch.manual_seed(1)
    expert2 = type(pipe.transformer)(**pipe.transformer.config).eval()
    moe = WanPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, scheduler=pipe.scheduler,
                      transformer=pipe.transformer, transformer_2=expert2, boundary_ratio=0.5)
    moe.set_progress_bar_config(disable=True)
    lightcache.enable(moe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=1))
    try:
        reports = []
        for steps in (4, 6):
            moe(**dict(kwargs, num_inference_steps=steps), generator=torch.Generator().manual_seed(0))
            reports.append(lightcache.report(moe))
        hist = lightcache.history(moe)
        assert hist == tuple(reports)
        for rep, steps in zip(hist, (4, 6)):
            assert sorted({d.step for d in rep.decisions}) == list(range(steps))
            assert len(rep.decisions) == 2 * steps  # cond + uncond, from both experts
        assert hist[1].calls_reused > 0
    finally:
        lightcache.disable(moe)
