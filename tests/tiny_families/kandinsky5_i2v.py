"""Kandinsky 5 image-to-video (``Kandinsky5I2VPipeline``): a tiny-pipeline variant of the
``kandinsky5`` registry family (same denoiser class). The encoded image is the latent's first
frame, kept as is at every step (the scheduler steps frames 1:); this transformer is
visual-conditioned (``visual_cond=True``: the condition latent and a first-frame mask are
concatenated on the channels, so EasyCache takes the input's latent part on the last dimension).

Offline: as ``kandinsky5`` (precomputed Qwen/CLIP embeddings); the image goes through the VAE.
"""

import torch

from tiny_families import kandinsky5

FAMILY = "kandinsky5_i2v"

# the pipeline renormalises the first 4 latent frames by the statistics of the next ones after
# denoising (NaN with fewer than 5 latent frames): 17 frames, and 21 for the second-size variant
MATRIX = dict(kandinsky5.MATRIX, frames=21)


def build(s):
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline

    from tiny_pipelines import _hunyuan_vae

    transformer = kandinsky5.tiny_transformer(s, visual_cond=True)
    vae = _hunyuan_vae(s)
    pipe = Kandinsky5I2VPipeline(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None,
                                 text_encoder_2=None, tokenizer_2=None,
                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    kwargs = dict(kandinsky5.call_kwargs(s), num_frames=17)
    # a (1, 3, H, W) tensor in [0, 1] with 8-bit values: one image per prompt
    kwargs["image"] = (s.rand(32, 32, 3) * 255).to(torch.uint8).permute(2, 0, 1)[None].float() / 255
    return pipe, kwargs
