"""End to end on CUDA: the tiny pipelines of every family, fp32 with TF32 off (skipped without CUDA).

* each policy alone (device cache) against the same policy with ``MemoryPlan(swap="on")``:
  asynchronous stores to the pinned ring and prefetches back on the copy stream must give the
  same decisions and the same video (≤ 1e-6): the real check of the CUDA ring's stream ordering
  (a fetch that overtook its store, or a compute that overtook its fetch, reads stale bytes);
* the same with swap + feature chunk + sliced decode (≤ 1e-4; the decode slices of HunyuanVideo's
  and SVD's VAEs are not exact, and a VAE lightcache cannot slice is not sliced: those families
  chunk and swap only);
* stage peaks come from the CUDA allocator with ``MemoryPlan(cuda_peaks=True)`` and are not
  metered without it;
* a call with the default plan waits for the device on the host nowhere: no
  ``torch.cuda.synchronize``, ``Stream.synchronize``, ``Event.synchronize`` or ring ``synchronize``
  during the call, and no more synchronising torch operations (CUDA sync debug mode) than the plain
  pipeline has.

The pipelines run 6 steps and are built once per family (a few seconds each on a GPU).
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs in benchmarks/gpu/run.sh)")

UNETS = ("svd", "animatediff", "text_to_video_sd")
INEXACT_DECODE = ("hunyuan_video", "svd")  # their VAEs' slices are not the one-call decode
DECODE_SLICES = {"cogvideox": 2}  # CogVideoX decodes in its own frame batches of 2 latent frames
SWAP_TOL = 1e-6
CHUNK_TOL = 1e-4


def _families():
    from tiny_pipelines import FAMILIES

    return FAMILIES


def _policies(family):
    """name -> a policy that reuses on the tiny pipelines (the reusing settings of test_matrix)."""
    import lightcache

    if family in UNETS:
        return {"deepcache": lambda: lightcache.DeepCache(interval=2)}
    return {
        "easycache": lambda: lightcache.EasyCache(threshold=10.0, warmup_steps=1),
        "precisecache": lambda: lightcache.PreciseCache(alpha=1.0, warmup_ratio=0.25),
        "precisecache-flash": lambda: lightcache.PreciseCache(mode="flash", alpha=1.0, block_ratio=0.5,
                                                              warmup_ratio=0.25),
    }


CELLS = [(f, p) for f in _families() for p in _policies(f)]


@pytest.fixture(autouse=True)
def _fp32_exact():
    """fp32 matmuls and convolutions without TF32, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


_PIPES: dict = {}


def pipeline(family):
    """The family's tiny pipeline on CUDA (fp32) and its call kwargs, built once."""
    if family not in _PIPES:
        from tiny_pipelines import build

        pipe, kwargs = build(family)
        pipe.to("cuda")
        kwargs = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        _PIPES[family] = (pipe, kwargs)
    return _PIPES[family]


