"""Tiny random-weight diffusers video pipelines for CPU tests.

Every pipeline is built from configs (nothing is downloaded) and runs offline from precomputed prompt
embeddings, so no tokenizer or text encoder is needed: the pipelines all skip their text encoders
when ``prompt_embeds`` (and, where they need them, attention masks / pooled embeddings /
``negative_prompt_embeds``) are given. Where a pipeline needs an image encoder even then (Wan 2.1
image-to-video, Stable Video Diffusion), a tiny CLIP vision model is built from a transformers
config and paired with a ``CLIPImageProcessor`` constructed in code.

    pipe, kwargs = build("wan", seed=0)
    result = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    video = output_of(result)

``build`` returns the pipeline (eval mode, fp32, on CPU, progress bar off) and the call kwargs:
embeddings / images, tiny height, width and frame count, ``num_inference_steps`` (6 by default;
the caller may override it), a guidance scale above 1 so classifier-free guidance is active where
the pipeline supports it, and ``output_type="pt"``. The kwargs hold no generator: the caller adds
one. Two builds with the same seed have identical weights and identical kwargs; building does not
disturb the global torch RNG.

Sizes: the DiT transformers have 2 blocks (HunyuanVideo: 1 dual-stream + 1 single-stream block);
the UNets have 3 down / 3 up blocks so that a DeepCache-style skip branch exists.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import torch

FAMILIES = (
    "wan",
    "wan_i2v",
    "hunyuan_video",
    "cogvideox",
    "ltx",
    "easyanimate",
    "svd",
    "animatediff",
    "text_to_video_sd",
)

DEFAULT_STEPS = 6


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


class _Seeder:
    """Seeds the global torch RNG before each component so every component's weights depend only on
    (seed, component index), not on the order or size of the others; also hands out a private
    generator for input tensors."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._n = 0
        self.gen = torch.Generator().manual_seed(self.seed + 10_000)

    def __call__(self) -> None:
        torch.manual_seed(self.seed * 1000 + self._n)
        self._n += 1

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen)


def _finish(pipe):
    pipe.to("cpu", torch.float32)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            component.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _mask(seq_len: int, valid: int) -> torch.Tensor:
    """A (1, seq_len) attention mask with the first ``valid`` tokens on, like a padded tokenizer."""
    m = torch.zeros(1, seq_len, dtype=torch.long)
    m[:, :valid] = 1
    return m


def _pil_image(s: _Seeder, height: int, width: int):
    from PIL import Image

    arr = (s.rand(height, width, 3) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, mode="RGB")


def _tiny_clip_vision(s: _Seeder, with_projection: bool, hidden: int = 16, image_size: int = 32):
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=hidden,
        projection_dim=hidden,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    s()
    cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    return cls(cfg)


def _clip_image_processor(size: int = 32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------


def _wan_vae(s: _Seeder, z_dim: int):
    from diffusers import AutoencoderKLWan

    s()
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )


def _wan_dit(s: _Seeder, cls, z_dim: int, text_dim: int, **overrides):
    """A tiny Wan-layout DiT of class ``cls`` (2 blocks, 2 heads of 12); ``overrides`` add or replace config keys."""
    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    s()
    return cls(**{**config, **overrides})


def _flow_match_scheduler(**config):
    """A ``FlowMatchEulerDiscreteScheduler`` with ``config``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def _unipc_flow_scheduler(shift: float):
    """UniPC on flow sigmas (flow prediction) with ``shift``, as SkyReels-V2 / Wan Animate run it."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def _text_embeds(s: _Seeder, seq: int, text_dim: int) -> dict:
    """Positive then negative (1, seq, text_dim) prompt embeddings."""
    return dict(prompt_embeds=s.randn(1, seq, text_dim), negative_prompt_embeds=s.randn(1, seq, text_dim))


def _masked_text_embeds(s: _Seeder, seq: int, text_dim: int, valid: int, negative_valid: int) -> dict:
    """Positive then negative prompt embeddings with padded-tokenizer attention masks."""
    return dict(
        prompt_embeds=s.randn(1, seq, text_dim),
        prompt_attention_mask=_mask(seq, valid),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        negative_prompt_attention_mask=_mask(seq, negative_valid),
    )


