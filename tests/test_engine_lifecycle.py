"""What a pipeline call leaves behind: exceptions mid-call, refused re-enable, end-of-call cleanup
on every model class, immutable reports, a replaced scheduler, and the CUDA clock's host syncs
(issue 10, defects 4, 5, 6, 8, 12, 15)."""

import copy
import gc
import weakref

import pytest
import torch

import lightcache
from lightcache import engine as lc_engine
from lightcache.engine import BLOCK_HOOK, DENOISER_HOOK, session_of
from lightcache.memory import MemoryPlan
from lightcache.memory.meter import tracking
from lightcache.ring import get_ring, open_rings

from tiny_pipelines import build, denoiser, output_of


def run(pipe, kwargs, seed=0, **over):
    kw = dict(kwargs, **over)
    return output_of(pipe(**kw, generator=torch.Generator().manual_seed(seed)))


def _dispatch_modes():
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return list(_get_current_dispatch_mode_stack())


class _Boom(RuntimeError):
    pass


def _raise_in_block_at_call(model, call_index):
    """A forward pre-hook on the denoiser's last block that raises at its ``call_index``-th run."""
    blocks = lightcache.adapters.adapter_for(model).blocks(model)
    seen = {"n": 0}

    def hook(*_):
        seen["n"] += 1
        if seen["n"] == call_index:
            raise _Boom("raised inside the denoiser")

    return blocks[-1].register_forward_pre_hook(hook)


@pytest.fixture(scope="module")
def wan():
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, num_inference_steps=4)
    return pipe, kwargs, run(pipe, kwargs)


# -- defect 4: an exception inside the denoiser leaves nothing installed -------------------------


@pytest.mark.parametrize("swap", ["off", "on"])
def test_exception_mid_call_unwinds_tracker_cache_and_rings(wan, swap):
    pipe, kwargs, ref = wan
    model = denoiser(pipe)
    rings_before = open_rings()
    policy = lightcache.PreciseCache(mode="flash", warmup_ratio=0.25, signal="input")
    lightcache.enable(pipe, policy=policy, memory=MemoryPlan(swap=swap, cpu_tracker=True))
    try:
        handle = _raise_in_block_at_call(model, 3)  # second step, mid-call
        try:
            with pytest.raises(_Boom):
                run(pipe, kwargs)
        finally:
            handle.remove()
        session = session_of(model)
        assert not tracking() and _dispatch_modes() == []  # the CPU tracker is off again
        assert session.store is None and session.policy_state is None and not session.run_active
        assert session._current_call is None and session._call_args is None and not session.in_trial
        assert open_rings() == rings_before  # the swap store's rings are closed
        # an unrelated computation is not tracked (it would be ~3x slower and grow memory)
        assert not tracking()
        # the next call runs normally and equals a call that never saw the exception
        out = run(pipe, kwargs)
        decisions = [(d.step, d.branch, d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
    finally:
        lightcache.disable(pipe)
    lightcache.enable(pipe, policy=policy, memory=MemoryPlan(swap=swap, cpu_tracker=True))
    try:
        fresh = run(pipe, kwargs)
        fresh_decisions = [(d.step, d.branch, d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
    finally:
        lightcache.disable(pipe)
    assert torch.equal(out, fresh) and decisions == fresh_decisions


@pytest.mark.parametrize("where", ["vae.decode", "scheduler.step"])
def test_exception_in_decode_or_scheduler_step_ends_the_run(wan, where, monkeypatch):
    pipe, kwargs, ref = wan
    model = denoiser(pipe)
    owner_name, method = where.split(".")
    owner = getattr(pipe, owner_name)
    original = getattr(type(owner), method)
    calls = {"n": 0}
    fail_at = 2 if method == "step" else 1  # mid-loop for the scheduler; the decode itself

    def raising(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise _Boom(where)
        return original(self, *a, **k)

    monkeypatch.setattr(type(owner), method, raising)
    policy = lightcache.EasyCache(threshold=0.1, warmup_steps=1)
    lightcache.enable(pipe, policy=policy, memory=MemoryPlan(swap="on", cpu_tracker=True))
    try:
        session = session_of(model)
        with pytest.raises(_Boom):
            run(pipe, kwargs)
        assert session.store is None and not session.run_active and not tracking() and _dispatch_modes() == []
        assert open_rings() == []
    finally:
        lightcache.disable(pipe)
    monkeypatch.undo()
    assert torch.equal(run(pipe, kwargs), ref)


# -- defect 5: a refused re-enable keeps the working configuration -------------------------------


def test_refused_reenable_keeps_previous_configuration(wan, monkeypatch):
    pipe, kwargs, ref = wan
    model = denoiser(pipe)
    first = lightcache.EasyCache(threshold=10.0, warmup_steps=1)
    lightcache.enable(pipe, policy=first)
    try:
        out_first = run(pipe, kwargs)
        rep_first = lightcache.report(pipe)
        assert rep_first.reuse_ratio > 0
        # refused at validation: a UNet policy on a DiT
        with pytest.raises(ValueError, match="DeepCache works on video UNets"):
            lightcache.enable(pipe, policy=lightcache.DeepCache())
        # refused while installing (after the old configuration was taken off): put back
        def failing(*a, **k):
            raise RuntimeError("chunk install failed")

        monkeypatch.setattr(lc_engine, "install_chunking", failing)
        with pytest.raises(RuntimeError, match="chunk install failed"):
            lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.0), memory=MemoryPlan(chunk_size=8))
        monkeypatch.undo()
        session = session_of(model)
        assert session is not None and session.policy is first
        assert DENOISER_HOOK in model._diffusers_hook.hooks
        assert "step" in vars(pipe.scheduler) and "set_timesteps" in vars(pipe.scheduler)
        again = run(pipe, kwargs)
        assert torch.equal(again, out_first)
        assert [d.computed for d in lightcache.report(pipe).decisions] == [d.computed for d in rep_first.decisions]
    finally:
        lightcache.disable(pipe)
    assert torch.equal(run(pipe, kwargs), ref)


def test_enable_twice_replaces_and_disable_twice_is_harmless(wan):
    pipe, kwargs, ref = wan
    model = denoiser(pipe)
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=1))
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0))
    try:
        out = run(pipe, kwargs)
        assert lightcache.report(pipe).reuse_ratio == 0.0
        hooks = [m._diffusers_hook.hooks for m in model.modules() if hasattr(m, "_diffusers_hook")]
        assert sum(DENOISER_HOOK in h for h in hooks) == 1 and sum(BLOCK_HOOK in h for h in hooks) == 2
    finally:
        lightcache.disable(pipe)
        lightcache.disable(pipe)
    assert torch.equal(out, ref)


