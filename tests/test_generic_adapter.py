"""The generic adapter (lightcache.models.generic): a DiT nobody registered, described from its
structure. With a family's registration switched off, the generic adapter gives the registered
adapter's decisions and videos bit for bit (Wan, HunyuanVideo; EasyCache and PreciseCache); on
MotifVideo (registered by nobody) EasyCache skips block work and lossless settings give the plain
video; toy DiTs check dual-stream blocks returning (encoder, hidden), blocks of different stream
counts, the output-order check and the refusals. About 40 s on one loaded core."""

import warnings

import pytest
import torch
from torch import nn

import lightcache
import lightcache.models as models
from lightcache import EasyCache, PreciseCache
from lightcache.engine import session_of
from lightcache.models import registry
from lightcache.models.generic import GenericAdapter, GenericAdapterWarning, generic_adapter

from tiny_pipelines import _Seeder, _finish, _mask, _quiet_diffusers, _wan_vae, build, denoiser, output_of

STEPS = 4
REUSING = {
    "easycache": lambda: EasyCache(threshold=10.0, warmup_steps=1),
    "precisecache-flash": lambda: PreciseCache(mode="flash", alpha=1.0, block_ratio=0.5, warmup_ratio=0.25),
}
LOSSLESS = {
    "easycache": lambda: EasyCache(threshold=0.0, warmup_steps=0),
    "precisecache-flash": lambda: PreciseCache(mode="flash", alpha=0.0, block_ratio=1.0),
}


def decisions(rep):
    return [(d.step, d.branch, d.computed, d.blocks_computed) for d in rep.decisions]


def run(pipe, kwargs, policy):
    """(video, decisions, generic-adapter warnings) of one call with ``policy`` enabled."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightcache.enable(pipe, policy=policy)
    try:
        video = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        rep = lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)
    return video, decisions(rep), [w for w in caught if issubclass(w.category, GenericAdapterWarning)]


# -- registered families with their registration switched off -----------------------------------------


@pytest.mark.parametrize("family", ["wan", "hunyuan_video"])
@pytest.mark.parametrize("policy_name", sorted(REUSING))
def test_generic_adapter_equals_the_registered_one(family, policy_name):
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    video, decided, warned = run(pipe, kwargs, REUSING[policy_name]())
    assert not warned
    assert any(not d[2] or d[3] < len(models.adapter_for(denoiser(pipe)).blocks(denoiser(pipe))) for d in decided), \
        "the registered run reused nothing: the comparison would test nothing"
    pipe, kwargs = build(family)  # a fresh model: the generic adapter is built for it
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    with registry.unregistered(family):
        assert registry.registered_family_for(denoiser(pipe)) is None
        g_video, g_decided, g_warned = run(pipe, kwargs, REUSING[policy_name]())
    assert g_decided == decided
    assert torch.equal(g_video, video)
    assert len(g_warned) == 1 and "has no registered adapter; using the generic adapter" in str(g_warned[0].message)
    assert "How to add a family" in str(g_warned[0].message)


def test_generic_adapter_finds_the_registered_structure():
    """Block lists, streams, latent layouts and patch sizes as the registered adapters have them."""
    for family, frames_first in (("wan", False), ("hunyuan_video", False), ("cogvideox", True), ("easyanimate", False)):
        den = denoiser(build(family)[0])
        reg = models.adapter_for(den)
        gen = generic_adapter(den, warn=False)
        assert gen.block_lists == reg.block_lists
        assert [gen.outputs_of(b) for b in gen.blocks(den)] == [reg.block_outputs] * len(reg.blocks(den))
        assert gen.blocks(den) == reg.blocks(den)
        assert gen.layout.frames_first is frames_first
        assert gen.layout.tensor_format == reg.layout.tensor_format
        assert gen.layout.patch_multiple(den) == reg.layout.patch_multiple(den)


def test_cogvideox_trial_is_refused_and_its_input_signal_matches():
    """CogVideoX takes rotary tables computed for the full latent: the generic adapter cannot remake
    them, so PreciseCache's trial signal is refused at enable (nothing changes); the input signal
    gives the registered adapter's run."""
    pipe, kwargs = build("cogvideox")
    kwargs = dict(kwargs, num_inference_steps=STEPS)
    policy = PreciseCache(mode="flash", signal="input", alpha=1.0, block_ratio=0.5, warmup_ratio=0.25)
    video, decided, _ = run(pipe, kwargs, policy)
    with registry.unregistered("cogvideox"):
        with pytest.warns(GenericAdapterWarning), pytest.raises(
                ValueError, match=r"signal='trial'.*CogVideoXTransformer3DModel\.forward takes image_rotary_emb"):
            lightcache.enable(pipe, policy=PreciseCache())
        assert session_of(pipe.transformer) is None
        g_video, g_decided, _ = run(pipe, kwargs, policy)
    assert g_decided == decided and any(d[3] < 2 for d in decided)
    assert torch.equal(g_video, video)


