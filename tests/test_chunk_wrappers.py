"""Feature chunk never bypasses a layer's own forward (tracker issue 16).

The fused feed-forward op reads two Linear layers' weights instead of calling them; it is taken
only when that provably equals calling them (plain ``nn.Linear``, nothing wrapping them). Whatever
wraps a layer (PEFT LoRA, diffusers' layerwise casting, accelerate's hooks and offload, a
``nn.Linear`` subclass standing for bitsandbytes/GGUF layers, a parametrization, torch hooks) makes
the FFN run its own forward on each chunk, so the wrapper applies. Checked here for every wrapper kind, with and
without each caching policy, and with adapters changed between pipeline calls.

Stated tolerances: fp32 denoiser calls ≤ 1e-5 max abs (as tests/test_memory_chunk.py), fp32
pipelines ≤ 1e-5 of the largest output value; bf16 compute (layerwise casting): ≤ 1e-2 of the
largest output value (observed: exactly equal on every family tested). A user hook on a layer
inside a chunked FFN fires once per chunk (once per call when the call fits one chunk).
"""

import math

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention import FeedForward
from peft import LoraConfig, inject_adapter_in_model
from torch.nn.attention import SDPBackend, sdpa_kernel

import lightcache
from lightcache import DeepCache, EasyCache, MemoryPlan, PreciseCache
from lightcache.adapters import adapter_for
from lightcache.hookset import HookSet
from lightcache.memory import chunk as chunk_mod
from lightcache.memory.chunk import (
    CHUNK_HOOK,
    DIT_HOOK,
    UNET_HOOK,
    FeedForwardChunkHook,
    chunk_spec,
    install_chunking,
    remove_chunking,
)

from tiny_pipelines import FAMILIES, build, denoiser, denoiser_calls, output_of

DITS = ("wan", "wan_i2v", "hunyuan_video", "cogvideox", "ltx", "easyanimate")
FP8, BF16 = torch.float8_e4m3fn, torch.bfloat16

# PEFT target (a regex, full match): the FFNs' first projection (GELU/GEGLU proj; with the output
# Linear left plain this is the case the old check fused, LoRA ignored; LoRA on the output Linear
# is in the bare-FFN tests), HunyuanVideo's single-stream MLP, and every attention projection,
# joint-stream ones included
LORA_TARGETS = (
    r".*(\.net\.0\.proj|\.proj_mlp|\.to_q|\.to_k|\.to_v|\.to_out\.0"
    r"|\.add_q_proj|\.add_k_proj|\.add_v_proj|\.to_add_out)"
)


# -- helpers -----------------------------------------------------------------------------------------


def _run(pipe, kwargs):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))


def _sample(out):
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "sample", out)


def _call(model, call):
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the backend that query chunking splits
        return _sample(model(*call[0], **call[1])).clone()


def _pipe_kwargs(family, **extra):
    pipe, kwargs = build(family)
    if family != "svd":
        kwargs = dict(kwargs, output_type="latent")
    return pipe, dict(kwargs, **extra)


def _add_lora(model, name, seed, targets=LORA_TARGETS):
    # init_lora_weights=False: A and B random, so the adapter visibly changes the output
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    if hasattr(model, "add_adapter"):  # diffusers' PeftAdapterMixin (set_adapters & co.)
        model.add_adapter(cfg, adapter_name=name)
    else:  # EasyAnimate, SVD, TextToVideoSD have no mixin: PEFT directly
        inject_adapter_in_model(cfg, model, adapter_name=name)


def _ffn_hooks(model, chunk):
    """FeedForwardChunkHook alone on every FeedForward of ``model`` (the DiT piece path would run
    the FFNs on pieces no larger than the chunk, so this is where the FFN hook's paths split)."""
    import lightcache.ops  # noqa: F401  (registers the fused op)

    hooks = HookSet()
    for ff in [m for m in model.modules() if isinstance(m, FeedForward)]:
        hooks.register(ff, FeedForwardChunkHook(chunk_spec(chunk)), CHUNK_HOOK)
    return hooks


