"""Wan's latent: (B, C, T, H, W) as is (I2V concatenates the image condition on the channels).

Trial calls: the model derives its rotary positions from the latent's shape; Wan 2.2 TI2V
(``expand_timesteps``) passes one timestep per token, (B, L) over the full token grid, which is
resampled to the pooled token grid (nearest: conditioning tokens keep timestep 0).
"""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout, resample_tokens


class WanLayout(LatentLayout):
    def patch_multiple(self, model):
        return tuple(int(p) for p in model.config.patch_size)

    def resize_arguments(self, model, call, grid, pooled):
        t = call.get("timestep")
        if isinstance(t, torch.Tensor) and t.dim() == 2:
            p = self.patch_multiple(model)
            tokens = tuple(g // q for g, q in zip(grid, p))
            pooled_tokens = tuple(g // q for g, q in zip(pooled, p))
            call.set("timestep", resample_tokens(t, tokens, pooled_tokens))
