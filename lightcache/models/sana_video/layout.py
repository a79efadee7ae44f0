"""Sana-Video's latent: (B, C, T, H, W) as is; the model derives its rotary positions and the
blocks' (frames, height, width) from the latent's shape, so a trial call needs only the latent
replaced, at a multiple of the patch sizes."""

from __future__ import annotations

from lightcache.models.layout import LatentLayout


class SanaVideoLayout(LatentLayout):
    def patch_multiple(self, model):
        return tuple(int(p) for p in model.config.patch_size)