def _named(model, name):
    """The hooks registered as ``name`` anywhere in ``model``."""
    regs = [getattr(m, "_diffusers_hook", None) for m in model.modules()]
    return [reg.hooks[name] for reg in regs if reg is not None and name in reg.hooks]


def _chunked(model, mode, family):
    """``mode`` "ffn": the FFN hooks alone (chunk 4); "plan": install_chunking as MemoryPlan does
    (chunk 2 in DiTs, so their blocks run over >= MIN_PIECES pieces; 64 rows in UNets: their
    modules still split, in fewer pieces, which keeps the tests fast)."""
    if mode == "ffn":
        return _ffn_hooks(model, 4)
    return install_chunking(adapter_for(model).blocks(model), 2 if family in DITS else 64, model=model)


def _close(out, ref, rel):
    return (out.float() - ref.float()).abs().max().item() <= rel * max(1.0, ref.float().abs().max().item())


def _bf16_casting(pipe, kwargs):
    """diffusers' layerwise-casting setup (its pipeline tests' too): pipeline in bf16, the denoiser
    stored in fp8 and computed in bf16; prompt embeddings given in bf16 as a bf16 text encoder
    would produce them (CogVideoX and LTX do not cast given embeddings)."""
    pipe.to(dtype=BF16)
    denoiser(pipe).enable_layerwise_casting(storage_dtype=FP8, compute_dtype=BF16)
    return {k: (v.to(BF16) if k.endswith("embeds") else v) for k, v in kwargs.items()}


# -- the verdict on a bare FeedForward -----------------------------------------------------------------


def _ff(dim=16, dtype=torch.float32, act="gelu-approximate", seed=0):
    torch.manual_seed(seed)
    return FeedForward(dim, mult=4, activation_fn=act).eval().to(dtype)


def _x(rows=37, dim=16, dtype=torch.float32):
    return torch.randn(1, rows, dim, generator=torch.Generator().manual_seed(1)).to(dtype)


class _Scale(ModelHook):
    """A diffusers registry hook that changes the output (so skipping it would show)."""

    def post_forward(self, module, output):
        return output * 1.5


class _OffByOne(torch.nn.Linear):
    """Stands for a quantised nn.Linear subclass (bitsandbytes, GGUF): its forward is not F.linear
    on ``.weight``."""

    def forward(self, x):
        return super().forward(x) + 1.0


def _wrap_lora_in(ff):
    torch.manual_seed(3)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["net.0.proj"], init_lora_weights=False), ff)


def _wrap_lora_out(ff):
    torch.manual_seed(3)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["net.2"], init_lora_weights=False), ff)


def _wrap_forward_hook(ff):
    ff.net[2].register_forward_hook(lambda m, a, out: out * 1.5)


def _wrap_pre_hook(ff):
    ff.net[0].proj.register_forward_pre_hook(lambda m, a: (a[0] * 0.5,))


def _wrap_gelu_hook(ff):
    ff.net[0].register_forward_hook(lambda m, a, out: out + 0.25)


def _wrap_registry_hook(ff):
    HookRegistry.check_if_exists_or_initialize(ff.net[2]).register_hook(_Scale(), "test.scale")


def _wrap_accelerate_hook(ff):
    from accelerate.hooks import ModelHook as AccelerateHook, add_hook_to_module

    class Shift(AccelerateHook):
        def post_forward(self, module, output):
            return output - 0.5

    add_hook_to_module(ff.net[0].proj, Shift())


def _wrap_accelerate_offload(ff):
    from accelerate import cpu_offload

    # weights live on the meta device between calls, loaded by the hook for each forward
    cpu_offload(ff.net[2], execution_device=torch.device("cpu"))


def _wrap_subclass(ff):
    old = ff.net[2]
    new = _OffByOne(old.in_features, old.out_features)
    new.load_state_dict(old.state_dict())
    ff.net[2] = new


def _wrap_parametrize(ff):
    from torch.nn.utils import parametrize

    class Half(torch.nn.Module):
        def forward(self, w):
            return w * 0.5

    parametrize.register_parametrization(ff.net[2], "weight", Half())


