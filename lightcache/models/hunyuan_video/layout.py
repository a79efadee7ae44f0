"""HunyuanVideo's latent: (B, C, T, H, W) as is; the model derives its rotary positions (and the
token-replace variant its first-frame token count) from the latent's shape, so a trial call needs
only the latent replaced, at a grid that is a multiple of the patch sizes."""

from __future__ import annotations

from lightcache.models.layout import LatentLayout


class HunyuanVideoLayout(LatentLayout):
    def patch_multiple(self, model):
        cfg = model.config
        return (int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size))
