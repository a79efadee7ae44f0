"""Procedural video clips with a small conditioning vocabulary, for training and checking proxy models.

A clip shows one saturated shape (circle / square / triangle) in one of four colours moving in one of
four directions over a desaturated, varied background; the shape also rotates and its colour pulses
in brightness. The condition (shape, colour, motion) is encoded as a fixed ``prompt_embeds`` tensor so
pipelines can be driven without a text encoder. Everything is seeded: the same seed gives the same
clips and the same embeddings on every machine (numpy's PCG64 and torch's CPU generator are stable).

Clips are float32 arrays shaped (frames, 3, height, width) with values in [0, 1].
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
MOTIONS = ("left", "right", "up", "down")

# Saturated RGB values; backgrounds stay below BACKGROUND_MAX_CHROMA so the shape owns the colour.
PALETTE = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.12, 0.80, 0.18),
    "blue": (0.15, 0.28, 0.95),
    "yellow": (0.95, 0.85, 0.08),
}
# Image coordinates: x to the right, y downwards, so "up" is negative y.
MOTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

NUM_FRAMES = 9
SIZE = 32
BACKGROUND_MAX_CHROMA = 0.08
# Fixed seed of the vocabulary embeddings: training and evaluation must see the same vectors.
VOCAB_SEED = 20261122
EMBED_TOKENS = 4


@dataclass(frozen=True)
class Condition:
    shape: str
    colour: str
    motion: str

    @property
    def index(self) -> int:
        return (SHAPES.index(self.shape) * len(COLOURS) + COLOURS.index(self.colour)) * len(MOTIONS) + MOTIONS.index(
            self.motion
        )

    @classmethod
    def from_index(cls, i: int) -> "Condition":
        s, rest = divmod(int(i), len(COLOURS) * len(MOTIONS))
        c, m = divmod(rest, len(MOTIONS))
        return cls(SHAPES[s], COLOURS[c], MOTIONS[m])

    def __str__(self) -> str:
        return f"{self.colour} {self.shape} moving {self.motion}"


ALL_CONDITIONS = tuple(Condition(s, c, m) for s, c, m in itertools.product(SHAPES, COLOURS, MOTIONS))
NUM_CONDITIONS = len(ALL_CONDITIONS)


# ----------------------------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static, nearly grey background: base level, linear gradient, faint blobs and fine noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    grey = rng.uniform(0.12, 0.65)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) * rng.uniform(-0.3, 0.3)
    lum = grey + ramp
    for _ in range(rng.integers(0, 3)):  # soft grey blobs make backgrounds less uniform
        cx, cy, rad = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        lum = lum + rng.uniform(-0.15, 0.15) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rad**2))
    tint = rng.uniform(-BACKGROUND_MAX_CHROMA / 2, BACKGROUND_MAX_CHROMA / 2, size=3).astype(np.float32)
    bg = lum[None] + tint[:, None, None] + rng.normal(0, 0.01, size=(3, size, size))
    return np.clip(bg, 0.0, 1.0).astype(np.float32)


def _shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (positive inside), one pixel of soft edge."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    px, py = xx - cx, yy - cy
    if shape == "circle":
        d = radius - np.sqrt(px**2 + py**2)
    else:
        ca, sa = np.cos(angle), np.sin(angle)
        u, v = ca * px + sa * py, -sa * px + ca * py
        if shape == "square":
            d = 0.8 * radius - np.maximum(np.abs(u), np.abs(v))
        elif shape == "triangle":
            # Equilateral triangle with circumradius 1.2 * radius: inside when within the inradius of all edges.
            inr = 0.6 * radius
            normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
            d = np.min(np.stack([inr - (nx * u + ny * v) for nx, ny in normals]), axis=0)
        else:
            raise ValueError(f"unknown shape {shape!r}")
    return np.clip(d + 0.5, 0.0, 1.0)


def render_clip(
    cond: Condition, rng: np.random.Generator, num_frames: int = NUM_FRAMES, size: int = SIZE
) -> np.ndarray:
    """One clip for ``cond``; all nuisance factors (position, speed, size, rotation, pulse, background) from ``rng``."""
    radius = rng.uniform(0.14, 0.21) * size
    speed = rng.uniform(0.035, 0.065) * size  # pixels per frame
    dx, dy = MOTION_VECTORS[cond.motion]
    margin = radius + 1.0
    # Large and fast shapes: slow down just enough that the whole path fits inside the frame.
    speed = min(speed, (size - 2 * margin) / max(1, num_frames - 1))
    travel = speed * (num_frames - 1)
    # Start so the whole path stays inside the frame along the motion axis. Same draw as
    # rng.uniform(margin, size - margin - travel), which raises when rounding makes the span -1e-15.
    along = margin + max(0.0, (size - margin - travel) - margin) * rng.random()
    across = rng.uniform(margin, size - margin)
    if dx != 0:
        x0 = along if dx > 0 else size - along
        y0 = across
    else:
        y0 = along if dy > 0 else size - along
        x0 = across
    angle0, spin = rng.uniform(0, 2 * np.pi), rng.uniform(-0.35, 0.35)
    base = np.asarray(PALETTE[cond.colour], np.float32) + rng.uniform(-0.05, 0.05, size=3).astype(np.float32)
    phase, pulse = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)

    bg = _background(rng, size)
    frames = np.empty((num_frames, 3, size, size), np.float32)
    for t in range(num_frames):
        m = _shape_mask(cond.shape, x0 + dx * speed * t, y0 + dy * speed * t, radius, angle0 + spin * t, size)
        colour = np.clip(base * (0.85 + 0.15 * np.sin(phase + pulse * t)), 0.0, 1.0)
        frames[t] = bg * (1 - m)[None] + colour[:, None, None] * m[None]
    return frames


def generate_clips(
    n: int, seed: int, conditions: list[int] | None = None, num_frames: int = NUM_FRAMES, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clips (n, frames, 3, size, size) and their condition indices (n,), deterministic per ``seed``.

    ``conditions`` fixes the condition of each clip; otherwise conditions are drawn uniformly.
    """
    rng = np.random.default_rng(seed)
    if conditions is None:
        conds = rng.integers(0, NUM_CONDITIONS, size=n)
    else:
        conds = np.asarray(conditions, dtype=np.int64)
        if conds.shape != (n,):
            raise ValueError(f"conditions must have length n={n}, got shape {conds.shape}")
    clips = np.stack([render_clip(Condition.from_index(c), rng, num_frames, size) for c in conds])
    return clips, conds