def _wrap_instance_forward(ff):
    lin = ff.net[2]
    original = lin.forward
    lin.forward = lambda x: original(x) * 2.0  # a monkeypatch, as some offload tools do


WRAPPERS = {
    "peft_lora_proj_in": _wrap_lora_in,
    "peft_lora_proj_out": _wrap_lora_out,
    "torch_forward_hook": _wrap_forward_hook,
    "torch_forward_pre_hook": _wrap_pre_hook,
    "hook_on_gelu_module": _wrap_gelu_hook,
    "diffusers_registry_hook": _wrap_registry_hook,
    "accelerate_hook": _wrap_accelerate_hook,
    "accelerate_cpu_offload": _wrap_accelerate_offload,
    "linear_subclass": _wrap_subclass,
    "parametrization": _wrap_parametrize,
    "instance_forward": _wrap_instance_forward,
}


@pytest.mark.parametrize("kind", list(WRAPPERS))
def test_wrapped_ffn_layer_is_called_not_bypassed(kind):
    """Wrapped after the chunk hook is installed (the verdict is taken at call time): the chunked
    FFN equals the unchunked wrapped FFN and never runs the fused op; before wrapping, the same
    hook ran the fused op."""
    ff, x = _ff(), _x()
    hooks = _ffn_hooks(ff, 8)
    hook = ff._diffusers_hook.hooks[CHUNK_HOOK]
    with torch.no_grad():
        plain = ff(x)
        assert hook.fused_calls == 1
        WRAPPERS[kind](ff)
        out = ff(x)
        remove_chunking(hooks)
        ref = ff(x)
    assert hook.fused_calls == 1 and hook.split_calls == 2  # the wrapped call split, not fused
    if kind == "accelerate_cpu_offload":  # same values, but the weights the op would read are meta
        assert ff.net[2].weight.device.type == "meta"
    else:
        assert (ref - plain).abs().max().item() > 1e-2  # the wrapper matters
    assert (out - ref).abs().max().item() <= 1e-5


def test_a_call_that_fits_one_chunk_runs_the_fused_op_in_one_piece():
    """rows <= chunk: no split and no extra piece, but the fused op still stands in for the FFN where
    it may, so its GELU acts in place on the one hidden buffer: the call holds (rows, hidden) once
    instead of twice (LiveBytes peak, exact byte counts), for the same output bit for bit. A wrapped
    FFN in one chunk runs as it is (its own forward, once)."""
    from lightcache._live_bytes import LiveBytes
    from lightcache.memory.chunk_spec import counting

    ff, x = _ff(dim=16), _x(rows=37, dim=16)
    row_in, row_hidden = 16 * 4, 64 * 4  # fp32 bytes of one row of the input/output and of the hidden state

    def peak(fn):
        with torch.no_grad(), LiveBytes() as lb:
            out = fn(x)
        return lb.peak, out

    ref_peak, ref = peak(ff)
    hooks = _ffn_hooks(ff, 37)
    hook = ff._diffusers_hook.hooks[CHUNK_HOOK]
    with counting() as c:
        one_peak, out = peak(ff)
    assert (hook.split_calls, hook.fused_calls) == (0, 1) and (c.calls, c.pieces) == (0, 0)
    assert torch.equal(out, ref)
    # eager: the projection's output and GELU's output alive at once, then the output row
    assert ref_peak == 37 * (2 * row_hidden)
    assert one_peak == 37 * (row_hidden + row_in)  # the one hidden buffer and the preallocated output
    seen = []
    ff.net[2].register_forward_hook(lambda m, a, o: seen.append(1))
    with torch.no_grad():
        wrapped = ff(x)
    remove_chunking(hooks)
    assert (hook.split_calls, hook.fused_calls) == (0, 1) and seen == [1]
    assert torch.equal(wrapped, ref)


