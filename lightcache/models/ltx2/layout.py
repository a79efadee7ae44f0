"""LTX-2's video latent: packed tokens over the grid the call names (``num_frames``, ``height``,
``width``), as in LTX-Video (lightcache.models.ltx.layout).

LTX-2's pipelines also pass ``video_coords`` (the rotary positions of that grid, which the model
would compute itself from the grid and ``fps``). A trial call on a pooled grid drops them, so the
model computes the positions of the pooled grid at the same frame rate; the audio stream's inputs
are left as they are (the trial reads only the video prediction). A per-token ``timestep`` or
``sigma`` (B, S) is resampled to the pooled grid (nearest).
"""

from __future__ import annotations

import functools
import math

import torch

from lightcache.models.layout import resample_tokens
from lightcache.models.ltx.layout import LTXLayout, _GRID_ARGS


@functools.lru_cache(maxsize=None)
def _forward():
    from diffusers import LTX2VideoTransformer3DModel

    return LTX2VideoTransformer3DModel.forward


class LTX2Layout(LTXLayout):
    def forward_fn(self):
        return _forward()

    def resize_arguments(self, model, call, grid, pooled):
        call.set("video_coords", None)  # the model derives the pooled grid's positions (same fps)
        for name, size in zip(_GRID_ARGS, pooled):
            call.set(name, size)
        for name in ("timestep", "sigma"):
            t = call.get(name)
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == math.prod(grid):
                call.set(name, resample_tokens(t, grid, pooled))
