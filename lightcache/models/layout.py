"""Latent layouts: how a denoiser's latent input and output map to the canonical video.

The canonical layout is a video ``(B, C, T, H, W)``: batch, channels, latent frames, latent height,
latent width. Policies that look at the latent as a video (PreciseCache's low-frequency signal works
on ``(..., H, W)`` frames; its trial forward pools time and space; EasyCache takes the latent part
of an image-conditioned input along the channel dimension) ask the family's layout instead of
assuming one:

- :meth:`LatentLayout.to_bcthw` / :meth:`LatentLayout.from_bcthw`: the denoiser's tensor to and
  from the canonical video (a view where the layout allows);
- :attr:`LatentLayout.channel_dim`: the channel dimension of the denoiser's own tensor;
- :meth:`LatentLayout.trial_call`: the arguments of a denoiser call on a pooled canonical latent,
  every argument that depends on the latent's size made consistent with the pooled grid;
- :meth:`LatentLayout.trial_refusal`: why a model cannot run a pooled trial at all (checked when
  lightcache is enabled).

The layouts here are the generic ones: channels first (Wan, HunyuanVideo, EasyAnimate: the
denoiser's tensor is the canonical one) and frames first ``(B, F, C, H, W)`` (CogVideoX). A family
with a size-dependent argument (Wan 2.2's per-token timesteps, CogVideoX's precomputed rotary
tables, LTX-Video's packed tokens and grid arguments) subclasses one in its own folder
(``lightcache/models/<family>/layout.py``) and overrides :meth:`LatentLayout.resize_arguments`.

A pooled trial is the denoiser run on a smaller video, with the positions the model (or its
pipeline) would compute for a video of that size: the trial sees a lower-resolution version of the
same content, as the pooling makes it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

Grid = Tuple[int, int, int]  # (T, H, W) of a canonical video


def pool_to(x: Tensor, size: Grid) -> Tensor:
    """Average-pool a (B, C, T, H, W) video to ``size`` (adaptive bins, computed in fp32). The
    trial's latent and any other latent-grid argument of the trial call are pooled by this one
    function, so they stay aligned."""
    return F.adaptive_avg_pool3d(x.float(), tuple(size)).to(x.dtype)


def resample_tokens(values: Tensor, grid: Grid, pooled: Grid) -> Tensor:
    """Per-token values (B, T*H*W) over ``grid`` resampled to the ``pooled`` grid (B, T'*H'*W') by
    nearest neighbour: per-token timesteps are 0 on conditioning tokens and t elsewhere, and a
    pooled token takes the value of the token it starts at rather than a blend no token had."""
    b = values.shape[0]
    g = values.reshape(b, 1, *grid).float()
    return F.interpolate(g, size=tuple(pooled), mode="nearest").reshape(b, -1).to(values.dtype)


def latent_part(x: Tensor, out: Tensor, channel_dim: int = 1) -> Tensor:
    """The part of a denoiser input ``x`` that its output ``out`` refers to: image-conditioned
    inputs carry extra channels after the noisy latent's (Wan I2V on dim 1 of (B, C, T, H, W),
    CogVideoX I2V on dim 2 of (B, F, C, H, W))."""
    if x.shape == out.shape:
        return x
    d = channel_dim % max(x.dim(), 1)
    others_match = x.dim() == out.dim() and all(x.shape[i] == out.shape[i] for i in range(x.dim()) if i != d)
    if others_match and x.shape[d] > out.shape[d]:
        return x.narrow(d, 0, out.shape[d])
    raise ValueError(
        f"cannot relate denoiser input {tuple(x.shape)} to its output {tuple(out.shape)} "
        f"(channels on dim {channel_dim})"
    )


class CallArguments:
    """A denoiser call's arguments by parameter name, rebuilt the way they were passed (a
    positional argument stays positional, a keyword stays a keyword), so that hooks further down
    see the trial call shaped like the pipeline's own call."""

    def __init__(self, forward, args: Sequence, kwargs: dict):
        self.args = list(args)
        self.kwargs = dict(kwargs)
        self._positions = {name: i for i, name in enumerate(_positional_names(forward)[: len(self.args)])}

    def __contains__(self, name: str) -> bool:
        return name in self.kwargs or name in self._positions

    def get(self, name: str, default=None):
        if name in self.kwargs:
            return self.kwargs[name]
        if name in self._positions:
            return self.args[self._positions[name]]
        return default

    def set(self, name: str, value) -> None:
        if name in self._positions:
            self.args[self._positions[name]] = value
        else:
            self.kwargs[name] = value

    def call(self):
        return tuple(self.args), self.kwargs


