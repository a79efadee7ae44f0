"""Allegro (AllegroPipeline): a tiny random-weight pipeline for the test matrix.

AutoencoderKLAllegro decodes only through its own tiling (3-D tiles blended over their overlaps)
and only one video per decoder call, so the tiny VAE has tiling and batch slicing on, as Allegro's
pipeline is run; its tile size (fixed at 24 frames x ``sample_size`` pixels with 120 / 80-pixel
overlaps when built) is set to 8 frames x 16 x 16 pixels with 4-frame / 8-pixel overlaps, so the
tiny 12-frame video has two temporal tiles. Its GroupNorms need widths of 32; three levels
(spatial ratio 4, temporal 4) and one resnet per level keep its decode cheap.
"""

FAMILY = "allegro"


def build(s):
    from diffusers import (
        AllegroPipeline,
        AllegroTransformer3DModel,
        AutoencoderKLAllegro,
        EulerAncestralDiscreteScheduler,
    )

    from tiny_pipelines import _masked_text_embeds

    text_dim, seq = 16, 8
    s()
    transformer = AllegroTransformer3DModel(
        patch_size=1,  # 2 would leave PreciseCache's pooled trial one token, which Allegro's blocks cannot take
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=12,  # Allegro's 3-D rotary embedding splits the head dim in three even parts
        in_channels=4,
        out_channels=4,
        num_layers=2,
        cross_attention_dim=24,
        sample_height=4,
        sample_width=4,
        sample_frames=4,
        caption_channels=text_dim,
    )
    s()
    vae = AutoencoderKLAllegro(
        down_block_types=("AllegroDownBlock3D",) * 3,
        up_block_types=("AllegroUpBlock3D",) * 3,
        block_out_channels=(32, 32, 32),
        temporal_downsample_blocks=(True, True, False),
        temporal_upsample_blocks=(True, True, False),
        latent_channels=4,
        layers_per_block=0,  # one resnet per up block
        sample_size=16,
    )
    vae.enable_tiling()
    vae.enable_slicing()
    vae.kernel, vae.stride = (8, 16, 16), (4, 8, 8)
    scheduler = EulerAncestralDiscreteScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    pipe = AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    kwargs = dict(
        **_masked_text_embeds(s, seq, text_dim, 6, 3),
        negative_prompt=None,  # the default "" would be encoded (no text encoder here)
        height=16,
        width=16,
        num_frames=12,
        guidance_scale=7.5,
        max_sequence_length=seq,
    )
    return pipe, kwargs


MATRIX = dict(frames=8)