def test_layerwise_casting_on_a_bare_ffn():
    """fp8 storage / bf16 compute (diffusers' hook registry on each Linear): the chunked call used
    to hand fp8 weights to the fused op (TypeError); it now calls the layers, equal to unchunked."""
    from diffusers.hooks import apply_layerwise_casting

    ff, x = _ff(dtype=BF16), _x(dtype=BF16)
    apply_layerwise_casting(ff, storage_dtype=FP8, compute_dtype=BF16, skip_modules_pattern=())
    assert ff.net[2].weight.dtype == FP8
    with torch.no_grad():
        ref = ff(x)
        hooks = _ffn_hooks(ff, 8)
        out = ff(x)
    hook = ff._diffusers_hook.hooks[CHUNK_HOOK]
    remove_chunking(hooks)
    assert hook.split_calls == 1 and hook.fused_calls == 0
    assert torch.equal(out, ref)
    assert ff.net[2].weight.dtype == FP8  # the casting hook still put the weights back


def test_removing_a_wrapper_brings_the_fused_path_back():
    """The cached verdict is invalidated both ways: a hook added, then removed."""
    ff, x = _ff(), _x()
    hooks = _ffn_hooks(ff, 8)
    hook = ff._diffusers_hook.hooks[CHUNK_HOOK]
    with torch.no_grad():
        ff(x)
        handle = ff.net[2].register_forward_hook(lambda m, a, out: out)
        ff(x)
        handle.remove()
        ff(x)
    remove_chunking(hooks)
    assert (hook.split_calls, hook.fused_calls) == (3, 2)


def test_verdict_is_cached_until_something_changes(monkeypatch):
    """The structural check runs once per change, not per call (a call costs a few attribute
    reads: the verdict key)."""
    ff, x = _ff(), _x()
    checks = []
    real = chunk_mod._fused_parts
    monkeypatch.setattr(chunk_mod, "_fused_parts", lambda *a: checks.append(1) or real(*a))
    hooks = _ffn_hooks(ff, 8)
    with torch.no_grad():
        for _ in range(3):
            ff(x)
        handle = ff.net[0].proj.register_forward_pre_hook(lambda m, a: None)
        ff(x)
        ff(x)
        handle.remove()
        ff(x)
        ff.to(torch.float64)  # a dtype the op does not take
        ff(x.double())
    remove_chunking(hooks)
    assert len(checks) == 4


def test_autocast_and_autograd_take_the_layers():
    """Under autocast F.linear computes in the autocast dtype and the op would not; with autograd
    needed the op has no backward. Both run the layers per chunk, equal to unchunked."""
    ff, x = _ff(), _x()
    hooks = _ffn_hooks(ff, 8)
    hook = ff._diffusers_hook.hooks[CHUNK_HOOK]
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out_ac = ff(x)
    ff.zero_grad()
    xg = x.clone().requires_grad_(True)
    ff(xg).square().sum().backward()
    grads = [p.grad.clone() for p in ff.parameters()] + [xg.grad.clone()]
    assert (hook.split_calls, hook.fused_calls) == (2, 0)
    remove_chunking(hooks)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        ref_ac = ff(x)
    ff.zero_grad()
    xg = x.clone().requires_grad_(True)
    ff(xg).square().sum().backward()
    ref_grads = [p.grad for p in ff.parameters()] + [xg.grad]
    assert out_ac.dtype == ref_ac.dtype == BF16 and torch.equal(out_ac, ref_ac)
    assert all((g - r).abs().max().item() <= 1e-5 for g, r in zip(grads, ref_grads))


def test_global_module_hook_takes_the_layers():
    from torch.nn.modules.module import register_module_forward_hook

    ff, x = _ff(), _x()
    hooks = _ffn_hooks(ff, 8)
    hook = ff._diffusers_hook.hooks[CHUNK_HOOK]
    seen = []
    handle = register_module_forward_hook(lambda m, a, out: seen.append(type(m).__name__))
    try:
        with torch.no_grad():
            ff(x)
    finally:
        handle.remove()
        remove_chunking(hooks)
    assert hook.fused_calls == 0 and seen.count("Linear") == 2 * math.ceil(37 / 8)


