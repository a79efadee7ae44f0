"""ConsisID's latent: (B, F, C, H, W), frames before channels, the image latents concatenated on
the channels (dim 2), as CogVideoX image-to-video.

Trial calls: the pipeline passes ``image_rotary_emb`` precomputed for the full latent grid; the
trial recomputes it for the pooled grid the way ConsisIDPipeline does
(``_prepare_rotary_positional_embeddings``: CogVideoX 1.0's tables, positions fitted into the
model's base grid). The face inputs (``id_cond``, ``id_vit_hidden``) do not depend on the latent's
size. Models with positional embeddings learned for one size are refused (as CogVideoX's).
"""

from __future__ import annotations

from lightcache.models.cogvideox.layout import CogVideoXLayout


def rotary_tables(model, grid, device=None):
    """(cos, sin) rotary tables of a ConsisID ``model`` for a latent grid (T, H, W), as
    ConsisIDPipeline computes them for a video of that latent size."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.consisid.pipeline_consisid import get_resize_crop_region_for_grid

    cfg = model.config
    p = cfg.patch_size
    frames, height, width = grid
    grid_hw = (height // p, width // p)
    crops = get_resize_crop_region_for_grid(grid_hw, cfg.sample_width // p, cfg.sample_height // p)
    return get_3d_rotary_pos_embed(
        embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=grid_hw, temporal_size=frames, device=device
    )


class ConsisIDLayout(CogVideoXLayout):
    def patch_multiple(self, model):
        p = int(model.config.patch_size)
        return (1, p, p)

    def resize_arguments(self, model, call, grid, pooled):
        rot = call.get("image_rotary_emb")
        if rot is not None:
            cos, sin = rotary_tables(model, pooled, device=rot[0].device)
            call.set("image_rotary_emb", (cos.to(rot[0].dtype), sin.to(rot[1].dtype)))
