"""Every claimed combination: family × policy × memory plan (issue 10's matrix).

For every family the README lists (plus Wan image-to-video), every policy that applies to it, and
every memory-plan option, on the tiny random-weight pipelines:

* a policy that does not apply is refused at ``enable()`` and the pipeline is left untouched;
* a lossless setting (the policy configured never to reuse, or no policy) gives the plain
  pipeline's video: bit-identical where the plan is lossless (device/swapped cache in any storage
  dtype: nothing is reused), ≤ 1e-5 where it chunks or slices the decode exactly; the decode slices
  of the VAEs that are not exact (HunyuanVideo, SVD) warn at enable time;
* a reusing setting skips work, counted on a leaf layer of every block (a reused block still goes
  through the block's ``__call__``: only its layers tell), the report agrees with the count, the
  swapped cache is bit-identical to the device cache, chunking and exact decode slices keep its
  decisions and video (≤ 1e-5), compressed storage stays within a stated tolerance;
* after every call no state survives (no open ring, no tracker, no cached tensor, no per-call
  state), and ``disable()`` restores every module, the scheduler, the VAE and the pipeline exactly;
* CFG off, batch 2 and a second call with another frame count are correct (every policy without a
  plan, the family's most involved policy with every plan option at once).

A variant pipeline (image-to-video) of a family whose main pipeline runs all of this declares
``cells="reduced"`` (MatrixInfo) and runs the subset :func:`reduced_cells` names.

Each pipeline run takes 0.05–0.3 s on 2 cores; the whole matrix stays around two minutes.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lightcache
from lightcache.engine import session_of
from lightcache.memory import MemoryPlan
from lightcache.memory.meter import tracking
from lightcache.ring import get_ring, open_rings

from tiny_pipelines import ALL_FAMILIES as FAMILIES, build, denoiser, matrix_info, output_of

# per-family settings (tests/tiny_pipelines.py, MatrixInfo): which are UNets, whose decode slices
# are not the one-call decode (HunyuanVideo, SVD), exact slice counts (CogVideoX decodes in its own
# frame batches of 2 latent frames), rows per chunk, how guidance is turned off
UNETS = tuple(f for f in FAMILIES if matrix_info(f)["kind"] == "unet")
DITS = tuple(f for f in FAMILIES if f not in UNETS)
STEPS = 4
INEXACT_DECODE = tuple(f for f in FAMILIES if matrix_info(f)["inexact_decode"])
DECODE_SLICES = {f: matrix_info(f)["decode_slices"] for f in FAMILIES}

# policy name -> (lossless instance, reusing instance), per kind of denoiser
DIT_POLICIES = {
    "easycache": (lambda: lightcache.EasyCache(threshold=0.0, warmup_steps=0),
                  lambda: lightcache.EasyCache(threshold=10.0, warmup_steps=1)),
    "precisecache": (lambda: lightcache.PreciseCache(alpha=0.0),
                     lambda: lightcache.PreciseCache(alpha=1.0, warmup_ratio=0.25)),
    "precisecache-flash": (lambda: lightcache.PreciseCache(mode="flash", alpha=0.0, block_ratio=1.0),
                           lambda: lightcache.PreciseCache(mode="flash", alpha=1.0, block_ratio=0.5, warmup_ratio=0.25)),
    # reusing at 4 steps: step 0 warm-up, step 1 computed (the rate), step 2 forecast from both Δs
    "forecast": (lambda: lightcache.ForecastCache(threshold=0.0, warmup_ratio=0.0),
                 lambda: lightcache.ForecastCache(threshold=10.0, warmup_ratio=0.25)),
}
# ForecastCache decides with EasyCache's schedule (whose cells run every plan): its own cells are
# lossless, its forecast skipping work (leaf counts), and the forecast from swapped Δs
# bit-identical to the device store's, on every DiT family
FORECAST_CELLS = {"lossless": {"none"}, "reusing": {"none", "swap"}, "variant": set()}
UNET_POLICIES = {
    "deepcache": (lambda: lightcache.DeepCache(interval=1), lambda: lightcache.DeepCache(interval=2)),
}
ALL_POLICIES = {**DIT_POLICIES, **UNET_POLICIES}


def policies_for(family):
    return UNET_POLICIES if family in UNETS else DIT_POLICIES


# rows per chunk: the tiny DiTs have 12-24 tokens a call (2 splits them into >= 4 sequence pieces);
# the tiny UNets' top level 8 frames x 64 pixels (128: 2 frames or 16 pixels a piece)
CHUNK = {f: matrix_info(f)["chunk"] for f in FAMILIES}  # None: the chunk plan has nothing to split


def plans_for(family):
    """The plans of ``family``'s cells: no "chunk" cell where chunking has nothing to split (the
    "all" plan then goes without chunk_size)."""
    return tuple(m for m in PLANS if not (m == "chunk" and CHUNK[family] is None))


def reduced_cells(family):
    """The (policy, plan) cells of a ``cells="reduced"`` family (MatrixInfo), per test: lossless and
    reusing (the refusals and the decode warning run for every family). The chunk and decode plans
    run with reuse on, compared with the unchunked, one-call-decode reuse (same decisions, <= 1e-5
    where the decode is exact)."""
    pols = tuple(policies_for(family))
    plans = plans_for(family)
    lossless = {(pols[0], "none")}
    reusing = {(p, "none") for p in pols} | {(pols[0], m) for m in ("chunk", "decode")}
    return {"lossless": {c for c in lossless if c[1] in plans}, "reusing": {c for c in reusing if c[1] in plans}}


def in_cells(family, test, policy_name, plan_name):
    """Whether ``family`` runs the (policy, plan) cell of ``test`` ("lossless", "reusing", "variant")."""
    if policy_name == "forecast":
        return plan_name in FORECAST_CELLS[test] and (matrix_info(family)["cells"] == "full" or plan_name == "none")
    if matrix_info(family)["cells"] == "full":
        return True
    return test != "variant" and (policy_name, plan_name) in reduced_cells(family)[test]


def plan(name: str, family: str):
    slices = DECODE_SLICES.get(family, 1)
    chunk = CHUNK.get(family, 2)
    return {
        "none": None,
        "swap": MemoryPlan(swap="on"),
        "swap-bf16": MemoryPlan(swap="on", cache_dtype="bf16"),
        "swap-fp8": MemoryPlan(swap="on", cache_dtype="fp8"),
        "chunk": MemoryPlan(chunk_size=chunk),
        "decode": MemoryPlan(decode_slices=slices),
        "all": MemoryPlan(swap="on", cache_dtype="bf16", chunk_size=chunk, decode_slices=slices),
    }[name]


PLANS = ("none", "swap", "swap-bf16", "swap-fp8", "chunk", "decode", "all")
LOSSLESS_PLANS = ("none", "swap", "swap-bf16", "swap-fp8")  # bit-identical when nothing is reused
CHUNKED = ("chunk", "all")
SLICED = ("decode", "all")


# -- pipelines and their plain outputs, built once ----------------------------------------------

_PIPES: dict = {}
_PLAIN: dict = {}
_REUSING: dict = {}


def pipeline(family):
    if family not in _PIPES:
        pipe, kwargs = build(family)
        kwargs = dict(kwargs, num_inference_steps=STEPS)
        _PIPES[family] = (pipe, kwargs)
        # a pipeline call sets attributes of its own (pipe._attention_kwargs, scheduler state,
        # VAE caches): run it once so that what the tests compare is only what lightcache changes
        _PLAIN[(family, "default")] = run(pipe, kwargs)
    return _PIPES[family]


def variant_kwargs(family, kwargs, variant):
    """Call kwargs of a variant: "default", "no-cfg", "batch2", "latent", "frames" (fewer frames)."""
    kw = dict(kwargs)
    if variant == "no-cfg":
        kw.update(matrix_info(family)["no_cfg"])
    elif variant == "batch2":  # two different prompts (and SVD images) in one call
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor) and v.shape[0] == 1:
                second = v if "mask" in k else (v.flip(-1) if k == "image" else -v)
                kw[k] = torch.cat([v, second])
    elif variant == "latent":  # the denoised latents, before the VAE (which amplifies differences)
        kw["output_type"] = "latent"
    elif variant == "frames":
        kw["num_frames"] = matrix_info(family)["frames"]
        kw.update(matrix_info(family)["variant_extra"])
    return kw


def run(pipe, kwargs):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))


def plain(family, variant="default"):
    key = (family, variant)
    pipe, kwargs = pipeline(family)
    if key not in _PLAIN:
        _PLAIN[key] = run(pipe, variant_kwargs(family, kwargs, variant))
    return _PLAIN[key]


# -- what a call leaves behind -------------------------------------------------------------------


def _state_of(pipe):
    """Everything lightcache could leave on the user's objects: instance attributes of the pipeline,
    its scheduler and VAE, and of every module of the denoiser, and the hooks of every registry."""
    model = denoiser(pipe)
    objs = {"pipe": pipe, "scheduler": pipe.scheduler, "vae": pipe.vae}
    snap = {name: sorted(vars(o)) for name, o in objs.items()}
    for name, m in model.named_modules():
        reg = getattr(m, "_diffusers_hook", None)
        snap[f"module:{name}"] = (
            "forward" in vars(m),
            hasattr(m, "_diffusers_hook"),
            tuple(reg.hooks) if reg is not None else None,
            hasattr(m, "_lightcache_session"),
        )
    return snap


def assert_nothing_survives_the_call(pipe):
    session = session_of(denoiser(pipe))
    assert session is not None
    assert session.store is None and session.policy_state is None and not session.run_active
    assert session._current_call is None and session._call_args is None and not session.in_trial
    # a swap store's pinned rings stay open for the next call, empty (freed by disable())
    kept = {r.id for rs in getattr(session._kept_store, "_rings", {}).values() for r in rs}
    assert set(open_rings()) <= kept, "a ring outside the session's kept store stayed open"
    assert all(len(get_ring(i)) == 0 for i in open_rings()), "a ring still holds a cached feature"
    assert not tracking()
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    assert list(_get_current_dispatch_mode_stack()) == []


def chunk_splits(pipe) -> int:
    """How many calls of lightcache's chunk hooks ran in more than one piece."""
    session = session_of(denoiser(pipe))
    hooks = [h for m in session.hooks for n, h in m._diffusers_hook.hooks.items() if n.startswith("lightcache.chunk")]
    return sum(getattr(h, "split_calls", 0) for h in hooks)