@pytest.mark.parametrize("rows", [37, 8])
def test_user_hook_fires_once_per_chunk(rows):
    """Documented behaviour: a hook on a layer inside a chunked FFN sees each chunk (its rows), so
    it fires ceil(rows / chunk) times per FFN call; once when the call fits one chunk."""
    ff, x = _ff(), _x(rows)
    fired = []
    ff.net[2].register_forward_hook(lambda m, a, out: fired.append(a[0][..., 0].numel()))
    ff.net[0].proj.register_forward_pre_hook(lambda m, a: fired.append(-a[0][..., 0].numel()))
    hooks = _ffn_hooks(ff, 8)
    with torch.no_grad():
        ff(x)
    remove_chunking(hooks)
    n = math.ceil(rows / 8)
    assert len(fired) == 2 * n
    assert sum(r for r in fired if r > 0) == rows and -sum(r for r in fired if r < 0) == rows


# -- real denoisers: LoRA, hooks, adapters ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ffn", "plan"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_chunked_matches_unchunked_lora(family, mode):
    """PEFT LoRA on every FFN and attention projection, added after the chunk hooks: the chunked
    denoiser call equals the unchunked LoRA model (≤ 1e-5), not the LoRA-free one. The FFN hooks
    ran the fused op on the DiTs' GELU-tanh FFNs before the adapter and never after it."""
    pipe, kwargs = _pipe_kwargs(family)
    model = denoiser(pipe)
    call = denoiser_calls(pipe, kwargs, 1)[0]
    hooks = _chunked(model, mode, family)
    chunked_base = _call(model, call)
    fused_before = sum(h.fused_calls for h in _named(model, CHUNK_HOOK))
    _add_lora(model, "a", seed=1)
    chunked = _call(model, call)
    ffn = _named(model, CHUNK_HOOK)
    fused_after = sum(h.fused_calls for h in ffn)
    split = {name: sum(h.split_calls for h in _named(model, name)) for name in (CHUNK_HOOK, DIT_HOOK, UNET_HOOK)}
    remove_chunking(hooks)
    ref = _call(model, call)
    assert (ref - chunked_base).abs().max().item() > 1e-3  # the adapter matters
    assert (chunked - ref).abs().max().item() <= 1e-5
    assert fused_after == fused_before
    if mode == "ffn":
        assert split[CHUNK_HOOK] > 0
        assert (fused_before > 0) == (family in DITS)  # UNet FFNs are GEGLU: never fused
    else:
        assert split[DIT_HOOK if family in DITS else UNET_HOOK] > 0


@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "ltx", "animatediff"])
def test_hooks_on_ffn_and_attention_projections(family):
    """Forward hooks that change the output of an FFN Linear and of the self-attention key/value
    projections (which the DiT piece path calls per piece): chunked equals unchunked."""
    pipe, kwargs = _pipe_kwargs(family)
    model = denoiser(pipe)
    call = denoiser_calls(pipe, kwargs, 1)[0]
    for m in model.modules():
        if isinstance(m, FeedForward):
            m.net[-1].register_forward_hook(lambda mod, a, out: out * 1.25)
        for name in ("to_k", "to_v"):
            if isinstance(getattr(m, name, None), torch.nn.Linear):
                getattr(m, name).register_forward_hook(lambda mod, a, out: out + 0.1)
    ref = _call(model, call)
    hooks = _chunked(model, "plan", family)
    out = _call(model, call)
    remove_chunking(hooks)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", ["ffn", "plan"])
