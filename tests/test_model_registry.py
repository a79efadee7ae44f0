"""The model-family registry (lightcache.models): one entry per family, every lookup by class MRO
(denoiser -> family/adapter, block -> chunking spec, VAE -> slicer), presets read by the policies,
registration by importing the package, the public names kept."""

import pkgutil
import sys

import pytest
import torch

import lightcache.adapters as adapters
import lightcache.models as models
from lightcache import EasyCache, MemoryPlan
from lightcache.memory import chunk_dit
from lightcache.memory.chunk import install_chunking, remove_chunking
from lightcache.memory.decode import _Decoder, check_decode_slicing
from lightcache.models import registry

from tiny_pipelines import FAMILIES, build, denoiser

DIT_FAMILIES = ("wan", "wan_i2v", "hunyuan_video", "cogvideox", "ltx", "easyanimate")
REGISTRY_NAME = {"wan_i2v": "wan"}  # tiny pipeline -> registry family


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables as copies, restored after the test."""
    for name in ("_FAMILIES", "_DENOISERS", "_BLOCKS", "_VAES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tiny_pipeline_finds_its_entry(family):
    pipe, _ = build(family)
    den = denoiser(pipe)
    entry = models.family_for(den)
    assert entry.name == REGISTRY_NAME.get(family, family)
    assert models.adapter_for(den) is entry.adapter is adapters.adapter_for(den)
    blocks = entry.adapter.blocks(den)
    if family in DIT_FAMILIES:  # every DiT block has a chunking spec of its own family
        specs = [models.chunking_for(b) for b in blocks]
        assert all(s is not None and s is entry.chunking[type(b).__name__] for s, b in zip(specs, blocks))
    slicer = models.slicer_for(pipe.vae)  # every family's VAE has its sliced decode
    assert slicer is not None and slicer in {s for f in models.families() for s in f.slicers.values()}


def test_subclasses_are_covered_by_their_bases_entry():
    """Denoiser, block and VAE lookups walk the MRO: subclasses of supported diffusers classes get
    the base's adapter, chunking spec and slicer."""
    pipe, _ = build("wan")
    den = pipe.transformer
    base_adapter = models.adapter_for(den)
    base_spec = chunk_dit.family_of(den.blocks[0])
    base_slicer = models.slicer_for(pipe.vae)
    den.__class__ = type("MyWan", (type(den),), {})
    for b in den.blocks:
        b.__class__ = type("MyWanBlock", (type(b),), {})
    pipe.vae.__class__ = type("MyWanVAE", (type(pipe.vae),), {})
    assert models.adapter_for(den) is base_adapter
    assert chunk_dit.family_of(den.blocks[0]) is base_spec is models.chunking_for(den.blocks[0])
    assert models.slicer_for(pipe.vae) is base_slicer
    check_decode_slicing(pipe.vae, MemoryPlan(decode_slices=1))  # accepted
    # and the subclass's blocks really run chunked through the DiT piece hook
    hooked = install_chunking(den.blocks, 2, model=den)
    try:
        hooks = [b._diffusers_hook.get_hook("lightcache.chunk.dit") for b in den.blocks]
        assert all(isinstance(h, chunk_dit.DitChunkHook) and h.family is base_spec for h in hooks)
    finally:
        remove_chunking(hooked)


def test_unregistered_classes_are_refused_naming_what_is_supported():
    with pytest.raises(ValueError, match=r"no adapter for Linear\. Supported denoisers: .*CogVideoXTransformer3DModel, .*"
                                         r"WanTransformer3DModel.*The generic adapter does not apply: no block list found.*"
                                         r"it has no nn\.ModuleList attribute"):
        models.adapter_for(torch.nn.Linear(2, 2))
    assert chunk_dit.family_of(torch.nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match=r"MemoryPlan\.decode_slices: sliced decode supports AutoencoderKL, "
                                         r".*AutoencoderKLWan \(and their subclasses\); the pipeline's VAE is Linear"):
        check_decode_slicing(torch.nn.Linear(2, 2), MemoryPlan(decode_slices=1))


def test_easycache_presets_come_from_the_registry(scratch_registry):
    assert EasyCache.for_model("wan") == EasyCache(0.05, 10)
    assert EasyCache.for_model("hunyuan_video") == EasyCache(0.025, 5)
    with pytest.raises(ValueError, match=r"the 'ltx' family has no EasyCache preset \(families with one: "
                                         r"\['hunyuan_video', 'wan'\]\); use lightcache.calibrate"):
        EasyCache.for_model("ltx")
    with pytest.raises(ValueError, match=r"family must be one of .*got 'no-such-family'"):
        EasyCache.for_model("no-such-family")
    entry = models.family("ltx")
    models.register_family(models.ModelFamily(entry.adapter, entry.chunking, entry.slicers,
                                              presets={"EasyCache": {"threshold": 0.1, "warmup_steps": 3}}))
    assert EasyCache.for_model("ltx") == EasyCache(0.1, 3)