# ----------------------------------------------------------------------------------------------
# Conditioning vocabulary -> prompt_embeds


def _attribute_table(dim: int, tokens: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(VOCAB_SEED + 7919 * dim + tokens)
    names = [f"shape:{s}" for s in SHAPES] + [f"colour:{c}" for c in COLOURS] + [f"motion:{m}" for m in MOTIONS]
    # Unit-RMS rows; the sum of three stays well separated for every condition pair.
    return {name: torch.randn(tokens, dim, generator=g) for name in names}


def prompt_embeds(
    conditions, dim: int, tokens: int = EMBED_TOKENS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(batch, tokens, dim)`` embeddings: the sum of fixed random embeddings of shape, colour and motion.

    ``conditions``: a Condition, an index, or a sequence of either.
    """
    if isinstance(conditions, (Condition, int, np.integer)):
        conditions = [conditions]
    table = _attribute_table(dim, tokens)
    out = []
    for c in conditions:
        c = c if isinstance(c, Condition) else Condition.from_index(int(c))
        out.append(table[f"shape:{c.shape}"] + table[f"colour:{c.colour}"] + table[f"motion:{c.motion}"])
    return torch.stack(out).to(dtype)


def null_embeds(batch: int, dim: int, tokens: int = EMBED_TOKENS, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The unconditional embedding (zeros) used for classifier-free guidance and condition dropout."""
    return torch.zeros(batch, tokens, dim, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Measuring clips (generated or rendered)


def _as_fhwc(clip) -> np.ndarray:
    """Accept (F, 3, H, W) or (F, H, W, 3), numpy or torch, values in [0, 1]; return (F, H, W, 3) float."""
    a = clip.detach().cpu().float().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip, np.float32)
    if a.ndim != 4:
        raise ValueError(f"expected a 4-D clip (frames, ...), got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[1] == 3:
        a = a.transpose(0, 2, 3, 1)
    if a.shape[-1] != 3:
        raise ValueError(f"clip has no RGB axis: shape {a.shape}")
    return a


def _chroma(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel chroma vector (colour minus its grey level) and its length (a saturation measure)."""
    c = a - a.mean(axis=-1, keepdims=True)
    return c, np.linalg.norm(c, axis=-1)


def dominant_colour(clip, threshold: float = 0.15) -> str | None:
    """Palette colour that the clip's saturated pixels are closest to (chroma direction), or None if grey."""
    a = _as_fhwc(clip)
    c, sat = _chroma(a)
    w = np.clip(sat - threshold, 0.0, None)
    if w.sum() < 1e-6:
        return None
    ref = np.stack([np.asarray(PALETTE[k]) - np.mean(PALETTE[k]) for k in COLOURS])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    votes = np.argmax(c @ ref.T, axis=-1)  # nearest palette hue per pixel
    totals = np.bincount(votes.ravel(), weights=w.ravel(), minlength=len(COLOURS))
    return COLOURS[int(np.argmax(totals))]


def object_track(clip, threshold: float = 0.15) -> np.ndarray:
    """(F, 2) saturation-weighted centroid (x, y) of the coloured object per frame (NaN where none)."""
    a = _as_fhwc(clip)
    _, sat = _chroma(a)
    w = np.clip(sat - threshold, 0.0, None)
    h, wd = w.shape[1:]
    yy, xx = np.mgrid[0:h, 0:wd].astype(np.float32) + 0.5
    tot = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (w * xx).sum(axis=(1, 2)) / tot
        cy = (w * yy).sum(axis=(1, 2)) / tot
    track = np.stack([cx, cy], axis=1)
    track[tot < 1e-6] = np.nan
    return track


def motion_direction(clip, threshold: float = 0.15, min_travel: float = 1.0) -> str | None:
    """Direction the coloured object moves in ("left"/"right"/"up"/"down"), from a least-squares fit of
    its centroid over time; None when the object is missing or moves less than ``min_travel`` pixels."""
    track = object_track(clip, threshold)
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < 2:
        return None
    t = np.arange(len(track), dtype=np.float64)[ok]
    vx, vy = (np.polyfit(t, track[ok, k], 1)[0] for k in (0, 1))
    if max(abs(vx), abs(vy)) * (len(track) - 1) < min_travel:
        return None
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"
