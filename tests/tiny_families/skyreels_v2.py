"""SkyReels-V2 text-to-video (SkyReelsV2Pipeline): Wan's tiny sizes, in SkyReels-V2's classes."""

from tiny_pipelines import _Seeder, _text_embeds, _unipc_flow_scheduler, _wan_dit, _wan_vae

FAMILY = "skyreels_v2"


def transformer(s: _Seeder, z_dim: int, text_dim: int, **extra):
    """The tiny SkyReels-V2 DiT (Wan's layout)."""
    from diffusers import SkyReelsV2Transformer3DModel

    return _wan_dit(s, SkyReelsV2Transformer3DModel, z_dim, text_dim, **extra)


def build(s: _Seeder):
    from diffusers import SkyReelsV2Pipeline

    z_dim, text_dim, seq = 4, 16, 16
    vae = _wan_vae(s, z_dim)
    model = transformer(s, z_dim, text_dim)
    scheduler = _unipc_flow_scheduler(8.0)
    pipe = SkyReelsV2Pipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=model)
    kwargs = dict(**_text_embeds(s, seq, text_dim), height=32, width=32, num_frames=9, guidance_scale=5.0)
    return pipe, kwargs


# the pipeline calls the denoiser twice a step with guidance on (cond, then uncond), like Wan
MATRIX = dict(cfg_calls=2)