def run(family, policy=None, memory=None):
    """(video on the CPU, report) of one call with lightcache enabled."""
    import lightcache
    from tiny_pipelines import output_of

    pipe, kwargs = pipeline(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inexact-decode warnings: asserted in test_matrix
        lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        torch.cuda.synchronize()
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    return out.float().cpu(), rep


def decisions(rep):
    return [(d.step, d.branch, d.computed, d.blocks_computed) for d in rep.decisions]


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("family,policy", CELLS)
def test_cuda_swap_gives_the_device_cache_result(family, policy):
    from lightcache import MemoryPlan

    make = _policies(family)[policy]
    ref, ref_rep = run(family, make(), MemoryPlan(swap="off"))
    out, rep = run(family, make(), MemoryPlan(swap="on"))
    assert ref_rep.reuse_ratio > 0, "the policy reused nothing: the ring was not exercised"
    assert rep.cache_bytes["host"] > 0, "nothing was swapped to the host"
    assert decisions(rep) == decisions(ref_rep)
    assert max_diff(out, ref) <= SWAP_TOL


def _exact_decode_slices(family):
    """MemoryPlan kwargs slicing the decode where that is exact for the family's VAE, else none."""
    from lightcache import MemoryPlan
    from lightcache.memory.decode import check_decode_slicing

    if family in INEXACT_DECODE:
        return {}
    sliced = dict(decode_slices=DECODE_SLICES.get(family, 1))
    try:
        check_decode_slicing(getattr(pipeline(family)[0], "vae", None), MemoryPlan(**sliced))
    except ValueError:  # a VAE lightcache cannot slice (EasyAnimate's Magvit when this was written)
        return {}
    return sliced


@pytest.mark.parametrize("family,policy", CELLS)
def test_cuda_swap_chunk_and_sliced_decode(family, policy):
    from lightcache import MemoryPlan

    make = _policies(family)[policy]
    ref, ref_rep = run(family, make(), MemoryPlan(swap="off"))
    sliced = _exact_decode_slices(family)
    out, rep = run(family, make(), MemoryPlan(swap="on", chunk_size=16, **sliced))
    assert rep.cache_bytes["host"] > 0
    assert decisions(rep) == decisions(ref_rep)
    assert max_diff(out, ref) <= CHUNK_TOL


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video", "svd"])
def test_cuda_stage_peaks_only_when_asked(family):
    from lightcache import MemoryPlan
    from tiny_pipelines import denoiser

    pipe, _ = pipeline(family)
    weights = sum(p.numel() * p.element_size() for p in denoiser(pipe).parameters())
    make = next(iter(_policies(family).values()))
    _, metered = run(family, make(), MemoryPlan(cuda_peaks=True))
    for stage in ("denoise", "decode"):
        peak = metered.peak_bytes[stage]
        assert peak is not None and peak > 0, (stage, dict(metered.peak_bytes))
    assert metered.peak_bytes["denoise"] >= weights  # an absolute allocator peak: the weights are live
    _, plain = run(family, make(), MemoryPlan())
    assert all(v is None for v in plain.peak_bytes.values()), dict(plain.peak_bytes)


class _SyncCounter:
    """Counts the host-side waits for the device that Python code can issue."""

    def __init__(self, monkeypatch):
        from lightcache.ring import RingBuffer

        self.calls = []
        for owner, name in ((torch.cuda, "synchronize"), (torch.cuda.Stream, "synchronize"),
                            (torch.cuda.Event, "synchronize"), (RingBuffer, "synchronize")):
            monkeypatch.setattr(owner, name, self._wrap(f"{getattr(owner, '__name__', owner)}.{name}", getattr(owner, name)))
        self.active = False

    def _wrap(self, label, fn):
        def counted(*args, **kwargs):
            if self.active:
                self.calls.append(label)
            return fn(*args, **kwargs)

        return counted


def _implicit_syncs(call):
    """Synchronising torch operations (``.item()``, ``nonzero`` ...) ``call`` makes, by CUDA sync
    debug mode's warnings."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in seen if "synchroniz" in str(w.message))


@pytest.mark.parametrize("family", _families())
def test_cuda_no_host_sync_during_a_call(family, monkeypatch):
    import lightcache
    from lightcache import MemoryPlan
    from tiny_pipelines import output_of

    pipe, kwargs = pipeline(family)
    make = next(iter(_policies(family).values()))
    run(family, make(), MemoryPlan())  # warm-up: compiles, allocator, pinned ring
    counter = _SyncCounter(monkeypatch)
    lightcache.enable(pipe, policy=make(), memory=MemoryPlan())  # default plan: swap on CUDA, no peaks
    try:
        counter.active = True
        output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        counter.active = False
        assert counter.calls == [], f"host waits during the call: {counter.calls}"
        torch.cuda.synchronize()
        lightcache.report(pipe)  # reading the stage times after the call may wait: allowed
    finally:
        counter.active = False
        lightcache.disable(pipe)

    # without reuse (no policy) lightcache adds no synchronising torch operation to the pipeline's
    def call():
        output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))

    plain = _implicit_syncs(call)
    lightcache.enable(pipe, policy=None, memory=MemoryPlan())
    try:
        call()  # warm-up
        enabled = _implicit_syncs(call)
    finally:
        lightcache.disable(pipe)
    assert enabled <= plain, f"lightcache added {enabled - plain} synchronising operations to the call"