# -- defect 6: the end of every call frees the cache, whatever the model class -------------------


@pytest.mark.parametrize("family", ["animatediff", "svd", "wan"])
@pytest.mark.parametrize("swap", ["off", "on"])
def test_cache_freed_after_every_call(family, swap):
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, num_inference_steps=4)
    model = denoiser(pipe)
    policy = lightcache.DeepCache(interval=2) if family in ("svd", "animatediff") else lightcache.EasyCache(10.0, 1)
    stored = []
    lightcache.enable(pipe, policy=policy, memory=MemoryPlan(swap=swap))
    try:
        session = session_of(model)
        put = type(session._make_store()).put

        def spy(self, key, value):
            stored.append(weakref.ref(value))
            return put(self, key, value)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(session._make_store()), "put", spy)
            run(pipe, kwargs)
        rep = lightcache.report(pipe)
        key = "host" if swap == "on" else "device"
        assert rep.cache_bytes[key] > 0  # the high-water mark of the call, reported
        assert session.store is None and session.policy_state is None and not session.run_active
        assert all(len(get_ring(i)) == 0 for i in open_rings())  # rings kept for the next call are empty
        gc.collect()
        assert stored and all(r() is None for r in stored)  # no cached tensor stays referenced
    finally:
        lightcache.disable(pipe)
    assert open_rings() == []


def test_swap_rings_are_kept_across_calls_sized_to_need_and_freed_on_disable(wan):
    pipe, kwargs, _ = wan
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=1), memory=MemoryPlan(swap="on"))
    try:
        run(pipe, kwargs)
        first = open_rings()
        assert first and all(len(get_ring(i)) == 0 for i in first)
        first_sizes = {get_ring(i).slot_bytes for i in first}
        out = run(pipe, kwargs)
        assert open_rings() == first  # the same pinned rings served the second call
        run(pipe, kwargs, num_frames=5)  # other feature sizes: the old size's rings are freed
        resized = open_rings()
        assert resized and not set(resized) & set(first)
        assert {get_ring(i).slot_bytes for i in resized}.isdisjoint(first_sizes)
        assert torch.equal(run(pipe, kwargs), out)  # and back: still the same video
    finally:
        lightcache.disable(pipe)
    assert open_rings() == []


