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

from tiny_pipelines import _hunyuan_components, _hunyuan_dit, _hunyuan_prompt_inputs, _hunyuan_vae, _image_tensor

FAMILY = "hunyuan_video_i2v"

# like hunyuan_video: the VAE's decode slices are not its one-call decode; real CFG is two calls;
# 48 video + 16 text tokens a call: 8 rows a chunk make >= 4 pieces (2 rows would make ~30, slow)
MATRIX = dict(inexact_decode=True, no_cfg={"true_cfg_scale": 1.0}, cfg_calls=2, chunk=8)


def build(s, image_condition_type="token_replace"):
    from diffusers import HunyuanVideoImageToVideoPipeline, HunyuanVideoTransformer3DModel

    text_dim, pooled_dim, seq, z = 16, 8, 16, 4
    transformer = _hunyuan_dit(
        s,
        HunyuanVideoTransformer3DModel,
        text_dim,
        pooled_dim,
        in_channels=z if image_condition_type == "token_replace" else 2 * z + 1,
        out_channels=z,
        image_condition_type=image_condition_type,
    )
    vae = _hunyuan_vae(s)
    pipe = HunyuanVideoImageToVideoPipeline(**_hunyuan_components(transformer, vae), image_processor=None)
    # guidance-distilled like HunyuanVideo: two-pass CFG runs with true_cfg_scale > 1 and negative
    # embeddings
    kwargs = dict(
        # the image as a (1, 3, H, W) tensor in [0, 1] (8-bit values, like a decoded picture): a
        # tensor is a batch of images, one per prompt (the batch-2 variant stacks two)
        image=_image_tensor(s, 32, 32),
        **_hunyuan_prompt_inputs(s, seq, text_dim, pooled_dim),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=1.0,
        true_cfg_scale=4.0,
    )
    return pipe, kwargs
