"""SkyReels-V2 text-to-video (SkyReelsV2Pipeline): Wan's tiny sizes, in SkyReels-V2's classes."""

from tiny_pipelines import _Seeder, _wan_vae

FAMILY = "skyreels_v2"


def transformer(s: _Seeder, z_dim: int, text_dim: int, **extra):
    from diffusers import SkyReelsV2Transformer3DModel

    s()
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        **extra,
    )


def build(s: _Seeder):
    from diffusers import SkyReelsV2Pipeline, UniPCMultistepScheduler

    z_dim, text_dim, seq = 4, 16, 16
    vae = _wan_vae(s, z_dim)
    model = transformer(s, z_dim, text_dim)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    pipe = SkyReelsV2Pipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=model)
    kwargs = dict(
        prompt_embeds=s.randn(1, seq, text_dim),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


# the pipeline calls the denoiser twice a step with guidance on (cond, then uncond), like Wan
MATRIX = dict(cfg_calls=2)
