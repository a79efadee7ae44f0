"""CogVideoX's latent: (B, F, C, H, W), frames before channels (I2V concatenates the image latents
on the channels, dim 2).

Trial calls: the pipeline passes ``image_rotary_emb`` precomputed for the full latent grid (models
with ``use_rotary_positional_embeddings``). The trial recomputes the tables for the pooled grid
from the transformer's config, the way diffusers' CogVideoX pipelines compute them
(``_prepare_rotary_positional_embeddings``, with diffusers' ``get_3d_rotary_pos_embed``): the
trial is then the model run on a smaller video, as for the families whose models derive their
positions from the latent. (Subsampling the full tables instead would give the pooled tokens the
positions of a strided grid of the full video, which no pipeline call ever has.) The sin-cos
positional embeddings of the models without rotary tables are recomputed by the model itself for
any size; embeddings learned for one size (``use_learned_positional_embeddings``, CogVideoX-5b-I2V)
cannot be pooled: :meth:`CogVideoXLayout.trial_refusal`.
"""

from __future__ import annotations

from typing import Tuple

import torch

from lightcache.models.layout import FramesFirstLayout


def rotary_tables(model, grid: Tuple[int, int, int], device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) rotary tables of a CogVideoX ``model`` for a latent grid (T, H, W), as the
    CogVideoX pipelines compute them for a video of that latent size."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    cfg = model.config
    p, p_t = cfg.patch_size, cfg.patch_size_t
    frames, height, width = grid
    grid_hw = (height // p, width // p)
    base_height, base_width = cfg.sample_height // p, cfg.sample_width // p
    if p_t is None:  # CogVideoX 1.0: positions fitted into the base grid, centred
        crops = get_resize_crop_region_for_grid(grid_hw, base_width, base_height)
        return get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=grid_hw, temporal_size=frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(  # CogVideoX 1.5: a slice of the base grid
        embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=grid_hw,
        temporal_size=(frames + p_t - 1) // p_t, grid_type="slice", max_size=(base_height, base_width),
        device=device,
    )


class CogVideoXLayout(FramesFirstLayout):
    def patch_multiple(self, model):
        cfg = model.config
        p = int(cfg.patch_size)
        return (int(cfg.patch_size_t or 1), p, p)

    def trial_refusal(self, model):
        cfg = model.config
        if getattr(cfg, "use_learned_positional_embeddings", False):
            return (
                f"{type(model).__name__} has positional embeddings learned for {cfg.sample_height}x"
                f"{cfg.sample_width} latents (use_learned_positional_embeddings=True, as in CogVideoX-5b-I2V) and "
                "accepts no other size, so it cannot run the trial forward on a pooled latent"
            )
        return None

    def resize_arguments(self, model, call, grid, pooled):
        rot = call.get("image_rotary_emb")
        if rot is not None:
            cos, sin = rotary_tables(model, pooled, device=rot[0].device)
            call.set("image_rotary_emb", (cos.to(rot[0].dtype), sin.to(rot[1].dtype)))
