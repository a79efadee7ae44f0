"""lightcache next to diffusers' own hooks and torch.compile of the blocks."""

import torch

import lightcache
from diffusers.hooks import apply_group_offloading

from tiny_pipelines import build, output_of


def run(pipe, kwargs, seed=0):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(seed)))


def lossless():
    return lightcache.EasyCache(threshold=0.0, warmup_steps=0)


def test_layerwise_casting_coexists_and_survives_disable():
    pipe, kw = build("wan")
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    casted = run(pipe, kw)
    lightcache.enable(pipe, policy=lossless())
    assert torch.equal(run(pipe, kw), casted)
    lightcache.enable(pipe, policy=lightcache.PreciseCache(mode="flash"))
    out = run(pipe, kw)
    assert torch.isfinite(out).all() and lightcache.report(pipe).reuse_ratio > 0
    lightcache.disable(pipe)
    # diffusers' layerwise-casting hooks are still in place and give the same output
    assert any("layerwise_casting" in name for m in pipe.transformer.modules()
               for name in getattr(getattr(m, "_diffusers_hook", None), "hooks", {}))
    assert torch.equal(run(pipe, kw), casted)


def test_group_offloading_coexists():
    pipe, kw = build("wan")
    ref = run(pipe, kw)
    apply_group_offloading(pipe.transformer, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1)
    lightcache.enable(pipe, policy=lossless())
    assert torch.equal(run(pipe, kw), ref)
    lightcache.enable(pipe, policy=lightcache.PreciseCache(mode="flash"))
    assert torch.isfinite(run(pipe, kw)).all() and lightcache.report(pipe).reuse_ratio > 0
    lightcache.disable(pipe)
    assert torch.equal(run(pipe, kw), ref)


def test_regional_compile_of_blocks_same_output_and_no_recompiles():
    pipe, kw = build("wan")
    lightcache.enable(pipe, policy=lightcache.PreciseCache(mode="flash"))
    eager = run(pipe, kw)
    eager_decisions = [(d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    pipe.transformer.compile_repeated_blocks(backend=counting_backend)
    try:
        compiled = run(pipe, kw)
        decisions = [(d.computed, d.blocks_computed) for d in lightcache.report(pipe).decisions]
        first = len(graphs)
        again = run(pipe, kw)
    finally:
        lightcache.disable(pipe)
        torch._dynamo.reset()
    assert torch.equal(compiled, eager) and torch.equal(again, eager)
    assert decisions == eager_decisions
    assert first > 0, "the blocks were compiled"
    assert len(graphs) == first, "a second run must not recompile (policy logic stays outside the graphs)"