@functools.lru_cache(maxsize=None)
def _positional_names(forward) -> Tuple[str, ...]:
    names = []
    for i, p in enumerate(inspect.signature(forward).parameters.values()):
        if i == 0 and p.name == "self":
            continue
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    return tuple(names)


class LatentLayout:
    """Channels-first video: the denoiser's latent is the canonical (B, C, T, H, W) itself (Wan,
    HunyuanVideo, EasyAnimate). Subclasses override the conversions and the trial's arguments.

    tensor_format: the layout's name in diffusers' FasterCache terms ("BCFHW", "BFCHW"), or None
        when the tensor has no frame axis (packed tokens).
    channel_dim: the channel dimension of the denoiser's own latent tensor.
    """

    tensor_format: Optional[str] = "BCFHW"
    channel_dim: int = 1

    # -- conversions -----------------------------------------------------------------------
    def to_bcthw(self, x: Tensor, call_args: Sequence = (), call_kwargs: Optional[dict] = None,
                 grid: Optional[Grid] = None) -> Tensor:
        """The canonical (B, C, T, H, W) view of ``x``: a latent input or output of the denoiser
        call made with ``call_args``/``call_kwargs``. ``grid`` = (T, H, W) of ``x`` when known
        (a trial's output); layouts whose tensor carries its grid ignore it."""
        return x

    def from_bcthw(self, video: Tensor) -> Tensor:
        """The denoiser's tensor for a canonical (B, C, T, H, W) ``video``."""
        return video

    def narrow_channels(self, x: Tensor, n: int) -> Tensor:
        """The first ``n`` channels of the denoiser's tensor ``x``."""
        return x.narrow(self.channel_dim, 0, n)

    def channels(self, x: Tensor) -> int:
        return x.shape[self.channel_dim]

    def latent_part(self, x: Tensor, out: Tensor) -> Tensor:
        return latent_part(x, out, self.channel_dim)

    # -- the pooled trial ------------------------------------------------------------------
    def patch_multiple(self, model) -> Grid:
        """Multiples that a pooled grid's (T, H, W) must be for ``model`` to accept it (its patch
        sizes)."""
        return (1, 1, 1)

    def trial_refusal(self, model) -> Optional[str]:
        """Why ``model`` cannot run on a pooled latent at all (e.g. positional embeddings learned
        for one size), or None."""
        return None

    def trial_call(self, adapter, model, args: Sequence, kwargs: dict, pooled: Tensor):
        """(args, kwargs) of ``model``'s call on the canonical ``pooled`` latent in place of this
        call's: the latent replaced (in the denoiser's layout), then :meth:`resize_arguments`."""
        if not isinstance(pooled, Tensor) or pooled.dim() != 5:
            shape = tuple(pooled.shape) if isinstance(pooled, Tensor) else type(pooled).__name__
            raise ValueError(f"{adapter.family}: a trial call needs a (B, C, T, H, W) latent, got {shape}")
        call = CallArguments(type(model).forward, args, kwargs)
        full = self.to_bcthw(adapter.sample(args, kwargs), args, kwargs)
        call.set(adapter.sample_arg, self.from_bcthw(pooled))
        self.resize_arguments(model, call, tuple(full.shape[2:]), tuple(pooled.shape[2:]))
        return call.call()

    def resize_arguments(self, model, call: CallArguments, grid: Grid, pooled: Grid) -> None:
        """Make the trial call's size-dependent arguments (other than the latent) match the
        ``pooled`` grid; ``grid`` is the original call's. Nothing to do here: these denoisers
        derive every size from the latent."""


class FramesFirstLayout(LatentLayout):
    """(B, F, C, H, W): frames before channels (CogVideoX)."""

    tensor_format = "BFCHW"
    channel_dim = 2

    def to_bcthw(self, x, call_args=(), call_kwargs=None, grid=None):
        return x.permute(0, 2, 1, 3, 4)

    def from_bcthw(self, video):
        return video.permute(0, 2, 1, 3, 4)


CHANNELS_FIRST = LatentLayout()