# -- defect 8: report() is an immutable snapshot -------------------------------------------------


def test_report_is_an_immutable_snapshot(wan):
    pipe, kwargs, _ = wan
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=1), memory=MemoryPlan(cpu_tracker=True))
    try:
        run(pipe, kwargs)
        saved = lightcache.report(pipe)
        frozen = copy.deepcopy(saved.as_dict())
        with pytest.raises((AttributeError, TypeError)):
            saved.decisions.append(None)
        with pytest.raises(TypeError):
            saved.peak_bytes["denoise"] = 0
        with pytest.raises(AttributeError):
            saved.decisions[0].computed = False
        saved.as_dict()["decisions"].clear()  # a copy: editing it changes nothing
        run(pipe, kwargs, num_inference_steps=3)
        assert len(lightcache.report(pipe).decisions) == 3 * 2
        assert lightcache.report(pipe) is not saved
    finally:
        lightcache.disable(pipe)
    assert saved.as_dict() == frozen


# -- defect 15: pipe.scheduler replaced after enable() ------------------------------------------


def test_replaced_scheduler_is_followed(wan):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, kwargs, _ = wan
    old = pipe.scheduler
    policy = lightcache.EasyCache(threshold=10.0, warmup_steps=1)
    try:
        new = FlowMatchEulerDiscreteScheduler.from_config(old.config, shift=2.0)
        pipe.scheduler = new
        ref = run(pipe, kwargs)  # uncached, the new scheduler
        lightcache.enable(pipe, policy=policy)
        fresh = run(pipe, kwargs)
        fresh_decisions = lightcache.report(pipe).as_dict()["decisions"]
        lightcache.disable(pipe)
        pipe.scheduler = old
        lightcache.enable(pipe, policy=policy)
        pipe.scheduler = new  # replaced after enable()
        out = run(pipe, kwargs)
        decisions = lightcache.report(pipe).as_dict()["decisions"]
        assert "step" not in vars(old) and "set_timesteps" not in vars(old)  # the old one is the user's again
        assert "step" in vars(new)
        out2 = run(pipe, kwargs)
        lightcache.disable(pipe)
        assert "step" not in vars(new) and "set_timesteps" not in vars(new)
    finally:
        pipe.scheduler = old
    assert [(d["step"], d["computed"]) for d in decisions] == [(d["step"], d["computed"]) for d in fresh_decisions]
    assert torch.equal(out, fresh) and torch.equal(out2, fresh)
    assert not torch.equal(ref, run(pipe, kwargs))  # the new scheduler did change the result


# -- defect 12: on CUDA no host sync and no allocator reset per call ------------------------------


class _FakeCuda:
    """Counts the torch.cuda calls a stage clock makes (the CPU twin of the CUDA test)."""

    def __init__(self, mp):
        self.calls = []
        for name in ("synchronize", "reset_peak_memory_stats", "max_memory_allocated", "memory_allocated"):
            mp.setattr(torch.cuda, name, self._counter(name))
        calls = self.calls

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self, stream=None):
                import time

                calls.append("Event.record")
                self.t = time.perf_counter()

            def synchronize(self):
                calls.append("Event.synchronize")

            def elapsed_time(self, other):
                return (other.t - self.t) * 1000.0

        mp.setattr(torch.cuda, "Event", Event)

    def _counter(self, name):
        def f(*a, **k):
            self.calls.append(name)
            return 0

        return f


@pytest.mark.parametrize("cuda_peaks", [False, True])
def test_cuda_stage_clock_syncs_only_in_measurement_mode(monkeypatch, cuda_peaks):
    fake = _FakeCuda(monkeypatch)
    clocks = []
    for _ in range(5):  # five denoiser calls
        with lc_engine._StageClock(torch.device("cuda"), cuda_peaks=cuda_peaks) as c:
            pass
        clocks.append(c)
    during = list(fake.calls)
    if cuda_peaks:
        assert during.count("synchronize") == 10 and during.count("reset_peak_memory_stats") == 5
    else:
        assert "synchronize" not in during and "reset_peak_memory_stats" not in during
        assert "max_memory_allocated" not in during
        assert all(c.peak is None for c in clocks)
    secs = [c.elapsed() for c in clocks]  # read when the report is made
    assert all(s >= 0 for s in secs)


