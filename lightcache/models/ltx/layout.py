"""LTX-Video's latent: packed tokens (B, S, C) over a grid the call names in its ``num_frames``,
``height`` and ``width`` arguments (S = num_frames * height * width; LTX-Video's patch sizes are 1,
so a token is a latent pixel -- with larger patches the canonical video here is the token grid,
each token's channels its patch's).

Trial calls: ``num_frames``/``height``/``width`` become the pooled grid (the model's rotary
positions are computed from them, with ``rope_interpolation_scale`` unchanged: the positions of a
smaller video of the same frame rate and pixel spacing); a per-token timestep (B, S) -- the
image-to-video pipeline's, 0 on conditioning tokens -- is resampled to the pooled grid (nearest).
Calls that give ``video_coords`` instead of a grid (LTXConditionPipeline, whose sequence also
carries conditioning tokens outside the grid) have no frame layout to read: refused with a clear
error.
"""

from __future__ import annotations

import functools
import math

import torch

from lightcache.models.layout import CallArguments, LatentLayout, resample_tokens

_GRID_ARGS = ("num_frames", "height", "width")


@functools.lru_cache(maxsize=None)
def _forward():
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel.forward


class LTXLayout(LatentLayout):
    tensor_format = None  # no frame axis: FasterCache cannot split it
    channel_dim = 2

    def forward_fn(self):
        """The denoiser's forward whose signature names the call's arguments."""
        return _forward()

    def grid(self, call_args, call_kwargs):
        """(T, H, W) of the call's token grid, from its num_frames/height/width arguments."""
        call = CallArguments(self.forward_fn(), call_args, call_kwargs or {})
        values = [call.get(name) for name in _GRID_ARGS]
        if any(v is None for v in values):
            how = "passes video_coords" if call.get("video_coords") is not None else "does not pass them"
            raise ValueError(
                "LTX-Video: reading the packed latent as frames needs the denoiser call's num_frames, height and "
                f"width (its token grid); this call {how} (LTXConditionPipeline's sequence is not a grid), so "
                "PreciseCache cannot form its signal here"
            )
        return tuple(int(v) for v in values)

    def to_bcthw(self, x, call_args=(), call_kwargs=None, grid=None):
        grid = tuple(grid) if grid is not None else self.grid(call_args, call_kwargs)
        if x.dim() != 3 or x.shape[1] != math.prod(grid):
            raise ValueError(
                f"LTX-Video: a packed latent (B, S, C) with S = num_frames * height * width = {math.prod(grid)} "
                f"tokens was expected, got shape {tuple(x.shape)}"
            )
        return x.transpose(1, 2).unflatten(2, grid)

    def from_bcthw(self, video):
        return video.flatten(2).transpose(1, 2)

    def resize_arguments(self, model, call, grid, pooled):
        if call.get("video_coords") is not None:  # a grid was read, yet coordinates are given too
            raise ValueError("LTX-Video: a trial call cannot pool the call's video_coords; pass num_frames/height/width")
        for name, size in zip(_GRID_ARGS, pooled):
            call.set(name, size)
        t = call.get("timestep")
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == math.prod(grid):
            call.set("timestep", resample_tokens(t, grid, pooled))
