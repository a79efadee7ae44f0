"""Wan Animate (WanAnimatePipeline, "animate" mode): Wan's tiny sizes, a tiny motion encoder
(16-pixel faces), a tiny CLIP vision encoder for the character image, one segment of 9 frames (3
latent frames + the character frame), the face adapter after block 0.

The pipeline resets its scheduler (set_timesteps) after every segment: the engine keeps one report
per pipeline call across those runs. Its blocks' class is named WanTransformerBlock but its
attention processor is its own module's copy of Wan's: Wan's chunk spec takes it too
(``WanChunking.also_processors``).
"""

from tiny_pipelines import (
    _clip_image_processor,
    _pil_image,
    _Seeder,
    _text_embeds,
    _tiny_clip_vision,
    _unipc_flow_scheduler,
    _wan_dit,
    _wan_vae,
)

FAMILY = "wan_animate"
FACE = 16  # the motion encoder's face size (pixels)


def build(s: _Seeder):
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    z_dim, text_dim, seq, clip_hidden = 4, 16, 16, 16
    vae = _wan_vae(s, z_dim)
    transformer = _wan_dit(
        s,
        WanAnimateTransformer3DModel,
        z_dim,
        text_dim,
        in_channels=2 * z_dim + 4,
        latent_channels=z_dim,
        image_dim=clip_hidden,
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
    scheduler = _unipc_flow_scheduler(5.0)
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
        **_text_embeds(s, seq, text_dim),
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
