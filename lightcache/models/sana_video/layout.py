"""Sana-Video's latent: (B, C, T, H, W) as is; the model derives its rotary positions and the
blocks' (frames, height, width) from the latent's shape, so a trial call needs only the latent
replaced, at a multiple of the patch sizes.

Image-to-video (``SanaImageToVideoPipeline``) passes one timestep per token, (B, 1, T, H, W) over
the patch grid (0 on the image's frame): a trial call's is resampled to the pooled patch grid
(nearest: the conditioning frame's tokens keep timestep 0).
"""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout, resample_tokens


class SanaVideoLayout(LatentLayout):
    def patch_multiple(self, model):
        return tuple(int(p) for p in model.config.patch_size)

    def resize_arguments(self, model, call, grid, pooled):
        t = call.get("timestep")
        if isinstance(t, torch.Tensor) and t.dim() == 5:
            p = self.patch_multiple(model)
            tokens = tuple(g // q for g, q in zip(grid, p))
            pooled_tokens = tuple(g // q for g, q in zip(pooled, p))
            b = t.shape[0]
            call.set("timestep", resample_tokens(t.reshape(b, -1), tokens, pooled_tokens).reshape(b, 1, *pooled_tokens))