def test_unregistered_switches_a_family_off_and_back():
    den = denoiser(build("wan")[0])
    tables = [dict(t) for t in (registry._FAMILIES, registry._DENOISERS, registry._BLOCKS, registry._VAES)]
    with registry.unregistered("wan"):
        assert "wan" not in [f.name for f in models.families()]
        assert "WanTransformer3DModel" not in models.supported_classes()
        assert models.chunking_for(den.blocks[0]) is None and "AutoencoderKLWan" not in models.supported_vaes()
        with pytest.warns(GenericAdapterWarning):
            assert isinstance(models.adapter_for(den), GenericAdapter)
    assert [dict(t) for t in (registry._FAMILIES, registry._DENOISERS, registry._BLOCKS, registry._VAES)] == tables
    assert models.adapter_for(den) is models.family("wan").adapter
    with pytest.raises(ValueError, match=r"family must be one of \[.*'wan'.*\], got 'nope'"):
        with registry.unregistered("nope"):
            pass


# -- MotifVideo: registered by nobody ------------------------------------------------------------------


def build_motif(guidance_scale=1.0, seed=0):
    """A tiny MotifVideo text-to-video pipeline (Wan VAE, 1 dual + 1 single-stream block),
    precomputed prompt embeddings, no text encoder. ``guidance_scale`` > 1 turns on the guider's
    CFG (two calls per step)."""
    from diffusers import (ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, MotifVideoPipeline,
                           MotifVideoTransformer3DModel)

    z, text_dim, seq = 4, 16, 8
    with torch.random.fork_rng(devices=[]), _quiet_diffusers():
        s = _Seeder(seed)
        vae = _wan_vae(s, z)
        s()
        transformer = MotifVideoTransformer3DModel(
            in_channels=2 * z + 1, out_channels=z, num_attention_heads=2, attention_head_dim=8, num_layers=1,
            num_single_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=text_dim, rope_axes_dim=(2, 2, 4),
        )
        pipe = MotifVideoPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=None, tokenizer=None,
            transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
        )
        pipe = _finish(pipe)
        kwargs = dict(prompt_embeds=s.randn(1, seq, text_dim), prompt_attention_mask=_mask(seq, 6),
                      negative_prompt_embeds=s.randn(1, seq, text_dim), negative_prompt_attention_mask=_mask(seq, 4),
                      height=32, width=32, num_frames=9, num_inference_steps=STEPS, output_type="pt")
    return pipe, kwargs


@pytest.fixture(scope="module")
def motif():
    pipe, kwargs = build_motif()
    plain = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
    return pipe, kwargs, plain


def _query_leaves(model):
    """Per block, the sizes its first query projection saw (a block's work, at full size; the
    pooled trial forward's calls are smaller)."""
    blocks = generic_adapter(model, warn=False).blocks(model)
    sizes, handles = [[] for _ in blocks], []
    for j, b in enumerate(blocks):
        leaf = next(m for n, m in b.named_modules() if n.endswith("to_q"))
        handles.append(leaf.register_forward_hook(lambda m, a, o, j=j: sizes[j].append(a[0].numel())))
    return sizes, handles