@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "animatediff"])
def test_adapter_switches_between_calls_take_effect(family, mode):
    """set_adapters / disable_adapters / enable_adapters / unload_lora between calls of a chunked
    denoiser: each call equals the unchunked model in the same adapter state; after unload_lora the
    fused op is back (DiTs)."""
    pipe, kwargs = _pipe_kwargs(family)
    model = denoiser(pipe)
    call = denoiser_calls(pipe, kwargs, 1)[0]
    base = _call(model, call)
    _add_lora(model, "a", seed=1)
    _add_lora(model, "b", seed=2)
    states = [
        ("a", lambda: model.set_adapters("a")),
        ("b", lambda: model.set_adapters("b")),
        ("a+b", lambda: model.set_adapters(["a", "b"], weights=[1.0, 0.5])),
        ("off", model.disable_adapters),
        ("on", model.enable_adapters),
    ]
    refs = {}
    for name, apply in states:
        apply()
        refs[name] = _call(model, call)
    assert torch.equal(refs["off"], base)  # PEFT's disabled layers compute the base layer exactly
    assert min((refs[a] - refs[b]).abs().max().item() for a, b in [("a", "b"), ("a", "a+b"), ("a+b", "off")]) > 1e-3
    model.set_adapters("a")
    hooks = _chunked(model, mode, family)
    try:
        for name, apply in states:
            apply()
            assert (_call(model, call) - refs[name]).abs().max().item() <= 1e-5, name
        fused = sum(h.fused_calls for h in _named(model, CHUNK_HOOK))
        model.unload_lora()
        out = _call(model, call)
        fused_after = sum(h.fused_calls for h in _named(model, CHUNK_HOOK))
    finally:
        remove_chunking(hooks)
    assert (out - base).abs().max().item() <= 1e-5
    assert fused == 0  # every FFN carried LoRA until then
    if mode == "ffn" and family in DITS:
        assert fused_after > 0  # plain nn.Linear again: the verdict saw the layers swapped back


# -- layerwise casting through the memory plan, every DiT family ------------------------------------------


@pytest.mark.parametrize("family", [*DITS, "animatediff"])
def test_layerwise_casting_pipeline_with_chunking(family):
    """enable_layerwise_casting(fp8 storage, bf16 compute) on the denoiser, lightcache's memory plan
    (chunk 4) against the same pipeline without lightcache: ≤ 1e-2 of the largest value (bf16;
    observed exact). Before issue 16 this raised (TypeError from the fused op on fp8 weights)."""
    pipe, kwargs = _pipe_kwargs(family, num_inference_steps=2)
    kwargs = _bf16_casting(pipe, kwargs)
    ref = _run(pipe, kwargs)
    lightcache.enable(pipe, memory=MemoryPlan(chunk_size=4 if family in DITS else 16))
    try:
        out = _run(pipe, kwargs)
        ffn = _named(denoiser(pipe), CHUNK_HOOK)
        split = sum(h.split_calls for name in (CHUNK_HOOK, DIT_HOOK, UNET_HOOK) for h in _named(denoiser(pipe), name))
    finally:
        lightcache.disable(pipe)
    assert split > 0 and sum(h.fused_calls for h in ffn) == 0
    assert _close(out, ref, 1e-2)


# -- with each caching policy on ---------------------------------------------------------------------------

POLICIES = {
    "easycache": ("wan", lambda: EasyCache(threshold=10.0, warmup_steps=2)),  # reuses every step after warmup
    "precisecache_flash": ("wan", lambda: PreciseCache(mode="flash")),
    # α = 1: the step after each computed one is always reused (A = s_t ≤ max s), whatever the
    # tiny model's signals
    "precisecache_turbo": ("wan", lambda: PreciseCache(mode="turbo", alpha=1.0)),
    "deepcache": ("animatediff", lambda: DeepCache(interval=3)),
}


def _plan(family):
    # UNets: 256 rows still split their FFNs, resnets and transformer blocks (4 frames a piece)
    return MemoryPlan(chunk_size=4 if family in DITS else 256)


def _with_policy(pipe, kwargs, policy, memory):
    lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        out = _run(pipe, kwargs)
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    return out, rep


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_lora_chunked_matches_unchunked(name):
    """LoRA on, the same policy with and without the memory plan: same decisions, output ≤ 1e-5 of
    the largest value; the cache really reused features."""
    family, policy = POLICIES[name]
    pipe, kwargs = _pipe_kwargs(family)
    _add_lora(denoiser(pipe), "a", seed=1)
    ref, ref_rep = _with_policy(pipe, kwargs, policy(), None)
    out, rep = _with_policy(pipe, kwargs, policy(), _plan(family))
    assert rep.reuse_ratio > 0 and rep.computed_steps() == ref_rep.computed_steps()
    assert _close(out, ref, 1e-5)


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_layerwise_casting_chunked_matches_unchunked(name):
    family, policy = POLICIES[name]
    pipe, kwargs = _pipe_kwargs(family)
    kwargs = _bf16_casting(pipe, kwargs)
    ref, ref_rep = _with_policy(pipe, kwargs, policy(), None)
    out, rep = _with_policy(pipe, kwargs, policy(), _plan(family))
    assert rep.reuse_ratio > 0 and rep.computed_steps() == ref_rep.computed_steps()
    assert _close(out, ref, 1e-2)


