"""Fidelity of a generated video against the uncached reference (docs/design.md §7).

Videos are float tensors in [0, 1] shaped (..., F, C, H, W) (diffusers' ``output_type="pt"``);
leading dimensions are a batch.

* :func:`psnr`: over the whole clip (MSE pooled over every pixel of every frame), in dB; ``inf``
  for identical videos.
* :func:`ssim`: per frame with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data
  range 1, "valid" filtering (no padding), channels averaged; the per-frame values averaged.
* :func:`flicker`: mean |Δ_t v − Δ_t r| over consecutive frames (Δ_t x = x_t − x_{t−1}): how much
  the method's frame-to-frame change departs from the reference's (0 when identical).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(video: Tensor, ref: Tensor) -> None:
    for name, t in (("video", video), ("ref", ref)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor in [0, 1]")
        if t.dim() < 4:
            raise ValueError(f"{name} must be (..., frames, channels, height, width), got shape {tuple(t.shape)}")
    if video.shape != ref.shape:
        raise ValueError(f"video and ref must have the same shape, got {tuple(video.shape)} and {tuple(ref.shape)}")


def psnr(video: Tensor, ref: Tensor) -> float:
    _check(video, ref)
    mse = (video.double() - ref.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(video: Tensor, ref: Tensor) -> float:
    _check(video, ref)
    h, w = video.shape[-2:]
    if h < 11 or w < 11:
        raise ValueError(f"ssim needs frames of at least 11×11 pixels, got {h}×{w}")
    c = video.shape[-3]
    x = video.double().reshape(-1, c, h, w)
    y = ref.double().reshape(-1, c, h, w)
    win = _gaussian_window().to(x.device).expand(c, 1, 11, 11)

    def filt(t):
        return F.conv2d(t, win, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per_frame = s.mean(dim=(1, 2, 3))
    return per_frame.mean().item()


def flicker(video: Tensor, ref: Tensor) -> float:
    _check(video, ref)
    if video.shape[-4] < 2:
        return 0.0
    dv = video.double().diff(dim=-4)
    dr = ref.double().diff(dim=-4)
    return (dv - dr).abs().mean().item()