def test_motif_video_is_not_registered_and_gets_the_generic_adapter():
    pipe, _ = build_motif()
    assert registry.registered_family_for(pipe.transformer) is None
    with pytest.warns(GenericAdapterWarning, match=r"MotifVideoTransformer3DModel has no registered adapter.*blocks "
                                                   r"transformer_blocks \(MotifVideoTransformerBlock -> hidden_states, "
                                                   r"encoder_hidden_states\); single_transformer_blocks"):
        lightcache.enable(pipe, policy=PreciseCache())
    lightcache.disable(pipe)


def test_motif_video_easycache_skips_block_work(motif):
    pipe, kwargs, plain = motif
    sizes, handles = _query_leaves(pipe.transformer)
    try:
        video, decided, warned = run(pipe, kwargs, REUSING["easycache"]())
    finally:
        for h in handles:
            h.remove()
    computed = sum(1 for d in decided if d[2])
    assert len(decided) == STEPS and 0 < computed < STEPS  # CFG off: one joint call per step
    # every block ran once per computed call, at full size, and never in a reused one
    assert [len(s) for s in sizes] == [computed] * 2
    assert sum(d[3] for d in decided) == 2 * computed
    assert video.shape == plain.shape and torch.isfinite(video).all() and not torch.equal(video, plain)


def test_motif_video_precisecache_flash_skips_blocks(motif):
    pipe, kwargs, plain = motif
    sizes, handles = _query_leaves(pipe.transformer)
    try:
        video, decided, _ = run(pipe, kwargs, REUSING["precisecache-flash"]())
    finally:
        for h in handles:
            h.remove()
    full = [sum(1 for n in s if n == max(s)) for s in sizes]  # the trial forward runs on a pooled latent
    assert sum(full) == sum(d[3] for d in decided) < 2 * len(decided)
    assert torch.isfinite(video).all()


@pytest.mark.parametrize("policy_name", sorted(LOSSLESS))
def test_motif_video_lossless_settings_give_the_plain_video(motif, policy_name):
    pipe, kwargs, plain = motif
    video, decided, _ = run(pipe, kwargs, LOSSLESS[policy_name]())
    assert all(d[2] and d[3] == 2 for d in decided)
    assert torch.equal(video, plain)


def test_motif_video_memory_plan_chunks_its_unregistered_blocks(motif):
    """Blocks with no chunk spec still run with query-chunked attention and chunked FFNs: the
    plan splits work and the video stays within the chunking tolerance (1e-5, fp32)."""
    from lightcache import MemoryPlan

    pipe, kwargs, plain = motif
    lightcache.enable(pipe, policy=LOSSLESS["easycache"](), memory=MemoryPlan(chunk_size=2, swap="on"))
    try:
        video = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        session = session_of(pipe.transformer)
        hooks = [h for m in session.hooks for n, h in m._diffusers_hook.hooks.items() if n.startswith("lightcache.chunk")]
        assert sum(getattr(h, "split_calls", 0) for h in hooks) > 0
    finally:
        lightcache.disable(pipe)
    assert (video - plain).abs().max().item() <= 1e-5


def test_motif_video_with_guider_cfg():
    """diffusers' guiders name their calls 'pred_cond'/'pred_uncond': the engine maps them to the
    cond/uncond branches, so CFG's two calls per step follow the leader's decision."""
    pipe, kwargs = build_motif(guidance_scale=5.0)
    video, decided, _ = run(pipe, kwargs, REUSING["easycache"]())
    assert [d[1] for d in decided] == ["cond", "uncond"] * STEPS
    assert any(not d[2] for d in decided) and all(decided[i][2] == decided[i + 1][2] for i in range(0, len(decided), 2))


# -- toy DiTs --------------------------------------------------------------------------------------------

DIM = 8


def _dual(block, h, e, temb):
    h = h + torch.tanh(block.to_q(h) + temb + e.mean(1, keepdim=True))
    e = e + torch.tanh(block.ctx(e) + temb)
    return h, e


def _single(block, h, temb):
    return h + torch.tanh(block.to_q(h) + temb)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(DIM, DIM)
        self.ctx = nn.Linear(DIM, DIM)


class EncoderFirstBlock(_Block):
    def forward(self, hidden_states, encoder_hidden_states, temb):
        hidden_states, encoder_hidden_states = _dual(self, hidden_states, encoder_hidden_states, temb)
        return encoder_hidden_states, hidden_states


