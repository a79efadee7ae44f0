"""HunyuanVideo 1.5's latent: (B, C, T, H, W), the condition latent and its mask concatenated on
the channels (EasyCache's latent part is the first C channels); the model derives its rotary
positions from the latent's shape, so a trial call needs only the latent replaced, at a multiple
of the patch sizes."""

from __future__ import annotations

from lightcache.models.layout import LatentLayout


class HunyuanVideo15Layout(LatentLayout):
    def patch_multiple(self, model):
        cfg = model.config
        return (int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size))
