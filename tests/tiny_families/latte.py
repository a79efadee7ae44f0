"""Latte (LattePipeline): a tiny random-weight pipeline for the test matrix.

Latte's temporal positional embedding is fixed to the model's ``video_length`` frames and the
pipeline names its frame count ``video_length`` (no ``num_frames`` argument), so the matrix's
second call with another frame count does not apply. The VAE is SD's image VAE (frame by frame).
"""

FAMILY = "latte"


def build(s):
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    from tiny_pipelines import _sd_vae, _text_embeds

    text_dim, seq, frames = 16, 8, 4
    s()
    transformer = LatteTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # Latte predicts a variance too: the pipeline keeps the first half
        num_layers=2,
        cross_attention_dim=16,
        attention_bias=True,
        sample_size=8,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=text_dim,
        video_length=frames,
    )
    vae = _sd_vae(s)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    kwargs = dict(
        **_text_embeds(s, seq, text_dim),
        negative_prompt=None,  # the default "" would be encoded (no text encoder here)
        height=32,
        width=32,
        video_length=frames,
        guidance_scale=7.5,
        decode_chunk_size=frames,
    )
    return pipe, kwargs


MATRIX = dict(frames=None, notes="Latte runs on its model's video_length frames only (a fixed temporal embedding), "
                                 "and its pipeline takes video_length, not num_frames")
