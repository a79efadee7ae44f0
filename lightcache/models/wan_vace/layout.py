"""Wan VACE's latent: (B, C, T, H, W) as Wan's, with a second latent-grid input: the control
latents ``control_hidden_states`` (B, C_control, T_c, H, W), patch-embedded and zero-padded to the
latent's token count by the model.

Trial calls: Wan's (per-token timesteps resampled), and the control latents pooled to the pooled
grid by the same pooling as the latent (lightcache.models.layout.pool_to), so the trial's control
tokens stay aligned with its latent tokens; control latents with fewer frames than the latent
(the model pads their tokens) keep their share of the pooled frames.
"""

from __future__ import annotations

import torch

from lightcache.models.layout import pool_to
from lightcache.models.wan.layout import WanLayout


class WanVACELayout(WanLayout):
    def resize_arguments(self, model, call, grid, pooled):
        super().resize_arguments(model, call, grid, pooled)
        control = call.get("control_hidden_states")
        if isinstance(control, torch.Tensor):
            if control.dim() != 5 or tuple(control.shape[3:]) != tuple(grid[1:]):
                raise ValueError(
                    f"Wan VACE: control_hidden_states of shape {tuple(control.shape)} do not cover the latent grid "
                    f"{tuple(grid)} (a (B, C, T, H, W) tensor of the latent's height and width was expected)"
                )
            frames = pooled[0] if control.shape[2] >= grid[0] else max(1, round(control.shape[2] * pooled[0] / grid[0]))
            call.set("control_hidden_states", pool_to(control, (frames, *pooled[1:])))
