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

from tiny_pipelines import _hunyuan_components, _hunyuan_dit, _hunyuan_prompt_inputs, _hunyuan_vae, _image_tensor

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


def build(s):
    from diffusers import HunyuanVideoFramepackPipeline, HunyuanVideoFramepackTransformer3DModel

    text_dim, pooled_dim, seq = 16, 8, 16
    transformer = _hunyuan_dit(
        s,
        HunyuanVideoFramepackTransformer3DModel,
        text_dim,
        pooled_dim,
        patch_size=2,
        has_image_proj=True,
        image_proj_dim=IMAGE_DIM,
        has_clean_x_embedder=True,
    )
    # 4x spatial compression and 4 channels: the 8 x 8 latent from 32 pixels, decoded twice a call
    vae = _hunyuan_vae(s, width=4, groups=2, spatial_ratio=4)
    image_encoder = _tiny_siglip(s)
    pipe = HunyuanVideoFramepackPipeline(
        **_hunyuan_components(transformer, vae),
        image_encoder=image_encoder,
        feature_extractor=_siglip_processor(),
    )
    kwargs = dict(
        # a (1, 3, H, W) tensor in [0, 1] with 8-bit values: one image per prompt
        image=_image_tensor(s, 32, 32),
        **_hunyuan_prompt_inputs(s, seq, text_dim, pooled_dim),
        height=32,
        width=32,
        num_frames=5,
        latent_window_size=2,
        guidance_scale=1.0,
        true_cfg_scale=4.0,
    )
    return pipe, kwargs
