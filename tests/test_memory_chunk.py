"""Feature chunk: exact against unchunked for every family, and the CPU tracker shows the widest
intermediates shrinking with the chunk size (feed-forward, attention scores, UNet resnets and
transformer blocks), a byte budget ("auto") bounding them, and bad input refused.

Stated tolerance: ≤ 1e-5 max abs per fp32 denoiser call (the same per-row arithmetic; GEMM,
convolution and attention kernels may block differently for a smaller batch or query count)."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, FeedForward, TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch.nn.attention import SDPBackend, sdpa_kernel

import lightcache
from lightcache import MemoryPlan, PreciseCache
from lightcache.adapters import adapter_for
from lightcache.memory.chunk import (
    ATTENTION_HOOK,
    CHUNK_HOOK,
    DIT_HOOK,
    UNET_HOOK,
    install_chunking,
    remove_chunking,
)
from lightcache.memory.chunk_attention import QueryChunkedSDPA
from lightcache.memory import chunk_dit
from lightcache.memory.chunk_dit import DitChunkHook
from lightcache.engine import BLOCK_HOOK, session_of
from lightcache.hookset import HookSet
from lightcache.memory.meter import StageTracker

from tiny_pipelines import FAMILIES, build, denoiser, denoiser_calls, output_of

UNET_FAMILIES = ("svd", "animatediff", "text_to_video_sd")


def run(pipe, kwargs):
    return output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))


def _sample(out):
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "sample", out)


def _hooks(modules, name):
    return [m._diffusers_hook.hooks[name] for m in modules if name in getattr(m, "_diffusers_hook").hooks]


# -- exactness for every family --------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_denoiser_matches_unchunked(family):
    """Each denoiser call of the pipeline (its real inputs), chunked by 4 rows (2 for the DiTs, whose
    tiny sequences must still give at least MIN_PIECES pieces): ≤ 1e-5 max abs, and the chunking
    really split the work: every DiT block ran over sequence pieces (never the whole-block
    fallback); in UNets the attention, FFNs, resnets and transformer blocks."""
    pipe, kwargs = build(family)
    if family != "svd":
        kwargs = dict(kwargs, output_type="latent")
    model = denoiser(pipe)
    blocks = adapter_for(model).blocks(model)
    for args, kw in denoiser_calls(pipe, kwargs):
        # the math backend, the one that holds the score matrix: fused ones run unsplit
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            ref = _sample(model(*args, **kw))
            hooked = install_chunking(blocks, 4 if family in UNET_FAMILIES else 2, model=model)
            hooks = {name: _hooks(hooked, name) for name in (ATTENTION_HOOK, CHUNK_HOOK, UNET_HOOK, DIT_HOOK)}
            try:
                out = _sample(model(*args, **kw))
            finally:
                remove_chunking(hooked)
        assert (out - ref).abs().max().item() <= 1e-5
        if family in UNET_FAMILIES:
            assert not hooks[DIT_HOOK]
            for name in (ATTENTION_HOOK, CHUNK_HOOK, UNET_HOOK):
                assert sum(h.split_calls for h in hooks[name]) > 0
        else:
            assert len(hooks[DIT_HOOK]) == len(blocks)
            assert all(h.split_calls == 1 and h.fallback_calls == 0 for h in hooks[DIT_HOOK])
    # registries removed too (the DiT pipelines' cache_context gives the denoiser its own)
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules() if m is not model)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_pipeline_matches_unchunked(family):
    """Through lightcache.enable, the whole pipeline (6 steps, guidance): per-call rounding grows
    with the steps and the guidance scale, so the stated bound is relative here: ≤ 1e-5 of the
    largest output value. disable() removes every chunk hook and restores the exact output."""
    pipe, kwargs = build(family)
    if family != "svd":
        kwargs = dict(kwargs, output_type="latent")
    ref = run(pipe, kwargs)
    lightcache.enable(pipe, policy=None, memory=MemoryPlan(chunk_size=4))
    try:
        model = denoiser(pipe)
        blocks = adapter_for(model).blocks(model)
        ffs = [m for b in blocks for m in b.modules() if isinstance(m, FeedForward)]
        assert ffs and all(CHUNK_HOOK in m._diffusers_hook.hooks for m in ffs)
        block_hook = ATTENTION_HOOK if family in UNET_FAMILIES else DIT_HOOK
        assert all(block_hook in b._diffusers_hook.hooks for b in blocks)
        out = run(pipe, kwargs)
    finally:
        lightcache.disable(pipe)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules() if m is not model)
    assert torch.equal(run(pipe, kwargs), ref)


# -- feed-forward ----------------------------------------------------------------------------------


def _ffn(dim=64, mult=4, act="gelu-approximate"):
    torch.manual_seed(0)
    return FeedForward(dim, mult=mult, activation_fn=act).eval()


@pytest.mark.parametrize("act", ["gelu-approximate", "geglu"])
def test_tracker_bounds_widest_intermediate_by_chunk(act):
    ff = _ffn(act=act)
    x = torch.randn(2, 512, 64)
    hidden = 64 * 4 * (2 if act == "geglu" else 1)  # GEGLU projects to twice the inner width
    with torch.no_grad(), StageTracker() as plain:
        ref = ff(x)
    out_bytes = ref.nbytes
    assert plain.peak >= 2 * 512 * 64 * 4 * 4  # unchunked: the full (B·L, 4·width) hidden state
    peaks = {}
    for chunk in (256, 64, 16):
        hooked = install_chunking([ff], chunk)
        try:
            with torch.no_grad(), StageTracker() as t:
                out = ff(x)
        finally:
            remove_chunking(hooked)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        # output + the chunk's intermediates (a few (chunk, hidden) tensors) + small slack
        bound = out_bytes + 3 * chunk * hidden * 4 + 4096
        assert t.peak <= bound, (chunk, t.peak, bound)
        peaks[chunk] = t.peak
    assert peaks[16] < peaks[64] < peaks[256] < plain.peak


def test_chunking_lowers_tracked_denoise_peak():
    pipe, kwargs = build("ltx")
    kwargs = dict(kwargs, output_type="latent")
    peaks = {}
    for chunk in (None, 8):
        lightcache.enable(pipe, policy=None, memory=MemoryPlan(chunk_size=chunk, cpu_tracker=True))
        try:
            run(pipe, kwargs)
            peaks[chunk] = lightcache.report(pipe).peak_bytes["denoise"]
        finally:
            lightcache.disable(pipe)
    assert peaks[None] is not None and peaks[8] < peaks[None]


def test_chunking_refuses_active_dropout():
    ff = FeedForward(16, mult=4, dropout=0.1).train()
    with pytest.raises(ValueError, match="dropout"):
        install_chunking([ff], 4)
    assert not hasattr(ff, "_diffusers_hook")


# -- attention -------------------------------------------------------------------------------------


def _attention():
    torch.manual_seed(0)
    return Attention(query_dim=64, heads=4, dim_head=16).eval()  # AttnProcessor2_0 -> F.sdpa


def test_attention_scores_shrink_with_query_chunk():
    """Math backend (the one that materialises the (B, H, Lq, Lk) scores): the widest tracked
    tensor is one query chunk's scores, and the peak is the projections and output (≤ 7 (L, D)
    tensors) plus about three score-sized buffers of one chunk (scores, softmax, its scaling)."""
    attn = _attention()
    x = torch.randn(2, 256, 64)
    ld = x.nbytes
    heads, lk = 4, 256
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), StageTracker() as plain:
        ref = attn(x)
    assert plain.largest == 2 * heads * 256 * lk * 4  # the full score matrix
    peaks = {}
    for chunk in (256, 64, 16):
        hooked = install_chunking([attn], chunk)
        try:
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), StageTracker() as t:
                out = attn(x)
            assert _hooks(hooked, ATTENTION_HOOK)[0].split_calls == 1
        finally:
            remove_chunking(hooked)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        scores = chunk * heads * lk * 4  # chunk ≤ L: one batch item's query rows per piece
        assert t.largest == max(scores, ld)
        bound = 7 * ld + 3.25 * scores
        assert t.peak <= bound, (chunk, t.peak, bound)
        peaks[chunk] = t.peak
    assert peaks[16] < peaks[64] < peaks[256] < plain.peak


@pytest.mark.parametrize(
    "shape, mask_shape, chunk",
    [
        ((2, 4, 40, 8), (2, 4, 40, 24), 16),  # full mask, queries split per batch item
        ((2, 4, 40, 8), (2, 1, 1, 24), 7),  # key-padding mask broadcast over heads and queries
        ((2, 4, 40, 8), (40, 24), 16),  # 2-D (Lq, Lk) mask broadcast over batch and heads
        ((6, 2, 5, 8), (6, 1, 5, 24), 12),  # short sequences: whole batch items per piece
        ((6, 5, 8), None, 11),  # 3-D (batch, L, E), no heads
    ],
)
def test_query_chunked_sdpa_is_exact(shape, mask_shape, chunk):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(*shape, generator=g)
    k = torch.randn(*shape[:-2], 24, shape[-1], generator=g)
    v = torch.randn(*shape[:-2], 24, 12, generator=g)
    mask = None if mask_shape is None else torch.randn(*mask_shape, generator=g)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    mode = QueryChunkedSDPA(lambda q_, k_: chunk)
    with mode:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    assert mode.calls == 1 and out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-6
    if mask is not None:  # a boolean mask too (True = attend)
        bmask = mask > 0
        bmask[..., 0] = True  # no fully masked row
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bmask)
        with QueryChunkedSDPA(lambda q_, k_: chunk):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bmask)
        assert (out - ref).abs().max().item() <= 1e-6


def test_fused_sdpa_backends_run_unsplit():
    """A call torch runs on a fused kernel (CPU flash for 4-D inputs) holds no score matrix:
    it runs whole, no split; forced onto the math backend the same call is split."""
    q = torch.randn(1, 2, 64, 8)
    ref = F.scaled_dot_product_attention(q, q, q)
    mode = QueryChunkedSDPA(lambda q_, k_: 16)
    with mode:
        out = F.scaled_dot_product_attention(q, q, q)
    assert mode.calls == 0 and torch.equal(out, ref)
    with sdpa_kernel(SDPBackend.MATH), mode:
        out = F.scaled_dot_product_attention(q, q, q)
    assert mode.calls == 1 and (out - ref).abs().max().item() <= 1e-5


def test_query_chunked_sdpa_refuses_dropout_and_causal():
    q = torch.randn(1, 2, 8, 4)
    with sdpa_kernel(SDPBackend.MATH), QueryChunkedSDPA(lambda q_, k_: 2):
        with pytest.raises(ValueError, match="dropout_p"):
            F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
        with pytest.raises(ValueError, match="is_causal"):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)


# -- video UNet modules ----------------------------------------------------------------------------


def test_resnet_over_frame_chunks():
    """Frames (the batch) in pieces of chunk // (H·W) frames: peak = the output + three
    piece-sized intermediates (normalised input, conv1, conv2), instead of three whole tensors."""
    torch.manual_seed(0)
    res = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=64, groups=8).eval()
    x, temb = torch.randn(8, 32, 16, 16), torch.randn(8, 64)
    frame = x[0].nbytes
    with torch.no_grad(), StageTracker() as plain:
        ref = res(x, temb)
    assert plain.peak >= 3 * x.nbytes
    peaks = {}
    for frames in (4, 2, 1):
        hooked = install_chunking([res], frames * 16 * 16)
        try:
            with torch.no_grad(), StageTracker() as t:
                out = res(x, temb)
            assert _hooks(hooked, UNET_HOOK)[0].split_calls == 1
        finally:
            remove_chunking(hooked)
        assert (out - ref).abs().max().item() <= 1e-5
        bound = ref.nbytes + 3 * frames * frame + 4096
        assert t.peak <= bound, (frames, t.peak, bound)
        peaks[frames] = t.peak
    assert peaks[1] < peaks[2] < peaks[4] < plain.peak


def test_temporal_transformer_block_over_pixel_chunks():
    """A temporal BasicTransformerBlock (AnimateDiff/TextToVideoSD: batch = pixels, sequence =
    frames) over pixel chunks: peak = the output + at most 19 (token, width) rows per token of one
    piece (GEGLU's 8-wide projection, its 4-wide product, norms, attention), vs. 18 rows per token
    of the whole clip unchunked."""
    torch.manual_seed(0)
    blk = BasicTransformerBlock(
        64, 4, 16, activation_fn="geglu", positional_embeddings="sinusoidal", num_positional_embeddings=32
    ).eval()
    y = torch.randn(256, 16, 64)  # 256 pixels x 16 frames
    pixel = y[0].nbytes
    with torch.no_grad(), StageTracker() as plain:
        ref = blk(y)
    assert plain.peak >= 18 * y.nbytes
    peaks = {}
    for pixels in (64, 16, 4):
        hooked = install_chunking([blk], pixels * 16)
        try:
            with torch.no_grad(), StageTracker() as t:
                out = blk(y)
        finally:
            remove_chunking(hooked)
        assert (out - ref).abs().max().item() <= 1e-5
        bound = ref.nbytes + 19 * pixels * pixel + 4096
        assert t.peak <= bound, (pixels, t.peak, bound)
        peaks[pixels] = t.peak
    assert peaks[4] < peaks[16] < peaks[64] < plain.peak


def test_svd_temporal_block_over_pixel_chunks():
    """SVD's TemporalBasicTransformerBlock: hidden (B·F, pixels, C) and its per-pixel time context
    (B·pixels, 1, C) sliced on the same pixels; different contexts per batch item catch a wrong
    slice."""
    torch.manual_seed(0)
    blk = TemporalBasicTransformerBlock(32, 32, 2, 16, cross_attention_dim=24).eval()
    batch, frames, pixels = 2, 5, 36
    h = torch.randn(batch * frames, pixels, 32)
    ctx = torch.randn(batch, 1, 1, 24).expand(batch, pixels, 1, 24).reshape(batch * pixels, 1, 24)
    with torch.no_grad():
        ref = blk(h, frames, ctx)
        hooked = install_chunking([blk], 7 * batch * frames)  # 7 pixels per piece: 6 pieces
        try:
            out = blk(h, frames, ctx)
            assert _hooks(hooked, UNET_HOOK)[0].split_calls == 1
        finally:
            remove_chunking(hooked)
    assert (out - ref).abs().max().item() <= 1e-5


# -- DiT blocks over sequence pieces ----------------------------------------------------------------


def _dit_case(case, heads=2, frames=2, size=16, batch=2, seed=0, layers=1):
    """A one-block (HunyuanVideo: one dual- and one single-stream block) model of a DiT family and
    the keyword arguments of one call: ``frames`` x ``size`` x ``size`` video tokens, 16 text
    tokens (padded where the model takes a mask), ``batch`` items with different inputs. Variants
    exercise per-token modulation (Wan 2.2 TI2V, LTX conditioning), token replace (HunyuanVideo
    I2V), shared text/video projections (EasyAnimate non-MMDiT blocks) and rotary CogVideoX."""
    import diffusers

    g = torch.Generator().manual_seed(seed)
    head_dim = _head_dim(case)
    dim, text, b = heads * head_dim, 16, batch
    mask = torch.ones(b, text, dtype=torch.long)
    mask[0, 12:] = 0
    mask[-1, 5:] = 0
    torch.manual_seed(seed)
    if case in ("wan", "wan_ti2v"):
        model = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=32, ffn_dim=6 * dim, num_layers=layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
        )
        tokens = frames * size * size
        t = torch.rand(b, tokens, generator=g) * 1000 if case == "wan_ti2v" else torch.tensor([500.0, 300.0][:b])
        kw = dict(hidden_states=torch.randn(b, 4, frames, 2 * size, 2 * size, generator=g), timestep=t,
                  encoder_hidden_states=torch.randn(b, text, 16, generator=g))
    elif case in ("ltx", "ltx_per_token"):
        model = diffusers.LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, num_attention_heads=heads, attention_head_dim=head_dim,
            cross_attention_dim=dim, num_layers=1, caption_channels=16,
        )
        tokens = frames * size * size
        t = torch.rand(b, tokens, generator=g) * 1000 if case == "ltx_per_token" else torch.tensor([500.0, 300.0][:b])
        kw = dict(hidden_states=torch.randn(b, tokens, 8, generator=g),
                  encoder_hidden_states=torch.randn(b, text, 16, generator=g), timestep=t,
                  encoder_attention_mask=mask, num_frames=frames, height=size, width=size)
    elif case in ("hunyuan_video", "hunyuan_token_replace"):
        model = diffusers.HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(head_dim // 3,) * 3,
            image_condition_type="token_replace" if case == "hunyuan_token_replace" else None,
        )
        kw = dict(hidden_states=torch.randn(b, 4, frames, size, size, generator=g),
                  timestep=torch.tensor([500, 300][:b]), encoder_hidden_states=torch.randn(b, text, 16, generator=g),
                  encoder_attention_mask=mask,
                  pooled_projections=torch.randn(b, 8, generator=g), guidance=torch.tensor([6000.0] * b))
    elif case == "cogvideox_rope":
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        model = diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=1, sample_width=2 * size, sample_height=2 * size,
            sample_frames=4 * frames - 3, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=text,
            use_rotary_positional_embeddings=True,
        )
        rope = get_3d_rotary_pos_embed(head_dim, ((0, 0), (size, size)), (size, size), frames, use_real=True)
        kw = dict(hidden_states=torch.randn(b, frames, 4, 2 * size, 2 * size, generator=g),
                  encoder_hidden_states=torch.randn(b, text, 16, generator=g), timestep=torch.tensor([500, 300][:b]),
                  image_rotary_emb=rope)
    elif case in ("easyanimate", "easyanimate_shared"):
        shared = case == "easyanimate_shared"  # non-MMDiT block (one set of projections), after-norm FFN
        model = diffusers.EasyAnimateTransformer3DModel(
            num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=1, sample_width=2 * size, sample_height=2 * size, patch_size=2,
            mmdit_layers=0 if shared else 1, after_norm=shared,
        )
        kw = dict(hidden_states=torch.randn(b, 4, frames, 2 * size, 2 * size, generator=g),
                  timestep=torch.tensor([500, 300][:b]), encoder_hidden_states=torch.randn(b, text, 16, generator=g))
    else:
        raise ValueError(case)
    model.eval().requires_grad_(False)
    return model, kw


def _head_dim(case):
    return 32 if case.startswith(("cogvideox", "easyanimate")) else 24  # their 3-D rotary tables need 32


def _dit_blocks(model):
    return adapter_for(model).blocks(model)


def _model_out(model, kw):
    with torch.no_grad():
        return _sample(model(**kw, return_dict=False))


DIT_CASES = [
    "wan", "wan_ti2v", "ltx", "ltx_per_token", "hunyuan_video", "hunyuan_token_replace", "cogvideox_rope",
    "easyanimate", "easyanimate_shared",
]


@pytest.mark.parametrize("case", DIT_CASES)
def test_dit_block_pieces_match_unchunked(case, monkeypatch):
    """Every DiT family and variant, 2 batch items, chunk 26 rows -> pieces of 13 tokens that cut
    frames, the first-frame (token replace) run and the text/video boundary at odd places:
    ≤ 1e-5 max abs (fp32) against the unchunked model, and every block ran in pieces (even where
    fewer than MIN_PIECES pieces would normally run the block whole). Slicing a per-token argument
    wrong (timesteps, rotary tables, token-replace count) breaks the bound."""
    monkeypatch.setattr(chunk_dit, "MIN_PIECES", 1)
    model, kw = _dit_case(case, frames=2, size=8 if case.startswith("hunyuan") else 4)
    ref = _model_out(model, kw)
    blocks = _dit_blocks(model)
    hooked = install_chunking(blocks, 26, model=model)
    try:
        out = _model_out(model, kw)
        hooks = _hooks(hooked, DIT_HOOK)
    finally:
        remove_chunking(hooked)
    assert len(hooks) == len(blocks) and all(h.split_calls == 1 and h.fallback_calls == 0 for h in hooks)
    assert (out - ref).abs().max().item() <= 1e-5


def test_dit_few_large_pieces_run_the_block_whole():
    """Fewer than MIN_PIECES pieces would cost more than the whole block with query-chunked
    attention: the block then runs whole (counted), still exact."""
    model, kw = _dit_case("wan", frames=2, size=4)
    ref = _model_out(model, kw)
    blocks = _dit_blocks(model)
    n_tokens = kw["hidden_states"].shape[2] * (kw["hidden_states"].shape[3] // 2) * (kw["hidden_states"].shape[4] // 2)
    batch = kw["hidden_states"].shape[0]
    hooked = install_chunking(blocks, batch * (n_tokens // 2), model=model)  # two pieces
    try:
        out = _model_out(model, kw)
        hooks = _hooks(hooked, DIT_HOOK)
        # CPU flash ran the attention unsplit: the same inputs next time skip the function mode
        assert all(h._memo.unsplit(b) for h, b in zip(hooks, blocks))
        again = _model_out(model, kw)
        with sdpa_kernel(SDPBackend.MATH):  # other backend switches: the mode again, and it splits
            math_out = _model_out(model, kw)
        assert not any(h._memo.unsplit(b) for h, b in zip(hooks, blocks))
    finally:
        remove_chunking(hooked)
    assert all(h.split_calls == 0 and h.fallback_calls == 3 for h in hooks)
    assert (out - ref).abs().max().item() <= 1e-5 and torch.equal(again, out)
    assert (math_out - ref).abs().max().item() <= 1e-5


def test_dit_call_that_fits_one_piece_runs_the_block_as_it_is(monkeypatch):
    """A chunk that holds every row: the block runs its own forward once, bit for bit, without the
    walk over its modules (_applies) or the query-chunking mode (its attention fits the chunk too),
    even where the pieces would not apply (a custom processor); neither split nor fallback is counted."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class Custom(WanAttnProcessor):
        pass

    model, kw = _dit_case("wan", frames=2, size=4, layers=2)
    blocks = _dit_blocks(model)
    blocks[1].attn1.set_processor(Custom())
    ref = _model_out(model, kw)
    walked = []
    real_applies = DitChunkHook._applies
    monkeypatch.setattr(DitChunkHook, "_applies", lambda self, m, a: walked.append(m) or real_applies(self, m, a))
    hooked = install_chunking(blocks, 10**6, model=model)
    try:
        out = _model_out(model, kw)
        hooks = _hooks(hooked, DIT_HOOK)
    finally:
        remove_chunking(hooked)
    assert torch.equal(out, ref) and walked == []
    assert [(h.split_calls, h.fallback_calls, h._memo.mode_calls) for h in hooks] == [(0, 0, 0)] * 2


def test_dit_hook_names_the_arguments_as_bind_does():
    """The hook's cheap argument map is inspect's bind(...).arguments for positional, keyword and
    mixed calls; a call bind refuses (unknown or doubled keyword, too many positionals) maps to None
    (bind is then asked, and raises the block's own TypeError), and so does any call of a block
    whose forward takes *args/**kwargs."""
    model, kw = _dit_case("wan", frames=2, size=4, layers=1)
    block = _dit_blocks(model)[0]
    args, kwargs = _block_call(model, kw, block)
    hooked = install_chunking([block], 8, model=model)
    try:
        hook = _hooks(hooked, DIT_HOOK)[0]
        names = list(inspect.signature(type(block).forward).parameters)[1:]
        everything = dict(zip(names, args), **kwargs)
        calls = [(args, kwargs), ((), everything), (tuple(everything.values())[:2], dict(list(everything.items())[2:]))]
        for a, k in calls:
            mine, theirs = hook._arguments(block, a, k), hook._sig.bind(block, *a, **k).arguments
            assert list(mine) == list(theirs) and all(mine[n] is theirs[n] for n in theirs)
        for a, k in [(args, dict(kwargs, nonsense=1)), (args, {names[0]: args[0]}), (args + (None,) * 9, {})]:
            assert hook._arguments(block, a, k) is None
            with pytest.raises(TypeError):
                hook._sig.bind(block, *a, **k)
        with pytest.raises(TypeError, match="nonsense"):
            block(*args, **dict(kwargs, nonsense=1))
    finally:
        remove_chunking(hooked)

    class Loose(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, hidden_states, *rest, **more):
            return hidden_states

    loose = DitChunkHook(hook.spec, hook.family)
    loose.initialize_hook(Loose())
    assert loose._arguments(None, (torch.zeros(1),), {}) is None


def _block_call(model, kw, block):
    """The (args, kwargs) ``block`` gets in ``model``'s call."""
    got = []
    handle = block.register_forward_pre_hook(lambda m, a, k: got.append((a, k)), with_kwargs=True)
    try:
        _model_out(model, kw)
    finally:
        handle.remove()
    return got[0]


def _tracked(block, call, chunk=None, generic=False, monkeypatch=None):
    args, kwargs = call
    hooked = install_chunking([block], chunk) if chunk else HookSet()
    try:
        with monkeypatch.context() as mp:
            if generic:  # force the whole-block path (FFN rows + query-chunked attention)
                mp.setattr(DitChunkHook, "_applies", lambda self, module, a: False)
            with torch.no_grad(), StageTracker() as t:
                out = block(*args, **kwargs)
    finally:
        remove_chunking(hooked)
    return t.peak, (out if isinstance(out, tuple) else (out,))


@pytest.mark.parametrize("case, index", [
    ("wan", 0), ("ltx", 0), ("cogvideox_rope", 0), ("easyanimate", 0), ("hunyuan_video", 0), ("hunyuan_video", 1),
])
def test_dit_block_peak_falls_with_piece(case, index, monkeypatch):
    """CPU tracker on one block (width 96, 512 video tokens + 16 text tokens, batch 1). Stated
    bound: peak <= the full-length tensors that stay whole (output, keys, values: 3 rows per
    token, text included) + (chunk / L) x the unchunked block's peak x 1.15 + 4 text-sized
    tensors (cross-attention K/V) + 4 KiB. Measured (in (L x width) units): Wan 15.0 unchunked,
    6.5 whole-block path at any chunk, 4.95 / 3.54 at chunks 64 / 16; HunyuanVideo single-stream
    15.5 -> 15.5 -> 4.94 / 3.54; the others 11-11.4 -> 8.0-9.2 -> 4.5 / 3.5. The pieces' peak is
    below the whole-block path's and falls with the chunk."""
    model, kw = _dit_case(case, heads=96 // _head_dim(case), frames=2, size=16, batch=1)
    block = _dit_blocks(model)[index]
    call = _block_call(model, kw, block)
    b = inspect.signature(type(block).forward).bind(block, *call[0], **call[1]).arguments
    video, text = b["hidden_states"], b["encoder_hidden_states"]
    joint = not case.startswith(("wan", "ltx"))
    whole = 3 * (video.nbytes + (text.nbytes if joint else 0))
    plain, ref = _tracked(block, call, monkeypatch=monkeypatch)
    generic, _ = _tracked(block, call, 64, generic=True, monkeypatch=monkeypatch)
    peaks = {}
    for chunk in (64, 16):
        peak, out = _tracked(block, call, chunk, monkeypatch=monkeypatch)
        assert max((o - r).abs().max().item() for o, r in zip(out, ref)) <= 1e-5
        bound = whole + 1.15 * chunk / video.shape[1] * plain + 4 * text.nbytes + 4096
        assert peak <= bound, (chunk, peak, bound)
        peaks[chunk] = peak
    assert peaks[16] < peaks[64] < generic <= plain


def test_dit_processors_and_forward_restored():
    """The family processors are swapped in for one block call only; remove_chunking leaves every
    block as it was (its own processor objects, no hook registry, no instance forward), and so does
    lightcache.disable, with the piece hook directly on the block's forward, beneath the block hook."""
    model, kw = _dit_case("wan", frames=2, size=4)
    blocks = _dit_blocks(model)
    attns = [m for b in blocks for m in b.modules() if hasattr(m, "processor")]
    before = [m.processor for m in attns]
    during = []
    handle = blocks[0].attn1.register_forward_pre_hook(lambda m, a: during.append(type(m.processor).__name__))
    try:
        ref = _model_out(model, kw)
        hooked = install_chunking(blocks, 8, model=model)
        assert [m.processor for m in attns] == before  # nothing swapped between calls
        out = _model_out(model, kw)
        assert [m.processor for m in attns] == before
        remove_chunking(hooked)
    finally:
        handle.remove()
    assert during[0] == "WanAttnProcessor" and set(during[1:]) == {"_SelfAttention"}
    assert len(during) > 3  # the unchunked call, then a key and a query call per piece
    assert (out - ref).abs().max().item() <= 1e-5
    assert all(a is b for a, b in zip((m.processor for m in attns), before))
    assert not any(hasattr(b, "_diffusers_hook") or "forward" in vars(b) for b in blocks)
    assert torch.equal(_model_out(model, kw), ref)

    lightcache.enable(model, policy=None, memory=MemoryPlan(chunk_size=8))
    try:
        assert all(list(b._diffusers_hook.hooks) == [DIT_HOOK, BLOCK_HOOK] for b in blocks)
    finally:
        lightcache.disable(model)
    assert all(a is b for a, b in zip((m.processor for m in attns), before))
    assert not any(hasattr(b, "_diffusers_hook") for b in blocks)
    assert torch.equal(_model_out(model, kw), ref)


def test_dit_pieces_beneath_block_cache():
    """With a block-level cache (PreciseCache flash: some blocks reuse in_j + D_j), the piece hook
    runs beneath lightcache's block hook: the same blocks are computed and reused as unchunked,
    and the video is the same (relative 1e-5)."""
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, output_type="latent", num_inference_steps=8)
    results = {}
    for chunk in (None, 4):
        lightcache.enable(pipe, policy=PreciseCache(mode="flash", block_ratio=0.5), memory=MemoryPlan(chunk_size=chunk))
        try:
            out = run(pipe, kwargs)
            computed = [d["blocks_computed"] for d in lightcache.report(pipe).as_dict()["decisions"]]
        finally:
            lightcache.disable(pipe)
        results[chunk] = (out, computed)
    (ref, ref_computed), (out, computed) = results[None], results[4]
    assert computed == ref_computed and 1 in computed  # some calls reused a block
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_dit_whole_block_path_when_pieces_do_not_apply():
    """A processor that is not the family's own (here a subclass: the user's custom attention),
    or autograd on: the block runs whole with query-chunked attention, counted as a fallback,
    and stays exact."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class Custom(WanAttnProcessor):
        pass

    model, kw = _dit_case("wan", frames=2, size=4, layers=2)
    blocks = _dit_blocks(model)
    ref = _model_out(model, kw)
    blocks[1].attn1.set_processor(Custom())
    hooked = install_chunking(blocks, 8, model=model)
    try:
        out = _model_out(model, kw)
        with torch.enable_grad():
            out_grad = _sample(model(**kw, return_dict=False)).detach()
        hooks = _hooks(hooked, DIT_HOOK)
    finally:
        remove_chunking(hooked)
    assert [(h.split_calls, h.fallback_calls) for h in hooks] == [(1, 1), (0, 2)]
    assert (out - ref).abs().max().item() <= 1e-5 and (out_grad - ref).abs().max().item() <= 1e-5


def test_dit_auto_budget_below_one_token_names_the_minimum():
    """chunk_size="auto": a Wan block's row is its FFN hidden row (288 fp32 = 1152 bytes; one query
    row of scores is 2 heads x 32 keys x 4 = 256 bytes); a smaller budget is refused naming it."""
    model, kw = _dit_case("wan", frames=2, size=4, batch=1)
    blocks = _dit_blocks(model)
    ref = _model_out(model, kw)
    for budget in (1151, 1152):
        hooked = install_chunking(blocks, "auto", budget, model=model)
        try:
            if budget == 1151:
                with pytest.raises(ValueError, match="chunk_budget=1151 .*WanTransformerBlock.*at least 1152"):
                    _model_out(model, kw)
            else:  # one token per piece
                assert (_model_out(model, kw) - ref).abs().max().item() <= 1e-5
                assert _hooks(hooked, DIT_HOOK)[0].split_calls == 1
        finally:
            remove_chunking(hooked)


# -- chunk_size="auto" -----------------------------------------------------------------------------


def test_auto_chunk_fits_ffn_hidden_in_budget():
    ff = _ffn()
    x = torch.randn(2, 512, 64)
    with torch.no_grad():
        ref = ff(x)
    budget = 100_000  # 97 rows of the (rows, 256) fp32 hidden state; the whole one takes 1 MiB
    hooked = install_chunking([ff], "auto", budget)
    try:
        with torch.no_grad(), StageTracker() as t:
            out = ff(x)
    finally:
        remove_chunking(hooked)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    hidden_chunks = [s for s in t.mode.sizes if s != ref.nbytes]
    assert max(hidden_chunks) == (budget // (256 * 4)) * 256 * 4 <= budget
    assert t.peak <= ref.nbytes + 3 * budget + 4096


def test_auto_chunk_fits_attention_scores_in_budget():
    attn = _attention()
    x = torch.randn(2, 256, 64)
    with torch.no_grad():
        ref = attn(x)
    row = 4 * 256 * 4  # one query row's scores: heads x keys x fp32
    budget = 100 * row + 17
    hooked = install_chunking([attn], "auto", budget)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), StageTracker() as t:
            out = attn(x)
    finally:
        remove_chunking(hooked)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert max(s for s in t.mode.sizes if s > x.nbytes) == 100 * row  # the largest: one chunk's scores


def test_auto_budget_below_one_row_names_the_minimum():
    cases = [
        (_ffn(), (torch.randn(2, 8, 64),), 256 * 4),  # one hidden row
        (_attention(), (torch.randn(2, 8, 64),), 4 * 8 * 4),  # one query row of scores
        (  # one frame of a resnet: 32 channels x 16 x 16 pixels
            ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=64, groups=8).eval(),
            (torch.randn(2, 32, 16, 16), torch.randn(2, 64)),
            32 * 16 * 16 * 4,
        ),
    ]
    for module, inputs, minimum in cases:
        hooked = install_chunking([module], "auto", minimum - 1)
        try:
            with torch.no_grad(), pytest.raises(ValueError, match=f"chunk_budget={minimum - 1} .*at least {minimum}"):
                module(*inputs)
        finally:
            remove_chunking(hooked)
        hooked = install_chunking([module], "auto", minimum)
        try:
            with torch.no_grad():
                module(*inputs)
        finally:
            remove_chunking(hooked)


@pytest.mark.parametrize("family", ["ltx", "animatediff"])
def test_auto_chunk_pipeline_matches_unchunked(family):
    pipe, kwargs = build(family)
    kwargs = dict(kwargs, output_type="latent", num_inference_steps=2)
    ref = run(pipe, kwargs)
    budget = 8192  # the largest one-item minimum: a 32-channel 8x8 frame of an AnimateDiff up-block resnet
    lightcache.enable(pipe, policy=None, memory=MemoryPlan(chunk_size="auto", chunk_budget=budget))
    try:
        hooked = session_of(denoiser(pipe)).hooks
        hooks = [h for name in (CHUNK_HOOK, ATTENTION_HOOK, UNET_HOOK, DIT_HOOK) for h in _hooks(hooked, name)]
        out = run(pipe, kwargs)
        splits = sum(h.split_calls for h in hooks)
    finally:
        lightcache.disable(pipe)
    assert splits > 0
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


# -- bad input -------------------------------------------------------------------------------------


def test_bad_chunk_settings():
    for bad in (dict(chunk_size=0), dict(chunk_size=2.5), dict(chunk_size="big"), dict(chunk_size=True)):
        with pytest.raises(ValueError, match="MemoryPlan.chunk_size"):
            MemoryPlan(**bad)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="MemoryPlan.chunk_budget"):
            MemoryPlan(chunk_size="auto", chunk_budget=bad)
    with pytest.raises(ValueError, match="chunk_budget"):
        MemoryPlan(chunk_size="auto")  # auto needs a budget
    with pytest.raises(ValueError, match="chunk_budget"):
        MemoryPlan(chunk_size=16, chunk_budget=1024)  # a budget only sizes "auto"
    with pytest.raises(ValueError, match="chunk_budget"):
        install_chunking([_ffn()], "auto")
    with pytest.raises(ValueError, match="chunk_size"):
        install_chunking([_ffn()], -3)
    assert MemoryPlan(chunk_size="auto", chunk_budget=1 << 20).chunk_budget == 1 << 20


def test_compiled_blocks_with_chunking_and_caching_match():
    """Blocks compiled with torch.compile (aot_eager: the graph capture without a C++ toolchain)
    under lightcache's block hooks and the DiT chunk hooks give the uncompiled, unchunked video."""
    pipe, kwargs = build("wan")
    kwargs = dict(kwargs, num_inference_steps=3)
    ref = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.0, warmup_steps=0), memory=MemoryPlan(chunk_size=2))
    blocks = list(pipe.transformer.blocks)
    try:
        for b in blocks:
            b.compile(backend="aot_eager")
        out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        assert sum(h.split_calls for h in _hooks(blocks, DIT_HOOK)) > 0  # the pieces really ran
    finally:
        lightcache.disable(pipe)
        for b in blocks:
            b._compiled_call_impl = None
    assert (out - ref).abs().max().item() <= 1e-5