def _image_tensor(s: _Seeder, height: int, width: int) -> torch.Tensor:
    """A (1, 3, H, W) image in [0, 1] with 8-bit values, like a decoded picture."""
    return (s.rand(height, width, 3) * 255).to(torch.uint8).permute(2, 0, 1)[None].float() / 255


def _hunyuan_dit(s: _Seeder, cls, text_dim: int, pooled_dim: int, **overrides):
    """A tiny HunyuanVideo-layout DiT of class ``cls`` (1 dual + 1 single block); ``overrides`` add or replace keys."""
    config = dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_axes_dim=(2, 4, 4),
    )
    s()
    return cls(**{**config, **overrides})


def _hunyuan_vae(s: _Seeder, width: int = 8, groups: int = 4, spatial_ratio: int = 8):
    """A tiny ``AutoencoderKLHunyuanVideo`` (4 levels of ``width`` channels, 4 latent channels)."""
    from diffusers import AutoencoderKLHunyuanVideo

    s()
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(width,) * 4,
        layers_per_block=1,
        norm_num_groups=groups,
        spatial_compression_ratio=spatial_ratio,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def _hunyuan_components(transformer, vae) -> dict:
    """HunyuanVideo-style pipeline components: no text encoders, flow matching with shift 7."""
    return dict(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=_flow_match_scheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
    )


def _hunyuan_prompt_inputs(s: _Seeder, seq: int, text_dim: int, pooled_dim: int) -> dict:
    """HunyuanVideo's prompt inputs: embeddings, pooled embeddings, masks (12 / 6 valid), positive then negative."""
    return dict(
        prompt_embeds=s.randn(1, seq, text_dim),
        pooled_prompt_embeds=s.randn(1, pooled_dim),
        prompt_attention_mask=_mask(seq, 12),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        negative_pooled_prompt_embeds=s.randn(1, pooled_dim),
        negative_prompt_attention_mask=_mask(seq, 6),
    )


def _cogvideox_dit_config(text_dim: int, seq: int) -> dict:
    """The config keys the tiny CogVideoX-layout DiTs share (2 blocks, a 4 x 4 x 9-frame latent)."""
    return dict(
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=text_dim,
        num_layers=2,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=seq,
    )


def _cogvideox_vae(s: _Seeder):
    """A tiny ``AutoencoderKLCogVideoX`` (4 levels of 8 channels, 4 latent channels)."""
    from diffusers import AutoencoderKLCogVideoX

    s()
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )


def _cogvideox_scheduler(cls):
    """A ``cls`` scheduler with CogVideoX-2b's config (v-prediction, zero-terminal-SNR, trailing, SNR shift 3)."""
    return cls(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        snr_shift_scale=3.0,
    )


