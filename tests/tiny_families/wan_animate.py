"""Wan Animate (WanAnimatePipeline, "animate" mode): Wan's tiny sizes, a tiny motion encoder
(16-pixel faces), a tiny CLIP vision encoder for the character image, one segment of 9 frames (3
latent frames + the character frame), the face adapter after block 0.

Not collected yet (the leading underscore): two changes outside this family are needed first (see
the family report): (1) the pipeline resets its scheduler (set_timesteps) after every segment,
the last one included, and lightcache/engine.py starts a new report there, so the call's report
comes back empty; (2) its blocks' class is named WanTransformerBlock, so Wan's chunk spec is found,
but that spec takes only transformer_wan.WanAttnProcessor, not this module's copy, so a chunk plan
splits nothing. With both changed the whole matrix passes (62 cells, measured). Rename it to
``wan_animate.py`` then.
"""

from tiny_pipelines import _clip_image_processor, _pil_image, _Seeder, _tiny_clip_vision, _wan_vae

FAMILY = "wan_animate"
FACE = 16  # the motion encoder's face size (pixels)


def build(s: _Seeder):
    from diffusers import UniPCMultistepScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel

    z_dim, text_dim, seq, clip_hidden = 4, 16, 16, 16
    vae = _wan_vae(s, z_dim)
    s()
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=2 * z_dim + 4,
        latent_channels=z_dim,
        out_channels=z_dim,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=clip_hidden,
        rope_max_seq_len=32,
        motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8},
        motion_encoder_size=FACE,
        motion_style_dim=16,
        motion_dim=4,
        motion_encoder_dim=16,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
        motion_encoder_batch_size=8,
    )
    image_encoder = _tiny_clip_vision(s, with_projection=False, hidden=clip_hidden)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = WanAnimatePipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=scheduler,
        image_processor=_clip_image_processor(32),
        image_encoder=image_encoder,
        transformer=transformer,
    )
    kwargs = dict(
        image=_pil_image(s, 32, 32),
        pose_video=[_pil_image(s, 32, 32) for _ in range(9)],
        face_video=[_pil_image(s, FACE, FACE) for _ in range(9)],
        prompt_embeds=s.randn(1, seq, text_dim),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        height=32,
        width=32,
        segment_frame_length=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


MATRIX = dict(
    cfg_calls=2,
    frames=None,
    notes="other frame count: the pipeline has no num_frames (its frames are segment_frame_length and the pose "
          "video's length)",
)