class HiddenFirstBlock(_Block):
    def forward(self, hidden_states, encoder_hidden_states, temb):
        hidden_states, encoder_hidden_states = _dual(self, hidden_states, encoder_hidden_states, temb)
        return hidden_states, encoder_hidden_states


class SingleBlock(_Block):
    def forward(self, hidden_states, temb):
        hidden_states = _single(self, hidden_states, temb)
        return hidden_states


class PassThroughSingleBlock(_Block):
    """SingleBlock that also takes and returns the text stream, unchanged."""

    def forward(self, hidden_states, encoder_hidden_states, temb):
        hidden_states = _single(self, hidden_states, temb)
        return hidden_states, encoder_hidden_states


class MislabelledBlock(_Block):
    """Its return statement names (hidden, encoder) but returns them swapped."""

    def forward(self, hidden_states, encoder_hidden_states, temb):
        hidden_states, encoder_hidden_states = _dual(self, hidden_states, encoder_hidden_states, temb)
        hidden_states, encoder_hidden_states = encoder_hidden_states, hidden_states
        return hidden_states, encoder_hidden_states


def _toy_base():
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.models.cache_utils import CacheMixin

    return ModelMixin, ConfigMixin, CacheMixin


_ModelMixin, _ConfigMixin, _CacheMixin = _toy_base()


def _output(out, return_dict):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=out) if return_dict else (out,)


class ToyDiT(_ModelMixin, _ConfigMixin, _CacheMixin):
    """Dual-stream blocks returning (encoder, hidden), then single-stream blocks returning hidden."""

    from diffusers.configuration_utils import register_to_config as _register

    @_register
    def __init__(self, in_channels: int = 4, patch_size: int = 1, layers: int = 2):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, DIM)
        self.proj_out = nn.Linear(DIM, in_channels)
        self.double_blocks = nn.ModuleList([self.dual_class() for _ in range(layers)])
        self.single_blocks = nn.ModuleList([self.single_class() for _ in range(layers)])

    dual_class, single_class = EncoderFirstBlock, SingleBlock

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        batch_size, num_channels, num_frames, height, width = hidden_states.shape
        h = self.proj_in(hidden_states.flatten(2).transpose(1, 2))
        e = encoder_hidden_states
        temb = (timestep.float() / 1000).view(-1, 1, 1)
        for block in self.double_blocks:
            e, h = block(h, e, temb)
        for block in self.single_blocks:
            h = block(h, temb)
        out = self.proj_out(h).transpose(1, 2).reshape(batch_size, num_channels, num_frames, height, width)
        return _output(out, return_dict)


class ReferenceToyDiT(ToyDiT):
    """ToyDiT's computation with every block returning (hidden, encoder): registrable by hand."""

    dual_class, single_class = HiddenFirstBlock, PassThroughSingleBlock

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        batch_size, num_channels, num_frames, height, width = hidden_states.shape
        h = self.proj_in(hidden_states.flatten(2).transpose(1, 2))
        e = encoder_hidden_states
        temb = (timestep.float() / 1000).view(-1, 1, 1)
        for block in list(self.double_blocks) + list(self.single_blocks):
            h, e = block(h, e, temb)
        out = self.proj_out(h).transpose(1, 2).reshape(batch_size, num_channels, num_frames, height, width)
        return _output(out, return_dict)


class DualToyDiT(ToyDiT):
    """Blocks returning (encoder, hidden), then blocks returning (hidden, encoder)."""

    single_class = PassThroughSingleBlock

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        batch_size, num_channels, num_frames, height, width = hidden_states.shape
        h = self.proj_in(hidden_states.flatten(2).transpose(1, 2))
        e = encoder_hidden_states
        temb = (timestep.float() / 1000).view(-1, 1, 1)
        for block in self.double_blocks:
            e, h = block(h, e, temb)
        for block in self.single_blocks:
            h, e = block(h, e, temb)
        out = self.proj_out(h).transpose(1, 2).reshape(batch_size, num_channels, num_frames, height, width)
        return _output(out, return_dict)


