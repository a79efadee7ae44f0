"""SkyReels-V2's latent: (B, C, T, H, W) as is (image-to-video concatenates the condition on the
channels); the model derives its rotary positions and causal block mask from the latent's shape.

Trial calls: diffusion forcing (``enable_diffusion_forcing=True``) passes one timestep per latent
frame, (B, T // p_t), resampled to the pooled frames (nearest: a pooled frame takes the timestep
of the frame it starts at, so finished/conditioning frames keep theirs). With
``num_frame_per_block > 1`` (causal blocks of frames) the pooled frame count must stay a multiple
of the block size: ``patch_multiple`` asks for it.
"""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout, resample_tokens


class SkyReelsV2Layout(LatentLayout):
    def patch_multiple(self, model):
        p_t, p_h, p_w = (int(p) for p in model.config.patch_size)
        return (p_t * max(1, int(model.config.num_frame_per_block)), p_h, p_w)

    def resize_arguments(self, model, call, grid, pooled):
        t = call.get("timestep")
        if isinstance(t, torch.Tensor) and t.dim() == 2:  # diffusion forcing: per latent frame
            p_t = int(model.config.patch_size[0])
            call.set("timestep", resample_tokens(t, (grid[0] // p_t, 1, 1), (pooled[0] // p_t, 1, 1)))