def _build_wan(s: _Seeder):
    from diffusers import WanPipeline, WanTransformer3DModel

    z_dim, text_dim, seq = 4, 16, 16
    vae = _wan_vae(s, z_dim)
    transformer = _wan_dit(s, WanTransformer3DModel, z_dim, text_dim)
    scheduler = _flow_match_scheduler(shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    kwargs = dict(**_text_embeds(s, seq, text_dim), height=32, width=32, num_frames=9, guidance_scale=5.0)
    return pipe, kwargs


def _build_wan_i2v(s: _Seeder):
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    # Wan 2.1 I2V layout: transformer input = noise latents (z) + 4 mask channels + encoded first frame
    # (z), CLIP image tokens fed through `image_dim` and per-block added K/V projections. With
    # `added_kv_proj_dim` set, the attention processor takes the last 512 context tokens as text, so
    # the text embeddings must have exactly 512 tokens.
    z_dim, text_dim, seq, clip_hidden = 4, 16, 512, 16
    vae = _wan_vae(s, z_dim)
    transformer = _wan_dit(
        s,
        WanTransformer3DModel,
        z_dim,
        text_dim,
        in_channels=2 * z_dim + 4,
        image_dim=clip_hidden,
        added_kv_proj_dim=2 * 12,  # heads x head dim
    )
    image_encoder = _tiny_clip_vision(s, with_projection=False, hidden=clip_hidden)
    scheduler = _flow_match_scheduler(shift=3.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=scheduler,
        image_processor=_clip_image_processor(32),
        image_encoder=image_encoder,
        transformer=transformer,
    )
    kwargs = dict(
        image=_pil_image(s, 32, 32),
        **_text_embeds(s, seq, text_dim),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


def _build_hunyuan_video(s: _Seeder):
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    text_dim, pooled_dim, seq = 16, 8, 16
    transformer = _hunyuan_dit(s, HunyuanVideoTransformer3DModel, text_dim, pooled_dim)
    vae = _hunyuan_vae(s)
    pipe = HunyuanVideoPipeline(**_hunyuan_components(transformer, vae))
    # HunyuanVideo is guidance-distilled: `guidance_scale` only feeds the guidance embedding. Real
    # (two-pass) CFG runs when true_cfg_scale > 1 and negative embeddings are given.
    kwargs = dict(
        **_hunyuan_prompt_inputs(s, seq, text_dim, pooled_dim),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=6.0,
        true_cfg_scale=4.0,
    )
    return pipe, kwargs


def _build_cogvideox(s: _Seeder):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    text_dim, seq = 16, 8
    s()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, **_cogvideox_dit_config(text_dim, seq)
    )
    vae = _cogvideox_vae(s)
    scheduler = _cogvideox_scheduler(CogVideoXDDIMScheduler)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    kwargs = dict(
        **_text_embeds(s, seq, text_dim),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=6.0,
        max_sequence_length=seq,
    )
    return pipe, kwargs


def _build_ltx(s: _Seeder):
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    text_dim, seq = 32, 16
    s()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=2,
        caption_channels=text_dim,
    )
    s()
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    scheduler = _flow_match_scheduler()
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    kwargs = dict(
        **_masked_text_embeds(s, seq, text_dim, 12, 4),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=3.0,
        max_sequence_length=seq,
    )
    return pipe, kwargs


def _build_easyanimate(s: _Seeder):
    from diffusers import (
        AutoencoderKLMagvit,
        EasyAnimatePipeline,
        EasyAnimateTransformer3DModel,
    )

    text_dim, seq = 16, 16
    s()
    # 3-D RoPE splits the head dim 1/4 : 3/8 : 3/8 (t : h : w), each part even -> head_dim 16.
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=text_dim,
        num_layers=2,
        sample_width=32,
        sample_height=32,
        patch_size=2,
    )
    s()
    vae = AutoencoderKLMagvit(
        in_channels=3,
        out_channels=3,
        down_block_types=(
            "SpatialDownBlock3D",
            "SpatialTemporalDownBlock3D",
            "SpatialTemporalDownBlock3D",
            "SpatialTemporalDownBlock3D",
        ),
        up_block_types=(
            "SpatialUpBlock3D",
            "SpatialTemporalUpBlock3D",
            "SpatialTemporalUpBlock3D",
            "SpatialTemporalUpBlock3D",
        ),
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        spatial_group_norm=False,
    )
    scheduler = _flow_match_scheduler()
    pipe = EasyAnimatePipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer, scheduler=scheduler)
    kwargs = dict(
        **_masked_text_embeds(s, seq, text_dim, 12, 4),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


def _build_svd(s: _Seeder):
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )

    clip_dim = 32
    s()
    # GroupNorms inside the spatio-temporal blocks use 32 groups: channels must be multiples of 32.
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types=(
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels=(32, 32, 32),
        layers_per_block=1,
        cross_attention_dim=clip_dim,
        num_attention_heads=(2, 2, 2),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=3 * 8,
        num_frames=5,
    )
    s()
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        block_out_channels=[32, 32, 32],
        layers_per_block=1,
        latent_channels=4,
        sample_size=32,
    )
    image_encoder = _tiny_clip_vision(s, with_projection=True, hidden=clip_dim)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=_clip_image_processor(32),
    )
    # A tensor image in [0, 1] is fed to the CLIP processor as is (a PIL image would be resized to
    # 224x224 first, which the 32-pixel tiny CLIP cannot take).
    kwargs = dict(
        image=s.rand(1, 3, 32, 32),
        height=32,
        width=32,
        num_frames=5,
        decode_chunk_size=5,
        min_guidance_scale=1.0,
        max_guidance_scale=2.5,
    )
    return pipe, kwargs