@pytest.mark.parametrize("change", ["disable_adapters", "set_adapters"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_cache_never_crosses_calls_when_adapters_change(name, change):
    """Call 1 with adapter "a" and a reusing policy (chunked); then the adapters change; call 2
    equals, bit for bit, call 1 of a fresh pipeline in the new adapter state (for
    disable_adapters: a fresh pipeline with no adapter at all). Nothing cached in call 1 leaks
    into call 2: the engine frees every cached feature when a pipeline call ends."""
    family, policy = POLICIES[name]

    def fresh(adapters):
        pipe, kwargs = _pipe_kwargs(family)
        model = denoiser(pipe)
        for n, seed in adapters:
            _add_lora(model, n, seed)
        return pipe, kwargs, model

    pipe, kwargs, model = fresh([("a", 1), ("b", 2)])
    model.set_adapters("a")
    lightcache.enable(pipe, policy=policy(), memory=_plan(family))
    try:
        first = _run(pipe, kwargs)
        assert lightcache.report(pipe).reuse_ratio > 0
        model.disable_adapters() if change == "disable_adapters" else model.set_adapters("b")
        second = _run(pipe, kwargs)
    finally:
        lightcache.disable(pipe)
    if change == "disable_adapters":
        pipe2, kwargs2, _ = fresh([])  # no PEFT layers: the DiTs' FFNs take the fused op here
    else:
        pipe2, kwargs2, model2 = fresh([("a", 1), ("b", 2)])
        model2.set_adapters("b")
    lightcache.enable(pipe2, policy=policy(), memory=_plan(family))
    try:
        expected = _run(pipe2, kwargs2)
    finally:
        lightcache.disable(pipe2)
    assert (first - second).abs().max().item() > 1e-3
    assert torch.equal(second, expected)


@pytest.mark.parametrize("name", list(POLICIES))
def test_user_hook_fires_once_per_chunk_under_policy(name):
    """Through lightcache.enable with a policy: a hook on each FFN's output Linear fires
    ceil(rows / chunk) times per FFN call that runs (once for a call within one chunk); reused
    blocks/steps call nothing."""
    family, policy = POLICIES[name]
    pipe, kwargs = _pipe_kwargs(family)
    model = denoiser(pipe)
    chunk = _plan(family).chunk_size
    expected, fired = [], []
    for ff in [m for m in model.modules() if isinstance(m, FeedForward)]:
        # a pre-hook on the FeedForward itself sees each FFN call whole (it wraps the chunk hook)
        ff.register_forward_pre_hook(lambda m, a: expected.append(max(1, math.ceil(a[0][..., 0].numel() / chunk))))
        ff.net[-1].register_forward_hook(lambda m, a, out: fired.append(1))
    _, rep = _with_policy(pipe, kwargs, policy(), _plan(family))
    assert rep.reuse_ratio > 0
    assert expected and len(fired) == sum(expected)
    if family in DITS:  # (in UNets the transformer-block pieces already keep each FFN call within one chunk)
        assert sum(expected) > len(expected)  # some FFN calls really split


# -- the issue's reproducers -----------------------------------------------------------------------------


def test_issue_reproducer_layerwise_casting_ltx():
    """The issue's one-layer LTX, fp8 storage / bf16 compute, MemoryPlan(chunk_size=16) on the
    denoiser: raised TypeError (fp8 weights handed to the fused op); now equals the unchunked call."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    m = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                                   attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
    m = m.to(BF16).eval()
    m.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=BF16)
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 48, 8, generator=g).to(BF16),
              encoder_hidden_states=torch.randn(1, 4, 32, generator=g).to(BF16), timestep=torch.tensor([500]),
              encoder_attention_mask=torch.ones(1, 4), num_frames=3, height=4, width=4)
    with torch.no_grad():
        ref = m(**kw)[0]
        lightcache.enable(m, memory=MemoryPlan(chunk_size=16))
        try:
            out = m(**kw)[0]
            ffn = _named(m, CHUNK_HOOK)
        finally:
            lightcache.disable(m)
    assert sum(h.split_calls for h in ffn) > 0 and torch.equal(out, ref)


def test_issue_reproducer_lora_wan():
    """A one-layer Wan with a LoRA adapter on ffn.net.0.proj, MemoryPlan(chunk_size=16): the output
    used to equal the LoRA-free model (the fused op read the base weights); now it equals the LoRA
    model."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                              out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
                              rope_max_seq_len=32).eval()
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 4, 3, 8, 8, generator=g), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 8, 16, generator=g))
    with torch.no_grad():
        base = m(**kw)[0]
        _add_lora(m, "default", seed=1, targets=["ffn.net.0.proj"])
        lora = m(**kw)[0]
        lightcache.enable(m, memory=MemoryPlan(chunk_size=16))
        try:
            out = m(**kw)[0]
            ffn = _named(m, CHUNK_HOOK)
        finally:
            lightcache.disable(m)
    assert sum(h.split_calls for h in ffn) > 0 and sum(h.fused_calls for h in ffn) == 0
    assert (lora - base).abs().max().item() > 1e-2
    assert (out - lora).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_lora_and_layerwise_casting_together(family):
    """LoRA loaded, then fp8/bf16 layerwise casting (diffusers adds its PEFT input-cast hook on the
    LoRA layers): chunked through the memory plan equals the same pipeline without lightcache."""
    pipe, kwargs = _pipe_kwargs(family, num_inference_steps=2)
    _add_lora(denoiser(pipe), "a", seed=1)
    kwargs = _bf16_casting(pipe, kwargs)
    ref = _run(pipe, kwargs)
    lightcache.enable(pipe, memory=MemoryPlan(chunk_size=4))
    try:
        out = _run(pipe, kwargs)
        ffn = _named(denoiser(pipe), CHUNK_HOOK)
    finally:
        lightcache.disable(pipe)
    assert sum(h.split_calls for h in ffn) > 0 and sum(h.fused_calls for h in ffn) == 0
    assert _close(out, ref, 1e-2)


