"""HunyuanVideo 1.5 text-to-video (``HunyuanVideo15Pipeline``): one stack of dual-stream blocks
(``HunyuanVideo15TransformerBlock``) over [video, context] where the context is the image
tokens (729 zero rows, masked out for text-to-video), the ByT5 glyph tokens and the Qwen tokens,
valid ones first; ``AutoencoderKLHunyuanVideo15`` (causal convolutions, causal mid-block
attention).

Offline: the Qwen2.5-VL and ByT5 text encoders run only without ``prompt_embeds`` /
``prompt_embeds_2`` (None here). Guidance comes from the pipeline's ``guider`` component
(``ClassifierFreeGuidance``, two denoiser calls a step), not from a call argument: the matrix's
CFG-off variant cannot be asked for per call (``no_cfg=None``: skipped).
"""

from tiny_pipelines import _hunyuan_components, _mask

FAMILY = "hunyuan_video15"

# 48 video + 40 context tokens a call (16 image, 8 glyph, 16 prompt rows): 8 rows a chunk make >= 4
# pieces; the VAE's decode slices are not its one-call decode
MATRIX = dict(inexact_decode=True, cfg_calls=2, no_cfg=None, chunk=8,
              notes="guidance is the guider component's, not a call argument: no CFG-off variant")


def build(s):
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )

    text_dim, text_2_dim, seq, seq_2 = 16, 8, 16, 8
    s()
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * 4 + 1,  # latent, condition latent, mask
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=2,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=text_dim,
        text_embed_2_dim=text_2_dim,
        image_embed_dim=8,
        rope_axes_dim=(2, 4, 4),
        target_size=32,
        task_type="t2v",
    )
    s()
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )
    # the VAE's mid-block attention builds its causal mask as (B, S, S), which SDPA broadcasts
    # against (B, 1, S, S) queries only at batch 1 (diffusers 0.42): decode one video at a time
    vae.enable_slicing()
    pipe = HunyuanVideo15Pipeline(
        **_hunyuan_components(transformer, vae), guider=ClassifierFreeGuidance(guidance_scale=6.0)
    )
    # text-to-video passes all-zero image embeddings (masked out) of the vision encoder's 729
    # tokens: 16 at this size (the model takes any number)
    pipe.vision_num_semantic_tokens = 16
    kwargs = dict(
        prompt_embeds=s.randn(1, seq, text_dim),
        prompt_embeds_mask=_mask(seq, 12),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        negative_prompt_embeds_mask=_mask(seq, 6),
        prompt_embeds_2=s.randn(1, seq_2, text_2_dim),
        prompt_embeds_mask_2=_mask(seq_2, 5),
        negative_prompt_embeds_2=s.randn(1, seq_2, text_2_dim),
        negative_prompt_embeds_mask_2=_mask(seq_2, 3),
        height=32,
        width=32,
        num_frames=9,
    )
    return pipe, kwargs
