"""Cosmos's adapter: the call's timestep is its noisiest frame's."""

from __future__ import annotations

import torch

from lightcache.models.adapter import ModelAdapter


class CosmosAdapter(ModelAdapter):
    """Video-to-world calls pass per-frame timesteps (B, 1, T, 1, 1): the conditioning frames keep
    a fixed small one, the generated frames the step's. The call's timestep (which tells a bare
    denoiser's steps and runs apart) is the largest: the generated frames'."""

    def timestep_value(self, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(t, torch.Tensor) and t.dim() == 5:
            return float(t.max())
        return super().timestep_value(args, kwargs)