class _CountingHook(ModelHook):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def new_forward(self, module, *args, **kwargs):
        self.calls += 1
        return self.fn_ref.original_forward(*args, **kwargs)


def test_dit_piece_path_sees_layers_injected_after_enable():
    """A layer replaced inside a DiT block after enable() (as loading an adapter does), with a
    diffusers hook of its own: the block then runs whole (its hook sees one call per block call,
    not one per piece), and the output equals the same model without lightcache."""
    pipe, kwargs = build("wan")
    model = denoiser(pipe)
    args, kw = denoiser_calls(pipe, kwargs, 1)[0]
    blocks = adapter_for(model).blocks(model)
    with torch.no_grad():
        lightcache.enable(model, memory=MemoryPlan(chunk_size=2))  # several pieces
        try:
            old = blocks[0].attn1.to_out[0]
            new = torch.nn.Linear(old.in_features, old.out_features)
            new.load_state_dict(old.state_dict())
            hook = _CountingHook()
            HookRegistry.check_if_exists_or_initialize(new).register_hook(hook, "user.count")
            blocks[0].attn1.to_out[0] = new  # injected after enable()
            out = _sample(model(*args, **kw))
            calls_chunked = hook.calls
        finally:
            lightcache.disable(model)
            blocks[0].attn1.to_out[0] = old
        with torch.no_grad():
            blocks[0].attn1.to_out[0] = new
            hook.calls = 0
            ref = _sample(model(*args, **kw))
            blocks[0].attn1.to_out[0] = old
    assert hook.calls == 1 and calls_chunked == 1
    assert (out - ref).abs().max().item() <= 1e-5