def test_default_plan_does_not_meter_cuda_peaks_fit_bytes_does():
    assert MemoryPlan().cuda_peaks is False
    assert MemoryPlan(fit_bytes=1 << 20).cuda_peaks is True
    assert MemoryPlan(fit_bytes=1 << 20, cuda_peaks=False).cuda_peaks is False
    with pytest.raises(TypeError, match="MemoryPlan.cuda_peaks"):
        MemoryPlan(cuda_peaks="yes")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_call_keeps_users_peak_counter():
    pipe, kwargs = build("wan")
    pipe.to("cuda")
    torch.cuda.reset_peak_memory_stats()
    big = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    del big
    user_peak = torch.cuda.max_memory_allocated()
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.1, warmup_steps=1))
    try:
        syncs = {"n": 0}
        real = torch.cuda.synchronize

        def counting(*a, **k):
            syncs["n"] += 1
            return real(*a, **k)

        torch.cuda.synchronize = counting
        try:
            pipe(**kwargs, generator=torch.Generator("cuda").manual_seed(0))
        finally:
            torch.cuda.synchronize = real
        assert syncs["n"] == 0
        assert torch.cuda.max_memory_allocated() >= user_peak
        assert lightcache.report(pipe).seconds["denoise"] > 0
    finally:
        lightcache.disable(pipe)


def test_context_names_map_to_branches_and_further_guidance_calls_follow_the_leader():
    """cache_context names: "cond_uncond" is the one batched call ("joint"); diffusers guiders'
    "pred_cond"/"pred_uncond" are cond/uncond; a further name (LTX-2's "uncond_stg") is a branch of
    its own, following its step's leader."""
    from tiny_pipelines import denoiser_calls

    pipe, kwargs = build("wan")
    (args, kw), = denoiser_calls(pipe, kwargs, n=1)
    model = pipe.transformer
    steps = 4
    for names, branches in ((("cond_uncond", "uncond_stg", "uncond_modality"), ["joint", "uncond_stg", "uncond_modality"]),
                            (("pred_cond", "pred_uncond"), ["cond", "uncond"])):
        lightcache.enable(model, policy=lightcache.EasyCache(threshold=10.0, warmup_steps=1))
        try:
            for i in range(steps):
                step_kw = dict(kw, hidden_states=kw["hidden_states"] * (1 - 0.1 * i))  # a latent that moves
                for name in names:
                    with model.cache_context(name, step_index=i, num_inference_steps=steps):
                        model(*args, **step_kw)
            rep = lightcache.report(model)
        finally:
            lightcache.disable(model)
        assert [d.branch for d in rep.decisions] == branches * steps
        computed = rep.computed_steps()
        per_step = [computed[i * len(names):(i + 1) * len(names)] for i in range(steps)]
        assert all(len(set(s)) == 1 for s in per_step), per_step  # followers take the leader's decision
        assert not all(computed) and computed[0]


def test_a_pipeline_that_trims_its_timesteps_gets_its_loops_step_count(wan):
    """WanVideoToVideoPipeline with strength 0.5 sets 8 timesteps and runs the last 4
    (get_timesteps): the run has 4 steps, so its last iteration is the forced last step (it was
    counted as step 3 of 8 and reused) and a warm-up ratio is of 4."""
    from diffusers import WanVideoToVideoPipeline

    pipe, kwargs, _ = wan
    v2v = WanVideoToVideoPipeline(**{k: v for k, v in pipe.components.items() if k in ("tokenizer", "text_encoder",
                                                                                       "vae", "scheduler", "transformer")})
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    video = [Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(9)]
    call = dict(kwargs, video=video, strength=0.5, num_inference_steps=8)
    call.pop("num_frames", None)
    for policy, computed in ((lightcache.EasyCache(threshold=10.0, warmup_steps=1), [True, True, False, True]),
                             (lightcache.PreciseCache(alpha=1.0, warmup_ratio=0.5), [True, True, False, True])):
        lightcache.enable(v2v, policy=policy)
        try:
            v2v(**call, generator=torch.Generator().manual_seed(0))
            decisions = lightcache.report(v2v).decisions
        finally:
            lightcache.disable(v2v)
        steps = sorted({d.step for d in decisions})
        assert steps == [0, 1, 2, 3]
        assert [all(d.computed for d in decisions if d.step == t) for t in steps] == computed, policy