def test_presets_accept_a_pipeline_or_denoiser_instance_or_class():
    """for_model takes what a user has at hand: the pipeline (its denoiser decides: a subclass or
    variant pipeline), the pipeline class (through the family's ``pipelines``), the denoiser or
    its class (by MRO); anything else is refused naming what is accepted."""
    import diffusers

    from lightcache import ForecastCache

    pipe, _ = build("wan")
    wan = EasyCache(0.05, 10)
    for what in (pipe, type(pipe), pipe.transformer, type(pipe.transformer), diffusers.WanImageToVideoPipeline,
                 type("MyWanPipeline", (diffusers.WanPipeline,), {})):
        assert EasyCache.for_model(what) == wan, what
    assert ForecastCache.for_model(pipe) == ForecastCache(threshold=0.2)
    assert EasyCache.for_model(diffusers.HunyuanVideoPipeline) == EasyCache(0.025, 5)
    assert ForecastCache.for_model(diffusers.CogVideoXPipeline) == ForecastCache(threshold=0.2)
    with pytest.raises(ValueError, match=r"the 'cogvideox' family has no EasyCache preset"):
        EasyCache.for_model(diffusers.CogVideoXPipeline)
    with pytest.raises(ValueError, match=r"model: Linear is not a registered family, nor a pipeline or denoiser of "
                                         r"one; give a family name"):
        EasyCache.for_model(torch.nn.Linear(2, 2))


def test_a_new_family_is_one_registration(scratch_registry):
    """A family registered for its classes is found by every lookup (and by subclasses)."""

    class ToyTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([ToyBlock(), ToyBlock()])

    class ToyBlock(torch.nn.Module):
        def forward(self, hidden_states):
            return hidden_states

    class ToyVAE(torch.nn.Module):
        pass

    from lightcache.memory.decode import PerFrameSlicer

    spec = chunk_dit._Family()
    toy = models.register_family(models.ModelFamily(
        adapter=models.ModelAdapter(family="toy", model_classes=("ToyTransformer",), block_lists=("layers",)),
        chunking={"ToyBlock": spec}, slicers={"ToyVAE": PerFrameSlicer},
    ))
    sub = type("ToySub", (ToyTransformer,), {})()
    assert models.family_for(sub) is toy and len(toy.adapter.blocks(sub)) == 2
    assert models.chunking_for(sub.layers[0]) is spec
    assert models.slicer_for(type("ToyVAESub", (ToyVAE,), {})()) is PerFrameSlicer
    assert "ToyTransformer" in models.supported_classes() and "ToyVAE" in models.supported_vaes()


def test_register_adapter_keeps_the_familys_other_parts(scratch_registry):
    """lightcache.adapters.register_adapter (the older public name) replaces only the adapter."""
    old = models.family("wan")
    new = adapters.ModelAdapter(family="wan", model_classes=("WanTransformer3DModel",), block_lists=("blocks",))
    assert adapters.register_adapter(new) is new
    entry = models.family("wan")
    assert entry.adapter is new and entry.chunking is old.chunking and entry.slicers is old.slicers
    assert entry.presets is old.presets


def test_importing_the_package_registers_every_family_folder():
    folders = [m.name for m in pkgutil.iter_modules(models.__path__) if m.ispkg]
    assert all(f"lightcache.models.{name}" in sys.modules for name in folders)
    assert sorted(folders) == sorted(f.name for f in models.families())


def test_public_names_are_kept():
    from lightcache.adapters import ModelAdapter, adapter_for, register_adapter, supported_classes  # noqa: F401
    from lightcache.memory.chunk_dit import DitChunkHook, family_of  # noqa: F401
    from lightcache.memory.decode import DecodePlan, check_decode_slicing, plan_decode, sliced_decode  # noqa: F401
    from lightcache.adapters.base import ModelAdapter as Base

    assert Base is ModelAdapter is models.ModelAdapter
    assert supported_classes() == models.supported_classes()


def test_bench_frame_layout_comes_from_the_registry():
    from lightcache.bench import _frame_layout, _framed_denoisers

    assert _frame_layout(build("wan")[0].transformer) == "BCFHW"
    assert _frame_layout(build("cogvideox")[0].transformer) == "BFCHW"
    assert _frame_layout(build("ltx")[0].transformer) is None  # packed tokens
    assert _frame_layout(torch.nn.Linear(2, 2)) is None
    assert {"CogVideoXTransformer3DModel", "EasyAnimateTransformer3DModel", "HunyuanVideoTransformer3DModel",
            "WanTransformer3DModel"} <= set(_framed_denoisers())  # and the families added since


def test_decode_overlap_refusal_lists_the_slicers_that_take_it():
    vae = build("wan")[0].vae
    with pytest.raises(ValueError, match=r"decode_overlap applies to .*, not AutoencoderKLWan") as info:
        _Decoder(vae, MemoryPlan(decode_slices=1, decode_overlap=1))
    listed = str(info.value).split("applies to ")[1].split(", not")[0].replace(" and ", ", ").split(", ")
    assert listed == models.slicers_taking_overlap()
    assert {"AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo"} <= set(listed)


def test_a_registration_wins_over_the_generic_adapter_and_unregistered_restores_it():
    """Registered first, else generic: the same model gets its family's adapter, the generic one
    inside ``unregistered``, and its family's again after."""
    from lightcache.models.generic import GenericAdapter, GenericAdapterWarning

    den = denoiser(build("hunyuan_video")[0])
    entry = models.family("hunyuan_video")
    assert models.family_for(den) is entry
    with registry.unregistered("hunyuan_video"):
        with pytest.warns(GenericAdapterWarning):
            generic = models.family_for(den)
        assert isinstance(generic.adapter, GenericAdapter) and generic.name == "generic:HunyuanVideoTransformer3DModel"
        assert generic.chunking == {} and generic.slicers == {} and generic.presets == {}
        assert registry.registered_family_for(den) is None
    assert models.family_for(den) is entry and models.adapter_for(den) is entry.adapter