class MislabelledToyDiT(ToyDiT):
    dual_class = MislabelledBlock

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        batch_size, num_channels, num_frames, height, width = hidden_states.shape
        h = self.proj_in(hidden_states.flatten(2).transpose(1, 2))
        e = encoder_hidden_states
        temb = (timestep.float() / 1000).view(-1, 1, 1)
        for block in self.double_blocks:
            e, h = block(h, e, temb)
        for block in self.single_blocks:
            h = block(h, temb)
        out = self.proj_out(h).transpose(1, 2).reshape(batch_size, num_channels, num_frames, height, width)
        return _output(out, return_dict)


def _toy(cls, seed=0):
    torch.manual_seed(seed)
    return cls().eval().requires_grad_(False)


def drive(model, steps=8):
    """A CFG sampling loop on the bare denoiser (steps from diffusers' cache_context)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 4, 4, generator=g)
    cond, uncond = torch.randn(1, 5, DIM, generator=g), torch.randn(1, 5, DIM, generator=g)
    for i, t in enumerate(torch.linspace(999, 100, steps)):
        outs = []
        for name, e in (("cond", cond), ("uncond", uncond)):
            with model.cache_context(name, step_index=i, num_inference_steps=steps):
                outs.append(model(x, t.expand(1), e, return_dict=False)[0])
        x = x - 0.1 * (outs[1] + 3.0 * (outs[0] - outs[1]))
    return x


def _driven(model, policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenericAdapterWarning)
        lightcache.enable(model, policy=policy)
    try:
        return drive(model), decisions(lightcache.report(model))
    finally:
        lightcache.disable(model)


def test_generic_adapter_reads_encoder_first_returns_and_mixed_streams():
    model = _toy(ToyDiT)
    adapter = generic_adapter(model, warn=False)
    assert adapter.block_lists == ("double_blocks", "single_blocks")
    assert [adapter.outputs_of(b) for b in adapter.blocks(model)] == (
        [("encoder_hidden_states", "hidden_states")] * 2 + [("hidden_states",)] * 2)
    assert adapter.layout.frames_first is False and adapter.layout.patch_multiple(model) == (1, 1, 1)
    assert adapter.layout.trial_refusal(model) is None and adapter.timestep_arg == "timestep"


STEP_LEVEL = [PreciseCache(mode="turbo", alpha=1.0, warmup_ratio=0.25),
              PreciseCache(mode="turbo", signal="input", alpha=1.0, warmup_ratio=0.25),
              EasyCache(threshold=10.0, warmup_steps=1)]
BLOCK_LEVEL = [PreciseCache(mode="flash", alpha=1.0, block_ratio=0.5, warmup_ratio=0.25),
               PreciseCache(mode="flash", signal="input", alpha=1.0, block_ratio=0.25, refresh_steps=2)]


@pytest.mark.parametrize("generic_class,policy", [(ToyDiT, p) for p in STEP_LEVEL] + [(DualToyDiT, p) for p in BLOCK_LEVEL],
                         ids=["mixed-turbo-trial", "mixed-turbo-input", "mixed-easycache",
                              "dual-flash-trial", "dual-flash-input"])
def test_toy_generic_equals_a_hand_registered_adapter(scratch_registry, generic_class, policy):
    """Generic on blocks returning (encoder, hidden) then hidden alone (step-level policies), or
    (encoder, hidden) then (hidden, encoder) (block level) == a hand-written adapter on the same
    computation with every block returning (hidden, encoder): same decisions, same bits."""
    models.register_adapter(models.ModelAdapter(
        family="toy_reference", model_classes=("ReferenceToyDiT",), block_lists=("double_blocks", "single_blocks"),
        block_outputs=("hidden_states", "encoder_hidden_states")))
    ref = _toy(ReferenceToyDiT)
    gen = _toy(generic_class)
    gen.load_state_dict(ref.state_dict())
    ref_x, ref_decided = _driven(ref, policy)
    gen_x, gen_decided = _driven(gen, policy)
    assert any(not d[2] or d[3] < 4 for d in ref_decided), "nothing reused: the comparison would test nothing"
    assert gen_decided == ref_decided
    assert torch.equal(gen_x, ref_x)
    lossless = PreciseCache(mode="flash", alpha=0.0, block_ratio=1.0) if policy.block_level else EasyCache(0.0, 0)
    assert torch.equal(_driven(gen, lossless)[0], drive(gen))


def test_block_level_caching_on_mixed_stream_counts_is_refused_clearly():
    model = _toy(ToyDiT)
    with pytest.raises(ValueError, match=r"block lists update different numbers of streams \(EncoderFirstBlock: 2; "
                                         r"SingleBlock: 1\).*PreciseCache\(mode='turbo'\)"):
        _driven(model, PreciseCache(mode="flash", alpha=1.0, block_ratio=0.5))


def test_misread_block_outputs_raise_at_the_first_block_call():
    model = _toy(MislabelledToyDiT)
    with pytest.raises(RuntimeError, match=r"block MislabelledBlock returned streams of shapes \[\(1, 5, 8\), "
                                           r"\(1, 48, 8\)\] but its inputs hidden_states, encoder_hidden_states"):
        _driven(model, PreciseCache(mode="flash", alpha=1.0, block_ratio=0.5))
    assert session_of(model) is None  # disabled in _driven's finally


@pytest.fixture
def scratch_registry(monkeypatch):
    for name in ("_FAMILIES", "_DENOISERS", "_BLOCKS", "_VAES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))


def test_warning_is_once_per_model_at_enable():
    model = _toy(ToyDiT)
    with pytest.warns(GenericAdapterWarning, match=r"ToyDiT has no registered adapter; using the generic adapter.*"
                                                   r"double_blocks \(EncoderFirstBlock -> encoder_hidden_states, "
                                                   r"hidden_states\); single_blocks \(SingleBlock -> hidden_states\)") as rec:
        lightcache.enable(model, policy=EasyCache())
    assert len(rec) == 1 and rec[0].filename == __file__  # points at the enable() line
    lightcache.disable(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenericAdapterWarning)
        lightcache.enable(model, policy=EasyCache())  # the same model: no second warning
        assert models.adapter_for(model) is generic_adapter(model)
    lightcache.disable(model)


# -- refusals ------------------------------------------------------------------------------------------


class XBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(DIM, DIM)

    def forward(self, x, temb):
        return x + self.to_q(x)


class TwoWayBlock(XBlock):
    def forward(self, hidden_states, temb, extra=False):
        if extra:
            return hidden_states, temb
        return hidden_states


class ExpressionBlock(XBlock):
    def forward(self, hidden_states, temb):
        return hidden_states + self.to_q(hidden_states)


class Unrecognised(_ModelMixin):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([XBlock(), XBlock()])
        self.mixed = nn.ModuleList([XBlock(), nn.Linear(2, 2)])
        self.branchy = nn.ModuleList([TwoWayBlock()])
        self.expr = nn.ModuleList([ExpressionBlock()])
        self.empty = nn.ModuleList()

    def forward(self, hidden_states, timestep):
        for block in self.layers:
            hidden_states = block(hidden_states, timestep)
        return (hidden_states,)


class Interleaved(_ModelMixin):
    def __init__(self):
        super().__init__()
        self.spatial = nn.ModuleList([SingleBlock()])
        self.temporal = nn.ModuleList([SingleBlock()])

    def forward(self, hidden_states, timestep):
        for spatial, temporal in zip(self.spatial, self.temporal):
            hidden_states = temporal(spatial(hidden_states, timestep), timestep)
        return (hidden_states,)


class Unused(_ModelMixin):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([SingleBlock()])

    def forward(self, hidden_states, timestep):
        return (hidden_states,)


def test_unrecognised_models_are_refused_at_enable_naming_each_candidate():
    model = Unrecognised()
    with pytest.raises(ValueError) as err:
        lightcache.enable(model, policy=EasyCache())
    text = str(err.value)
    assert text.startswith("lightcache has no adapter for Unrecognised. Supported denoisers: ")
    assert "WanTransformer3DModel" in text and "The generic adapter does not apply: no block list found" in text
    for part in ("layers: XBlock.forward takes no hidden_states (parameters: x, temb)",
                 "mixed: its elements are of different classes (Linear, XBlock)",
                 "branchy: TwoWayBlock: its forward's return statements differ ((hidden_states) / (hidden_states, temb))",
                 "expr: ExpressionBlock: its forward returns an expression (hidden_states + self.to_q(hidden_states))",
                 "empty: empty"):
        assert part in text
    assert session_of(model) is None and not hasattr(model, "_diffusers_hook")
    with pytest.raises(ValueError, match=r"runs the blocks of spatial and temporal in one loop \(interleaved\)"):
        models.adapter_for(Interleaved())
    with pytest.raises(ValueError, match=r"blocks: Unused\.forward does not use self\.blocks"):
        models.adapter_for(Unused())
    with pytest.raises(ValueError, match=r"no adapter for Linear\..*it has no nn\.ModuleList attribute"):
        models.adapter_for(nn.Linear(2, 2))


def test_an_unregistered_unet_is_refused_not_read_as_a_dit():
    """Its up blocks return hidden_states (a named input), but change resolution and take skip
    connections: not blocks to cache residuals of."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match=r"no adapter for UNet2DModel.*it is a UNet \(down_blocks and up_blocks\)"):
        lightcache.enable(unet, policy=EasyCache())
    assert session_of(unet) is None


