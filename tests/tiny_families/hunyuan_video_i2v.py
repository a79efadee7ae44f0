"""HunyuanVideo image-to-video (``HunyuanVideoImageToVideoPipeline``), the token-replace variant
(``image_condition_type="token_replace"``, HunyuanVideo-I2V's current checkpoint): the encoded
image replaces the first latent frame at every step, and the first frame's tokens get their own
modulation (timestep 0) in every block. Same denoiser class as ``hunyuan_video``, so the registry
entry is that family's; this module is a tiny-pipeline variant of it.

Offline: the pipeline's LLaVA text encoder and CLIP text encoder only run when no
``prompt_embeds`` / ``pooled_prompt_embeds`` are given (the LLaVA embeddings interleave the
image's tokens with the prompt's; precomputed ones stand in for both), and its CLIP image
processor only feeds LLaVA: all four are None here. The image goes through the VAE (the first
latent frame).
"""

import torch

from tiny_pipelines import _mask

FAMILY = "hunyuan_video_i2v"

# like hunyuan_video: the VAE's decode slices are not its one-call decode; real CFG is two calls;
# 48 video + 16 text tokens a call: 8 rows a chunk make >= 4 pieces (2 rows would make ~30, slow)
MATRIX = dict(inexact_decode=True, no_cfg={"true_cfg_scale": 1.0}, cfg_calls=2, chunk=8)


def tiny_vae(s):
    from diffusers import AutoencoderKLHunyuanVideo

    s()
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def build(s, image_condition_type="token_replace"):
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline, HunyuanVideoTransformer3DModel

    text_dim, pooled_dim, seq, z = 16, 8, 16, 4
    s()
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=z if image_condition_type == "token_replace" else 2 * z + 1,
        out_channels=z,
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
        image_condition_type=image_condition_type,
    )
    vae = tiny_vae(s)
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
        image_processor=None,
    )
    # guidance-distilled like HunyuanVideo: two-pass CFG runs with true_cfg_scale > 1 and negative
    # embeddings
    kwargs = dict(
        # the image as a (1, 3, H, W) tensor in [0, 1] (8-bit values, like a decoded picture): a
        # tensor is a batch of images, one per prompt (the batch-2 variant stacks two)
        image=(s.rand(32, 32, 3) * 255).to(torch.uint8).permute(2, 0, 1)[None].float() / 255,
        prompt_embeds=s.randn(1, seq, text_dim),
        pooled_prompt_embeds=s.randn(1, pooled_dim),
        prompt_attention_mask=_mask(seq, 12),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        negative_pooled_prompt_embeds=s.randn(1, pooled_dim),
        negative_prompt_attention_mask=_mask(seq, 6),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=1.0,
        true_cfg_scale=4.0,
    )
    return pipe, kwargs