class LeafCounter:
    """Counts executions of each block by a leaf layer that sees the block's tokens (a DiT block's
    first attention query projection, ``to_q`` or Kandinsky 5's ``to_query``; a UNet block's first
    convolution), outside PreciseCache's pooled trial forward (not counted as work: the session
    says when it runs). Not by input size: a block's calls differ in size between branches where
    the model drops padded text tokens (HunyuanVideo Framepack's single-stream blocks at batch 1)."""

    def __init__(self, model):
        blocks = lightcache.adapters.adapter_for(model).blocks(model)
        self.session = session_of(model)
        self.sizes = [[] for _ in blocks]
        self.handles = []
        for j, b in enumerate(blocks):
            leaf = next((m for n, m in b.named_modules() if n.endswith(("to_q", "to_query"))), None)
            if leaf is None:
                leaf = next(m for m in b.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
            self.handles.append(leaf.register_forward_hook(self._hook(j)))

    def _hook(self, j):
        def record(module, args, out):
            if not self.session.in_trial:
                self.sizes[j].append(args[0].numel())

        return record

    def remove(self):
        for h in self.handles:
            h.remove()

    def full_runs(self) -> int:
        return sum(len(s) for s in self.sizes)


def run_enabled(family, policy, memory, variant="default", count=False):
    """(video, report, leaf block runs or None) of one call with lightcache enabled, then checks
    that nothing of the call survives and that disable() restores everything."""
    pipe, kwargs = pipeline(family)
    before = _state_of(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inexact-decode warnings are asserted in their own test
        lightcache.enable(pipe, policy=policy, memory=memory)
    counter = LeafCounter(denoiser(pipe)) if count else None
    try:
        out = run(pipe, variant_kwargs(family, kwargs, variant))
        rep = lightcache.report(pipe)
        assert_nothing_survives_the_call(pipe)
        if memory is not None and memory.chunk_size is not None:
            assert chunk_splits(pipe) > 0, "the chunk plan split nothing: the cell would test nothing"
    finally:
        if counter is not None:
            counter.remove()
        lightcache.disable(pipe)
    assert _state_of(pipe) == before, "disable() did not restore the pipeline exactly"
    assert open_rings() == [], "disable() left a ring open"
    return out, rep, (counter.full_runs() if counter is not None else None)


def close(a, b, tol):
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


def decisions(rep):
    return [(d.step, d.branch, d.computed, d.blocks_computed) for d in rep.decisions]


# -- refusals ------------------------------------------------------------------------------------


REFUSALS = [(f, p) for f in FAMILIES for p in ALL_POLICIES if p not in policies_for(f)]


@pytest.mark.parametrize("family,policy_name", REFUSALS)
def test_policy_that_does_not_apply_is_refused_at_enable(family, policy_name):
    pipe, _ = pipeline(family)
    before = _state_of(pipe)
    policy = ALL_POLICIES[policy_name][1]()
    expected = "DeepCache works on video UNets" if family in DITS else "works on video transformers"
    with pytest.raises(ValueError, match=expected):
        lightcache.enable(pipe, policy=policy, memory=MemoryPlan(swap="on"))
    assert _state_of(pipe) == before


@pytest.mark.parametrize("family", UNETS)
def test_deepcache_branch_deeper_than_the_unet_is_refused(family):
    pipe, _ = pipeline(family)
    n_up = len(denoiser(pipe).up_blocks)
    before = _state_of(pipe)
    with pytest.raises(ValueError, match=rf"DeepCache.branch must be <= {n_up - 2}"):
        lightcache.enable(pipe, policy=lightcache.DeepCache(branch=n_up - 1))
    assert _state_of(pipe) == before


# -- lossless settings ---------------------------------------------------------------------------

LOSSLESS_CELLS = [(f, p, m) for f in FAMILIES for p in (None, *policies_for(f)) for m in plans_for(f)
                  if in_cells(f, "lossless", p, m)]


@pytest.mark.parametrize("family,policy_name,plan_name", LOSSLESS_CELLS)
def test_lossless_setting_gives_the_plain_video(family, policy_name, plan_name):
    policy = None if policy_name is None else policies_for(family)[policy_name][0]()
    out, rep, runs = run_enabled(family, policy, plan(plan_name, family), count=plan_name not in CHUNKED)
    ref = plain(family)
    assert rep.reuse_ratio == 0.0 and rep.decisions
    assert all(d.computed and d.blocks_computed == d.blocks_total for d in rep.decisions)
    if runs is not None:  # every block of every call ran, once
        assert runs == sum(d.blocks_total for d in rep.decisions)
    if plan_name in LOSSLESS_PLANS:
        assert torch.equal(out, ref)
    elif plan_name in SLICED and family in INEXACT_DECODE:
        assert out.shape == ref.shape and torch.isfinite(out).all()  # not exact by design (warned)
    else:
        assert close(out, ref, 1e-5), (out - ref).abs().max().item()


# -- reusing settings ----------------------------------------------------------------------------

REUSING_CELLS = [(f, p, m) for f in FAMILIES for p in policies_for(f) for m in plans_for(f)
                 if in_cells(f, "reusing", p, m)]
# compressed storage: max |latent − latent with the exact cache| relative to the latents' max (the
# reused features are rounded to bf16 (8 bits of mantissa) or e4m3 with per-token scales (4 bits);
# the tiny random models amplify that over the later steps, measured up to 1.3e-2 / 9.5e-2)
COMPRESSED_TOL = {"swap-bf16": 2e-2, "swap-fp8": 1.5e-1}


def reusing_reference(family, policy_name, variant="default"):
    key = (family, policy_name, variant)
    if key not in _REUSING:
        _REUSING[key] = run_enabled(family, policies_for(family)[policy_name][1](), None, variant=variant, count=True)
    return _REUSING[key]


@pytest.mark.parametrize("family,policy_name,plan_name", REUSING_CELLS)
def test_reusing_setting_skips_work_under_every_plan(family, policy_name, plan_name):
    ref_out, ref_rep, ref_runs = reusing_reference(family, policy_name)
    total = sum(d.blocks_total for d in ref_rep.decisions)
    # the policy alone: it skips work, the leaf layers agree with the report
    assert ref_rep.reuse_ratio > 0
    assert ref_runs == sum(d.blocks_computed for d in ref_rep.decisions) < total
    assert torch.isfinite(ref_out).all()
    if plan_name == "none":
        return
    out, rep, runs = run_enabled(family, policies_for(family)[policy_name][1](), plan(plan_name, family),
                                 count=plan_name not in CHUNKED)
    assert rep.reuse_ratio > 0
    if runs is not None:
        assert runs == sum(d.blocks_computed for d in rep.decisions) < total
    if plan_name.startswith("swap"):
        assert rep.cache_bytes["host"] > 0  # the cache did go through the host ring
    if plan_name == "swap":
        assert decisions(rep) == decisions(ref_rep) and torch.equal(out, ref_out)
    elif plan_name in COMPRESSED_TOL:
        assert decisions(rep) == decisions(ref_rep) and torch.isfinite(out).all()
        lat_ref, _, _ = reusing_reference(family, policy_name, "latent")
        lat, _, _ = run_enabled(family, policies_for(family)[policy_name][1](), plan(plan_name, family), variant="latent")
        rel = ((lat - lat_ref).abs().max() / lat_ref.abs().max()).item()
        assert rel <= COMPRESSED_TOL[plan_name], rel
    elif plan_name == "chunk" or (plan_name == "decode" and family not in INEXACT_DECODE):
        assert decisions(rep) == decisions(ref_rep)
        assert close(out, ref_out, 1e-5), (out - ref_out).abs().max().item()
    else:  # "all" (bf16 storage), or an inexact decode: same kind of work, finite video
        assert out.shape == ref_out.shape and torch.isfinite(out).all()
        assert len(rep.decisions) == len(ref_rep.decisions)


# -- CFG off, batch 2, and a second call with another frame count --------------------------------

# the variants run every policy without a plan and the family's most involved policy (block-level
# reuse where it has one) under every plan option at once: each (policy, variant) and (plan,
# variant) pair is covered, and the reusing cells cover every (policy, plan) pair
VARIANT_POLICY_ALL = {"dit": "precisecache-flash", "unet": "deepcache"}
VARIANT_CELLS = [(f, p, m, v) for f in FAMILIES for p in policies_for(f) for m in ("none", "all")
                 for v in ("no-cfg", "batch2", "frames")
                 if m == "none" or p == VARIANT_POLICY_ALL[matrix_info(f)["kind"]]
                 if not (v == "batch2" and not matrix_info(f)["batch2"]) and not (v == "frames" and matrix_info(f)["frames"] is None)
                 and not (v == "no-cfg" and matrix_info(f)["no_cfg"] is None)  # no call argument turns CFG off
                 and in_cells(f, "variant", p, m)]


@pytest.mark.parametrize("family,policy_name,plan_name,variant", VARIANT_CELLS)
def test_cfg_off_batch2_and_other_sizes(family, policy_name, plan_name, variant):
    lossless, reusing = policies_for(family)[policy_name]
    ref = plain(family, variant)
    pipe, kwargs = pipeline(family)
    memory = plan(plan_name, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightcache.enable(pipe, policy=lossless(), memory=memory)
    try:
        first = run(pipe, kwargs)  # the default size first: the second call must not reuse it
        out = run(pipe, variant_kwargs(family, kwargs, variant))
        rep = lightcache.report(pipe)
        assert_nothing_survives_the_call(pipe)
    finally:
        lightcache.disable(pipe)
    assert first.shape == plain(family).shape and out.shape == ref.shape
    assert out.shape[0] == (2 if variant == "batch2" else 1)
    calls_per_step = 1 if variant == "no-cfg" else matrix_info(family)["cfg_calls"]
    assert len(rep.decisions) == STEPS * calls_per_step
    if plan_name == "none":
        assert torch.equal(out, ref)
    elif family in INEXACT_DECODE:
        assert torch.isfinite(out).all()
    else:
        assert close(out, ref, 1e-5), (out - ref).abs().max().item()
    if variant == "no-cfg":
        assert {d.branch for d in rep.decisions} <= {"joint", "cond"}
    out, rep, _ = run_enabled(family, reusing(), memory, variant=variant)
    assert out.shape == ref.shape and torch.isfinite(out).all() and rep.reuse_ratio > 0


# -- inexact decode warns at enable time ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_inexact_decode_slices_warn_once_at_enable(family):
    pipe, _ = pipeline(family)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightcache.enable(pipe, memory=plan("decode", family))
    lightcache.disable(pipe)
    inexact = [w for w in caught if "not exact" in str(w.message) or "differ" in str(w.message)]
    if family in INEXACT_DECODE:
        assert len(inexact) == 1, [str(w.message) for w in caught]
    else:
        assert not inexact, [str(w.message) for w in caught]
