"""Allegro's latent: (B, C, T, H, W) as is.

Trial calls: the pipeline passes ``image_rotary_emb`` computed for the latent grid (frequency
tables and per-token grid positions, from diffusers' ``get_3d_rotary_pos_embed_allegro``). The
trial recomputes them for the pooled grid the way AllegroPipeline does
(``_prepare_rotary_positional_embeddings``), so the trial is the model run on a smaller video.
Allegro's blocks squeeze dimension 1 of their normalised input (diffusers 0.42.1), so a sequence
of one token fails in them: a latent whose pooled grid has a single patch (a tiny video) cannot
run PreciseCache's trial.
"""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout


def rotary_tables(model, grid, device=None):
    """(freqs, positions) of an Allegro ``model`` for a latent grid (T, H, W), as AllegroPipeline
    computes them for a video of that latent size."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    cfg = model.config
    frames, height, width = grid
    gh, gw = height // cfg.patch_size, width // cfg.patch_size
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=cfg.attention_head_dim,
        crops_coords=((0, 0), (gh, gw)),
        grid_size=(gh, gw),
        temporal_size=frames,
        interpolation_scale=(cfg.interpolation_scale_t, cfg.interpolation_scale_h, cfg.interpolation_scale_w),
        device=device,
    )
    pos = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long())
    pos = pos.reshape(-1, 3).transpose(0, 1).reshape(3, 1, -1).contiguous()
    return (freqs_t, freqs_h, freqs_w), tuple(pos)


def _like(new, old):
    """``new`` (nested tuples of tensors) in the dtypes of the matching tensors of ``old``."""
    if isinstance(new, torch.Tensor):
        return new.to(old.dtype)
    return tuple(_like(n, o) for n, o in zip(new, old))


class AllegroLayout(LatentLayout):
    def patch_multiple(self, model):
        p = int(model.config.patch_size)
        return (int(model.config.patch_size_t), p, p)

    def resize_arguments(self, model, call, grid, pooled):
        rot = call.get("image_rotary_emb")
        if rot is not None:
            freqs, pos = rotary_tables(model, pooled, device=rot[1][0].device)
            call.set("image_rotary_emb", (_like(freqs, rot[0]), pos))
