"""Mochi's latent: (B, C, T, H, W) as is; the model derives its rotary positions from the latent's
size, so a pooled trial needs only grids that its spatial patches divide."""

from __future__ import annotations

from lightcache.models.layout import LatentLayout


class MochiLayout(LatentLayout):
    def patch_multiple(self, model):
        p = int(model.config.patch_size)
        return (1, p, p)