class Packed(ToyDiT):
    """Takes its latent as (B, L, C) tokens: no 5-D layout to infer."""

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        h = self.proj_in(hidden_states)
        e = encoder_hidden_states
        temb = (timestep.float() / 1000).view(-1, 1, 1)
        for block in self.double_blocks:
            e, h = block(h, e, temb)
        for block in self.single_blocks:
            h = block(h, temb)
        return _output(self.proj_out(h), return_dict)


def test_trial_signal_is_refused_without_a_layout():
    model = _toy(Packed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenericAdapterWarning)
        with pytest.raises(ValueError, match=r"signal='trial'.*could not infer Packed's latent layout .*"
                                             r"signal='input'"):
            lightcache.enable(model, policy=PreciseCache())
        assert session_of(model) is None
        lightcache.enable(model, policy=EasyCache())  # the whole-call cache needs no layout
    lightcache.disable(model)


def test_trial_resizes_per_token_and_per_frame_timesteps():
    from types import SimpleNamespace

    from lightcache.models.generic import GenericLayout
    from lightcache.models.layout import CallArguments
    from lightcache.models.wan.layout import WanLayout

    def forward(self, hidden_states, timestep):
        pass

    def resized(layout, t, model=None):
        call = CallArguments(forward, (), {"timestep": t})
        layout.resize_arguments(model, call, (4, 8, 8), (2, 4, 4))
        return call.get("timestep")

    layout = GenericLayout(False, (1, 2, 2), None)
    per_token = torch.arange(64.0).reshape(1, 64)  # the (4, 4, 4) token grid of a (4, 8, 8) latent
    wan = SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2)))
    assert torch.equal(resized(layout, per_token), resized(WanLayout(), per_token, wan))
    assert resized(layout, per_token).shape == (1, 2 * 2 * 2)
    assert torch.equal(resized(layout, torch.tensor([[1.0, 2.0, 3.0, 4.0]])), torch.tensor([[1.0, 3.0]]))
    one = torch.tensor([[7.0]])
    assert resized(layout, one) is one
    with pytest.raises(ValueError, match=r"cannot resize a timestep of shape \(1, 5\).*neither one per token nor one "
                                         r"per frame of the \(4, 4, 4\) token grid"):
        resized(layout, torch.zeros(1, 5))


def test_ltx2_with_its_registration_off_is_refused_at_enable_with_the_reason():
    """Its blocks look generic, but its forward returns a video and an audio prediction, which only
    the registered family declares."""
    from diffusers import LTX2VideoTransformer3DModel

    with torch.device("meta"):
        model = LTX2VideoTransformer3DModel(num_layers=1)
    with registry.unregistered("ltx2"):
        with pytest.raises(ValueError, match=r"LTX2VideoTransformer3DModel.*two predictions \(video and audio\).*"
                                             r"registered 'ltx2' family"):
            lightcache.enable(model, policy=EasyCache())
    assert session_of(model) is None
