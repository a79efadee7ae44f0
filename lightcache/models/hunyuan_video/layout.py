"""HunyuanVideo's latent: (B, C, T, H, W) as is; the model derives its rotary positions (and the
token-replace variant its first-frame token count) from the latent's shape, so a trial call needs
only the latent replaced, at a grid that is a multiple of the patch sizes.

Image-to-video, token replace (``image_condition_type="token_replace"``): the first latent frame
is the encoded image, clean, and the model modulates its tokens as at timestep 0. Pooling time
would blend it with the first noisy frame into a frame the model treats as clean, so the trial's
first frame is the call's own first frame pooled in space only (when the trial has more than one
frame; the rest of the trial latent is the pooled sample as given). The latent-concat variant
carries the image on extra channels, which pool like the latent's.
"""

from __future__ import annotations

from torch import Tensor

from lightcache.models.layout import LatentLayout, pool_to


class HunyuanVideoLayout(LatentLayout):
    def patch_multiple(self, model):
        cfg = model.config
        return (int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size))

    def trial_call(self, adapter, model, args, kwargs, pooled):
        first = None
        token_replace = getattr(model.config, "image_condition_type", None) == "token_replace"
        if token_replace and isinstance(pooled, Tensor) and pooled.dim() == 5 and pooled.shape[2] > 1:
            full = self.to_bcthw(adapter.sample(args, kwargs), args, kwargs)
            first = pool_to(full[:, :, :1], (1, *pooled.shape[3:]))
        args, kwargs = super().trial_call(adapter, model, args, kwargs, pooled)
        if first is not None:
            trial = self.to_bcthw(adapter.sample(args, kwargs)).clone()
            trial[:, :, :1] = first
            args, kwargs = adapter.replace_sample(args, kwargs, self.from_bcthw(trial))
        return args, kwargs
