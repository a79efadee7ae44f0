"""Wan Animate's latent: (B, 2C + 4, T + 1, H, W) channels first (noise latents, mask and
reference latents on the channels; frame 0 the character image's). Its call also takes
latent-grid and frame-count inputs that must agree with the latent:

- ``pose_hidden_states`` (B, C, T, H, W): one frame fewer than the latent (added to frames 1..);
- ``face_pixel_values`` (B, 3, S, size, size): the face video in pixels, whose motion features
  (S frames -> (S - 1) // 4 + 1 after the face encoder's two stride-2 convs, plus one padding
  frame) must number the latent's frames (the face adapter splits the tokens by them).

Trial calls: the pose latents pooled to (T' - 1, H', W') by the latent's pooling (pool_to), the
face video resampled in time to 4 (T' - 2) + 1 frames (nearest: frames of the face video itself),
so a pooled latent of T' >= 2 frames gets T' motion frames; ``patch_multiple`` asks for even
pooled heights and widths (the patch) as Wan's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightcache.models.layout import pool_to
from lightcache.models.wan.layout import WanLayout


class WanAnimateLayout(WanLayout):
    def resize_arguments(self, model, call, grid, pooled):
        super().resize_arguments(model, call, grid, pooled)
        frames = pooled[0] // int(model.config.patch_size[0])
        if frames < 2:
            raise ValueError(
                f"Wan Animate: a trial latent needs at least 2 latent frames (the character frame and one video "
                f"frame), got a pooled grid of {tuple(pooled)}"
            )
        pose = call.get("pose_hidden_states")
        if isinstance(pose, torch.Tensor):
            call.set("pose_hidden_states", pool_to(pose, (pooled[0] - 1, *pooled[1:])))
        face = call.get("face_pixel_values")
        if isinstance(face, torch.Tensor):
            s = 4 * (frames - 2) + 1
            idx = F.interpolate(
                torch.arange(face.shape[2], dtype=torch.float32).view(1, 1, -1), size=s, mode="nearest"
            ).view(-1).long()
            call.set("face_pixel_values", face.index_select(2, idx.to(face.device)))