def _sd_vae(s: _Seeder):
    from diffusers import AutoencoderKL

    s()
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[8, 8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _build_animatediff(s: _Seeder):
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

    text_dim, seq = 16, 8
    channels = (16, 16, 16)
    s()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=1,
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=2,
    )
    s()
    motion_adapter = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=1,
        motion_norm_num_groups=2,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    vae = _sd_vae(s)
    pipe = AnimateDiffPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,  # converted to a UNetMotionModel by the pipeline
        motion_adapter=motion_adapter,
        scheduler=_ddim(),
        feature_extractor=None,
        image_encoder=None,
    )
    kwargs = dict(
        **_text_embeds(s, seq, text_dim),
        height=32,
        width=32,
        num_frames=8,
        guidance_scale=7.5,
    )
    return pipe, kwargs


def _build_text_to_video_sd(s: _Seeder):
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    text_dim, seq = 16, 8
    s()
    unet = UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=text_dim,
        attention_head_dim=8,
    )
    vae = _sd_vae(s)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=_ddim())
    kwargs = dict(
        **_text_embeds(s, seq, text_dim),
        height=32,
        width=32,
        num_frames=8,
        guidance_scale=9.0,
    )
    return pipe, kwargs


_BUILDERS: dict[str, Callable[[_Seeder], tuple[Any, dict]]] = {
    "wan": _build_wan,
    "wan_i2v": _build_wan_i2v,
    "hunyuan_video": _build_hunyuan_video,
    "cogvideox": _build_cogvideox,
    "ltx": _build_ltx,
    "easyanimate": _build_easyanimate,
    "svd": _build_svd,
    "animatediff": _build_animatediff,
    "text_to_video_sd": _build_text_to_video_sd,
}
assert tuple(_BUILDERS) == FAMILIES


# --------------------------------------------------------------------------------------------------
# further families: one module each in tests/tiny_families/
# --------------------------------------------------------------------------------------------------
#
# A module there defines ``FAMILY`` (the registry's family name), ``build(s: _Seeder) -> (pipe,
# kwargs)`` like the builders above, and ``MATRIX``: how the matrix test treats it (keys of
# ``MatrixInfo``). They run through test_matrix.py (and tests that ask for ALL_FAMILIES); the
# original FAMILIES keep the heavier per-family tests of the other test files.


class MatrixInfo(dict):
    """How tests/test_matrix.py runs a family. Keys: kind ("dit" or "unet"), inexact_decode (its
    decode slices warn), decode_slices (slices that are exact), chunk (rows per chunk that split
    its tiny pipeline; None: chunking has nothing to split in it, no "chunk" cells and "all" goes
    without chunk_size), no_cfg (call kwargs that turn guidance off; None: no call argument does,
    no CFG-off cell), frames (a smaller frame count
    for the second-call variant; None: the variant is skipped with the reason in ``notes``),
    variant_extra (kwargs added to the "frames" variant), batch2 (False: the pipeline takes one
    prompt a call), cfg_calls (denoiser calls a step with guidance on: 1 where the pipeline batches
    the conditional and unconditional inputs, 2 where it calls the denoiser twice), notes (why a
    variant is left out), cells ("full": every cell; "reduced": for a variant pipeline (I2V) of a
    family whose main pipeline runs the full matrix, the cells that check what the variant's own
    pipeline code can break, to keep the suite's time: lossless with the first policy under
    "none", reuse skips with each policy under "none" (PreciseCache's trial calls) and with the
    first policy under "chunk" and "decode", the refusals and the decode warning; no swap /
    CFG-off / batch-2 / second-size cells; every cell still checks that nothing survives the call
    and that disable() restores the pipeline; tests/test_matrix.py ``reduced_cells``)."""

    DEFAULTS = dict(kind="dit", inexact_decode=False, decode_slices=1, chunk=2, no_cfg={"guidance_scale": 1.0},
                    frames=5, variant_extra={}, batch2=True, cfg_calls=1, notes="", cells="full")

    def __init__(self, **kw):
        unknown = set(kw) - set(self.DEFAULTS)
        if unknown:
            raise KeyError(f"MatrixInfo: unknown keys {sorted(unknown)}")
        if kw.get("cells", "full") not in ("full", "reduced"):
            raise ValueError(f"MatrixInfo: cells must be 'full' or 'reduced', got {kw['cells']!r}")
        super().__init__({**self.DEFAULTS, **kw})


