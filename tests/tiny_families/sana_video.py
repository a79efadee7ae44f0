"""Sana-Video text-to-video (``SanaVideoPipeline``) with Wan's VAE (one of the VAEs the pipeline
takes).

Offline: the Gemma text encoder runs only without ``prompt_embeds`` (None here); resolution
binning is off (it would resize to the model's trained aspect ratios). The pipeline's frame count
argument is ``frames``, not ``num_frames``: the matrix's second-call variant (which sets
``num_frames``) is skipped.

``MemoryPlan(chunk_size=...)`` has nothing to split in these blocks: the self-attention is linear
(no score matrix), the feed-forward is a convolution (not a diffusers FeedForward), and the
cross-attention's SDPA runs on a fused kernel: the matrix has no chunk cell for it (chunk=None).
"""

from tiny_pipelines import _flow_match_scheduler, _masked_text_embeds, _wan_vae

FAMILY = "sana_video"

MATRIX = dict(frames=None, chunk=None,
              notes="the frame count argument is `frames`: no second-size variant; nothing to chunk (see below)")


def build(s):
    from diffusers import SanaVideoPipeline, SanaVideoTransformer3DModel

    text_dim, seq, z = 16, 16, 4
    vae = _wan_vae(s, z)
    s()
    transformer = SanaVideoTransformer3DModel(
        in_channels=z,
        out_channels=z,
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=12,
        cross_attention_dim=24,
        caption_channels=text_dim,
        mlp_ratio=2.0,
        sample_size=4,
        patch_size=(1, 2, 2),
        rope_max_seq_len=32,
    )
    pipe = SanaVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                             scheduler=_flow_match_scheduler(shift=3.0))
    kwargs = dict(
        **_masked_text_embeds(s, seq, text_dim, 12, 6),
        negative_prompt=None,  # its default "" would conflict with negative_prompt_embeds
        height=32,
        width=32,
        frames=9,
        guidance_scale=5.0,
        use_resolution_binning=False,
        max_sequence_length=seq,
    )
    return pipe, kwargs
