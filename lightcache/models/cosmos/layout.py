"""Cosmos's latent: (B, C, T, H, W) as is.

Trial calls: video-to-world passes, beside the latent, a conditioning mask over its grid
(``condition_mask``, (B, 1, T, H, W), 1 on the conditioning frames; concatenated on the channels
inside the model) and per-frame timesteps (``timestep`` (B, 1, T, 1, 1)); both are resampled to
the pooled grid by nearest neighbour, so a pooled frame keeps the mask and timestep of the frame
it starts at (a blend would give values no frame had). ``padding_mask`` is in pixels and resized
by the model itself; rotary and learned positions are computed for any size up to the model's
``max_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightcache.models.layout import LatentLayout


def _nearest(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x.float(), size=tuple(size), mode="nearest").to(x.dtype)


class CosmosLayout(LatentLayout):
    def patch_multiple(self, model):
        return tuple(int(p) for p in model.config.patch_size)

    def resize_arguments(self, model, call, grid, pooled):
        mask = call.get("condition_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 5:
            call.set("condition_mask", _nearest(mask, pooled))
        t = call.get("timestep")
        if isinstance(t, torch.Tensor) and t.dim() == 5:
            call.set("timestep", _nearest(t, (pooled[0], 1, 1)))