_MATRIX_INFO: dict[str, MatrixInfo] = {
    "wan": MatrixInfo(cfg_calls=2), "wan_i2v": MatrixInfo(cfg_calls=2), "ltx": MatrixInfo(chunk=8), "easyanimate": MatrixInfo(),
    "hunyuan_video": MatrixInfo(inexact_decode=True, no_cfg={"true_cfg_scale": 1.0}, cfg_calls=2),
    "cogvideox": MatrixInfo(decode_slices=2),
    "svd": MatrixInfo(kind="unet", inexact_decode=True, chunk=128,
                      no_cfg={"min_guidance_scale": 1.0, "max_guidance_scale": 1.0},
                      frames=3, variant_extra={"decode_chunk_size": 3}),
    "animatediff": MatrixInfo(kind="unet", chunk=128, frames=4),
    "text_to_video_sd": MatrixInfo(kind="unet", chunk=128, frames=4),
}


def _load_more_families():
    import importlib
    import pkgutil
    from pathlib import Path

    folder = Path(__file__).parent / "tiny_families"
    found = []
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"tiny_families.{info.name}")
        if mod.FAMILY in _BUILDERS:
            raise ValueError(f"tests/tiny_families/{info.name}.py: family {mod.FAMILY!r} is built twice")
        _BUILDERS[mod.FAMILY] = mod.build
        _MATRIX_INFO[mod.FAMILY] = mod.MATRIX if isinstance(mod.MATRIX, MatrixInfo) else MatrixInfo(**mod.MATRIX)
        found.append(mod.FAMILY)
    return tuple(found)


MORE_FAMILIES = _load_more_families()
ALL_FAMILIES = FAMILIES + MORE_FAMILIES


def matrix_info(family: str) -> MatrixInfo:
    return _MATRIX_INFO[family]


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def build(family: str, seed: int = 0):
    """Build the tiny pipeline of ``family`` and its call kwargs (no generator). Deterministic in
    ``seed``; leaves the global torch RNG state as it found it."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {ALL_FAMILIES}")
    with torch.random.fork_rng(devices=[]), _quiet_diffusers():
        s = _Seeder(seed)
        pipe, kwargs = _BUILDERS[family](s)
        pipe = _finish(pipe)
    kwargs.setdefault("num_inference_steps", DEFAULT_STEPS)
    kwargs.setdefault("output_type", "pt")
    return pipe, kwargs


def denoiser(pipe) -> torch.nn.Module:
    """The denoising network: ``pipe.transformer`` for the DiT pipelines, else ``pipe.unet``."""
    model = getattr(pipe, "transformer", None)
    if model is None:
        model = getattr(pipe, "unet", None)
    if model is None:
        raise AttributeError(f"{type(pipe).__name__} has neither a transformer nor a unet")
    return model


def denoiser_calls(pipe, kwargs, n: int = 2):
    """The first ``n`` (args, kwargs) the pipeline passes to its denoiser in a one-step call."""
    model = denoiser(pipe)
    calls = []
    original = model.forward

    def capture(*a, **k):
        calls.append((a, k))
        return original(*a, **k)

    model.forward = capture
    try:
        pipe(**dict(kwargs, num_inference_steps=1), generator=torch.Generator().manual_seed(0))
    finally:
        del model.forward
    return calls[:n]


def output_of(result) -> torch.Tensor:
    """The frames / video of a pipeline result (output object or tuple) as a torch tensor."""
    if hasattr(result, "frames"):
        out = result.frames
    elif isinstance(result, (tuple, list)) and len(result) and not _is_image(result[0]):
        out = result[0]
    else:
        out = result
    return _to_tensor(out)


def _is_image(x) -> bool:
    try:
        from PIL import Image

        return isinstance(x, Image.Image)
    except ImportError:  # pragma: no cover
        return False


def _to_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if _is_image(x):
        return torch.from_numpy(np.asarray(x).copy())
    if isinstance(x, (list, tuple)):
        return torch.stack([_to_tensor(v) for v in x])
    raise TypeError(f"cannot turn {type(x).__name__} into a tensor")


@contextlib.contextmanager
def _quiet_diffusers():
    """Silence diffusers' construction-time warnings (deprecated pipelines, missing optional
    components) while building."""
    try:
        from diffusers.utils import logging as dlogging
    except ImportError:  # pragma: no cover
        yield
        return
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)
