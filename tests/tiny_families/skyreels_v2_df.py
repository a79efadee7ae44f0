"""SkyReels-V2 diffusion forcing (SkyReelsV2DiffusionForcingPipeline): per-frame timesteps, one
scheduler copy per latent frame (the pipeline deep-copies its scheduler).

The engine gives the pipeline's deep copies of its tapped scheduler their own methods (a copy
otherwise steps the original: UniPC's ``assert self.this_order > 0``), each ending the step once.
The matrix runs the synchronous short video (``ar_step=0``); asynchronous mode (``ar_step > 0``:
more loop iterations than scheduler timesteps) and long-video segments are
tests/test_skyreels_df_async.py's, on this pipeline with those call arguments.
"""

from tiny_families.skyreels_v2 import transformer
from tiny_pipelines import _Seeder, _text_embeds, _unipc_flow_scheduler, _wan_vae

FAMILY = "skyreels_v2_df"


def build(s: _Seeder):
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    z_dim, text_dim, seq = 4, 16, 16
    vae = _wan_vae(s, z_dim)
    model = transformer(s, z_dim, text_dim)
    scheduler = _unipc_flow_scheduler(8.0)
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=model
    )
    kwargs = dict(
        prompt=None,  # a required argument of this pipeline; the embeddings are used
        **_text_embeds(s, seq, text_dim),
        height=32,
        width=32,
        num_frames=9,
        base_num_frames=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


MATRIX = dict(cfg_calls=2)
