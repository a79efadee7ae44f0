"""Mochi (MochiPipeline): a tiny random-weight pipeline for the test matrix.

The pipeline hard-codes the VAE's scale factors (8 spatial, 6 temporal) and its 12 latent
channels, so the tiny VAE keeps Mochi's expansions (1, 2, 3) / (2, 2, 2) and 12 latent channels;
its GroupNorms have 32 groups, so its widths are 32.
"""

FAMILY = "mochi"


def build(s):
    from diffusers import AutoencoderKLMochi, MochiPipeline, MochiTransformer3DModel

    from tiny_pipelines import _flow_match_scheduler, _masked_text_embeds

    text_dim, seq = 16, 8
    s()
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        pooled_projection_dim=16,
        in_channels=12,
        text_embed_dim=text_dim,
        time_embed_dim=8,
        max_sequence_length=seq,
    )
    s()
    vae = AutoencoderKLMochi(
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        latent_channels=12,
        layers_per_block=(0, 0, 1, 1, 1),  # no resnets at the two finest levels: the cost is there
        add_attention_block=(False, False, False, False, False),
    )
    # Mochi's scheduler runs its sigmas inverted (the timesteps the transformer sees rise)
    scheduler = _flow_match_scheduler(invert_sigmas=True)
    pipe = MochiPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    kwargs = dict(
        **_masked_text_embeds(s, seq, text_dim, 6, 3),
        height=32,
        width=32,
        num_frames=13,
        guidance_scale=4.5,
        max_sequence_length=seq,
    )
    return pipe, kwargs


MATRIX = dict(frames=7)
