"""SkyReels-V2 diffusion forcing (SkyReelsV2DiffusionForcingPipeline): per-frame timesteps, one
scheduler copy per latent frame (the pipeline deep-copies its scheduler).

Not collected yet (the leading underscore): with lightcache's scheduler taps in lightcache/engine.py
as they are, the pipeline's deep copies of its tapped scheduler call the original scheduler's
methods (copy.deepcopy keeps functions as they are), so every per-frame step advances the one
original UniPC scheduler and the run fails (UniPC's ``assert self.this_order > 0``). Rename it to
``skyreels_v2_df.py`` once the engine gives copies their own (tapped) step: the whole matrix then
passes (68 cells, measured with that change applied).
"""

from tiny_families.skyreels_v2 import transformer
from tiny_pipelines import _Seeder, _wan_vae

FAMILY = "skyreels_v2_df"


def build(s: _Seeder):
    from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

    z_dim, text_dim, seq = 4, 16, 16
    vae = _wan_vae(s, z_dim)
    model = transformer(s, z_dim, text_dim)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=model
    )
    kwargs = dict(
        prompt=None,  # a required argument of this pipeline; the embeddings are used
        prompt_embeds=s.randn(1, seq, text_dim),
        negative_prompt_embeds=s.randn(1, seq, text_dim),
        height=32,
        width=32,
        num_frames=9,
        base_num_frames=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


MATRIX = dict(cfg_calls=2)
