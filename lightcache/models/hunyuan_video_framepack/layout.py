"""Framepack's latent: the section's noisy frames (B, C, T, H, W), as HunyuanVideo's. A trial call
on a pooled latent also needs: the frame indices of the noisy frames (``indices_latents``, (T,) as
the pipeline passes them, or (B, T): the rotary positions) resampled to the pooled frames, each pooled frame taking the index of the
frame it starts at; and the clean history latents (``latents_clean``, ``latents_history_2x``,
``latents_history_4x``, each at the latent's height and width, with frame indices of their own)
pooled in space to the pooled height and width, their frames kept -- the model computes every
rotary table from the noisy latent's height and width, so the history must be on that grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightcache.models.hunyuan_video.layout import HunyuanVideoLayout
from lightcache.models.layout import pool_to

HISTORY_ARGS = ("latents_clean", "latents_history_2x", "latents_history_4x")


class FramepackLayout(HunyuanVideoLayout):
    def resize_arguments(self, model, call, grid, pooled):
        idx = call.get("indices_latents")
        if isinstance(idx, torch.Tensor) and idx.dim() in (1, 2) and idx.shape[-1] == grid[0] != pooled[0]:
            rows = idx.reshape(-1, 1, grid[0]).float()
            picked = F.interpolate(rows, size=pooled[0], mode="nearest").reshape(*idx.shape[:-1], pooled[0])
            call.set("indices_latents", picked.to(idx.dtype))
        for name in HISTORY_ARGS:
            h = call.get(name)
            if isinstance(h, torch.Tensor) and h.dim() == 5 and tuple(h.shape[3:]) == tuple(grid[1:]):
                call.set(name, pool_to(h, (h.shape[2], *pooled[1:])))
