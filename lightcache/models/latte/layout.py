"""Latte's latent: (B, C, T, H, W) as is, one latent frame per video frame (an image VAE).

Latte adds a temporal positional embedding computed once for ``video_length`` frames (a buffer of
the model), so the model runs on that many frames only (or on one: an image, which skips it). A
pooled trial therefore keeps every frame and pools height and width alone: ``patch_multiple``
asks for a multiple of ``video_length`` frames, which for a video of ``video_length`` frames is
the video's own count; a one-frame call keeps its one frame. The spatial positions are sin-cos
tables the model recomputes for any size.

Latte's output carries a learned variance after its noise prediction (``out_channels`` = 2 x
``in_channels``; the pipeline keeps the first half), so the output has more channels than the
input. The input's part that the output refers to (EasyCache's x in out - x) is the latent followed
by zeros for those channels: EasyCache's reused output is then the current latent plus the cached
difference on the prediction channels, and the variance channels as last computed.
"""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout, pool_to


class LatteLayout(LatentLayout):
    def patch_multiple(self, model):
        p = int(model.config.patch_size)
        return (int(model.config.video_length), p, p)

    def trial_call(self, adapter, model, args, kwargs, pooled):
        frames = self.to_bcthw(adapter.sample(args, kwargs), args, kwargs).shape[2]
        if frames == 1 and pooled.dim() == 5 and pooled.shape[2] != 1:  # an image: no temporal embedding
            pooled = pool_to(pooled, (1, *pooled.shape[3:]))
        return super().trial_call(adapter, model, args, kwargs, pooled)

    def narrow_channels(self, x, n):
        c = self.channel_dim
        if n <= x.shape[c]:
            return super().narrow_channels(x, n)
        pad = list(x.shape)
        pad[c] = n - x.shape[c]
        return torch.cat([x, x.new_zeros(pad)], dim=c)  # the variance channels' part: zeros

    def latent_part(self, x, out):
        c = self.channel_dim
        if (x.dim() == out.dim() and out.shape[c] > x.shape[c]
                and all(x.shape[i] == out.shape[i] for i in range(x.dim()) if i != c)):
            return self.narrow_channels(x, out.shape[c])
        return super().latent_part(x, out)