# -- per-piece cost: the function mode only where it may split, piece counts, the planner's search ----


def test_attention_hook_skips_the_function_mode_once_nothing_splits():
    """A block whose attention torch runs on a fused kernel (CPU flash, 4-D inputs) splits nothing:
    the second call with the same inputs runs without the function mode (mode_calls stays 1), and
    its output is the same bit for bit. A change that may split (the math backend, other shapes,
    a swapped processor) runs the mode again; the math backend then splits, still exact. A new
    hook on the same block (lightcache enabled again) remembers the inputs that split nothing, for
    the same chunk size only."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attention()
    x = torch.randn(2, 256, 64)
    with torch.no_grad():
        ref = attn(x)
    hooked = install_chunking([attn], 64)
    try:
        hook = _hooks(hooked, ATTENTION_HOOK)[0]
        with torch.no_grad():
            first, second = attn(x), attn(x)
            assert (hook.memo.mode_calls, hook.split_calls) == (1, 0)
            attn(x[:, :128])  # other shapes: the mode again
            assert hook.memo.mode_calls == 2
            attn.set_processor(AttnProcessor2_0())  # another processor object: the mode again
            attn(x[:, :128])
            assert hook.memo.mode_calls == 3
            with sdpa_kernel(SDPBackend.MATH):
                math = attn(x)
                attn(x)  # it split: not memoised
            assert hook.memo.mode_calls == 5 and hook.split_calls == 2  # one split SDPA call each
    finally:
        remove_chunking(hooked)
    hooked = install_chunking([attn], 64)  # a new hook on the same block remembers what did not split
    try:
        with torch.no_grad():
            attn(x[:, :128])
        assert _hooks(hooked, ATTENTION_HOOK)[0].memo.mode_calls == 0
    finally:
        remove_chunking(hooked)
    hooked = install_chunking([attn], 32)  # another chunk size: not the same key
    try:
        with torch.no_grad():
            attn(x[:, :128])
        assert _hooks(hooked, ATTENTION_HOOK)[0].memo.mode_calls == 1
    finally:
        remove_chunking(hooked)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(math, ref, rtol=0, atol=1e-5)


def test_call_key_describes_nested_arguments_and_refuses_unknown_ones():
    from lightcache.memory.chunk_attention import call_key

    t = torch.zeros(2, 3)
    k1 = call_key((t,), {"num_frames": 4, "extra": {"scale": 1.0}, "res": (t, t)})
    assert k1 == call_key((torch.ones(2, 3),), {"num_frames": 4, "extra": {"scale": 1.0}, "res": (t, t)})
    assert k1 != call_key((t,), {"num_frames": 8, "extra": {"scale": 1.0}, "res": (t, t)})
    assert k1 != call_key((t.t(),), {"num_frames": 4, "extra": {"scale": 1.0}, "res": (t, t)})  # strides
    assert call_key((t,), {"obj": object()}) is None


def test_piece_counts_match_the_pieces_run(monkeypatch):
    """counting(): a resnet over 8 frames in pieces of 3 frames is one call of ceil(8/3) = 3 pieces
    and copies its whole output once; a DiT block over pieces of 13 tokens counts a key and a query
    pass per piece, and copies its output, K and V; outside counting() nothing is recorded."""
    from lightcache.memory.chunk_spec import counting

    torch.manual_seed(0)
    res = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=4).eval()
    x, temb = torch.randn(8, 8, 4, 4), torch.randn(8, 16)
    hooked = install_chunking([res], 3 * 16)
    try:
        with torch.no_grad(), counting() as c:
            out = res(x, temb)
        with torch.no_grad(), counting() as outer:
            with counting() as inner:
                res(x, temb)
        res(x, temb)  # not counted anywhere
    finally:
        remove_chunking(hooked)
    assert (c.calls, c.pieces, c.copied) == (1, 3, out.nbytes)
    assert (inner.calls, outer.calls) == (1, 0)

    monkeypatch.setattr(chunk_dit, "MIN_PIECES", 1)
    model, kw = _dit_case("wan", frames=2, size=4)
    blocks = _dit_blocks(model)
    hooked = install_chunking(blocks, 26, model=model)
    try:
        with counting() as c:
            _model_out(model, kw)
    finally:
        remove_chunking(hooked)
    batch = kw["hidden_states"].shape[0]
    tokens = kw["hidden_states"].shape[2] * (kw["hidden_states"].shape[3] // 2) * (kw["hidden_states"].shape[4] // 2)
    pieces = -(-tokens // (26 // batch))
    width = model.config.num_attention_heads * model.config.attention_head_dim
    ffn_calls = sum(1 for b in blocks for m in b.modules() if isinstance(m, FeedForward))
    # blocks: 2 passes per piece, output + K + V copied; the FFNs inside a piece (13 rows) never split
    assert c.calls == len(blocks) and ffn_calls >= len(blocks)
    assert c.pieces == len(blocks) * 2 * pieces
    assert c.copied == len(blocks) * 3 * batch * tokens * width * 4


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8])
def test_planner_bisection_finds_the_largest_fitting_chunk(n):
    """_largest against the linear scan, for every threshold of a monotone fit over n sizes, within
    1 + ceil(log2 n) fit calls (the largest tried first); None when even the smallest does not fit."""
    import math

    from lightcache.simulate.planner import _largest

    chunks = [2 ** (20 - i) for i in range(n)]
    for first_fitting in range(n + 1):  # chunks[i] fits for i >= first_fitting
        calls = []

        def fits(c):
            calls.append(c)
            return chunks.index(c) >= first_fitting

        got = _largest(chunks, fits)
        assert got == (chunks[first_fitting] if first_fitting < n else None)
        assert calls[0] == chunks[0] and len(calls) <= 1 + math.ceil(math.log2(n))


def test_planner_expected_cost_follows_the_counts():
    """The cost model: extra pieces per denoiser call = (pieces - calls) / denoiser calls, copies per
    call, and the percentage = 100 x piece_overhead x extra pieces (none without piece_overhead)."""
    from types import SimpleNamespace

    from lightcache.memory.chunk_spec import PieceCount
    from lightcache.simulate.planner import _Sim, expected_cost

    sim = _Sim(None, "auto", 4)
    cand = dict(swap="on", chunk_size=512)
    key = (tuple(sorted(cand.items())), True)
    sim.memo[key] = SimpleNamespace(denoiser_calls=4, cache_host=3 * 2**20)
    sim.counts[key] = PieceCount()
    sim.counts[key].calls, sim.counts[key].pieces, sim.counts[key].copied = 10, 50, 8 * 2**20
    cost = expected_cost(sim, cand, piece_overhead=0.01)
    assert cost["extra_pieces_per_call"] == 10.0 and cost["copied_per_call"] == 2 * 2**20
    assert cost["pieces_per_split_call"] == 5.0 and cost["swap_host_bytes"] == 3 * 2**20
    assert cost["percent"] == pytest.approx(10.0)
    assert cost["text"].startswith("expected cost: ~10 % slower than no plan")
    assert expected_cost(sim, cand)["percent"] is None
    plain = dict(swap="on")
    sim.memo[(tuple(plain.items()), True)] = SimpleNamespace(denoiser_calls=4, cache_host=0)
    assert expected_cost(sim, plain, piece_overhead=0.01)["percent"] == 0.0
