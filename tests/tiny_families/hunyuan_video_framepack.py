"""HunyuanVideo Framepack (``HunyuanVideoFramepackPipeline``, inverted anti-drifting sampling):
image-to-video generated in sections of ``latent_window_size`` latent frames, each section a full
denoising loop of its own (the scheduler's ``set_timesteps`` again: lightcache starts a new run,
its cache dropped) conditioned on the clean history latents, then decoded and blended into the
video before the next section.

Offline: the Llama and CLIP text encoders run only without ``prompt_embeds`` /
``pooled_prompt_embeds`` (None here); the SigLIP image encoder always runs, so a tiny one is built
from a transformers config with a ``SiglipImageProcessor`` constructed in code. The transformer's
history embedder has fixed (1, 2, 2)/(2, 4, 4)/(4, 8, 8) kernels, so its patch size is 2 and the
latent 8 x 8 (32 pixels, a VAE of spatial ratio 4).

The default call (5 frames, window 2) runs one section; the matrix's second-size variant one section
of one latent frame (window 1). A call of several sections is tests/test_hunyuan_video_framepack.py's
(the matrix counts a call's decisions as steps x calls a step: one section).
"""

import torch

from tiny_pipelines import _mask

FAMILY = "hunyuan_video_framepack"

# HunyuanVideo's VAE (decode slices not its one-call decode); real CFG is two calls a step; ~100
# tokens a call (72 video: 32 noisy, 40 clean history; the image's 16 and the prompt's), so 16
# rows a chunk make >= 4 pieces
MATRIX = dict(inexact_decode=True, no_cfg={"true_cfg_scale": 1.0}, cfg_calls=2, chunk=16,
              frames=1, variant_extra={"latent_window_size": 1},
              notes="the 'frames' variant: one section of one latent frame")

IMAGE_DIM = 16


def _tiny_siglip(s):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    s()
    return SiglipVisionModel(SiglipVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, image_size=32, patch_size=8))


def _siglip_processor():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 32, "width": 32})


def _tiny_vae(s):
    from diffusers import AutoencoderKLHunyuanVideo

    # 4x spatial compression and 4 channels: the 8 x 8 latent from 32 pixels, decoded twice a call
    s()
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        norm_num_groups=2,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def build(s):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoFramepackPipeline,
        HunyuanVideoFramepackTransformer3DModel,
    )

    text_dim, pooled_dim, seq = 16, 8, 16
    s()
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_axes_dim=(2, 4, 4),
        has_image_proj=True,
        image_proj_dim=IMAGE_DIM,
        has_clean_x_embedder=True,
    )
    vae = _tiny_vae(s)
    image_encoder = _tiny_siglip(s)
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
        image_encoder=image_encoder,
        feature_extractor=_siglip_processor(),
    )
    kwargs = dict(
        # a (1, 3, H, W) tensor in [0, 1] with 8-bit values: one image per prompt
        image=(s.rand(32, 32, 3) * 255).to(torch.uint8).permute(2, 0, 1)[None].float() / 255,
        prompt_embeds=s.randn(1, seq, text_dim),
        pooled_prompt_embeds=s.randn(1, pooled_dim),
        prompt_attention_mask=_mask(seq, 12),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        negative_pooled_prompt_embeds=s.randn(1, pooled_dim),
        negative_prompt_attention_mask=_mask(seq, 6),
        height=32,
        width=32,
        num_frames=5,
        latent_window_size=2,
        guidance_scale=1.0,
        true_cfg_scale=4.0,
    )
    return pipe, kwargs
