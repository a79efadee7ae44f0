"""EasyAnimate's latent: (B, C, T, H, W) as is. Its inpaint/control variants take further latents
of the same grid (``inpaint_latents``, ``control_latents``, concatenated on the channels inside the
model): a trial call pools them to the trial's grid with the same pooling as the latent."""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout, pool_to

_GRID_LATENTS = ("inpaint_latents", "control_latents")


class EasyAnimateLayout(LatentLayout):
    def patch_multiple(self, model):
        p = int(model.config.patch_size)
        return (1, p, p)

    def resize_arguments(self, model, call, grid, pooled):
        for name in _GRID_LATENTS:
            extra = call.get(name)
            if isinstance(extra, torch.Tensor):
                call.set(name, pool_to(extra, pooled))
