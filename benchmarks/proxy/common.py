"""Shared pieces of the proxy training scripts: logging, seeding, LR schedule, EMA, data chunks."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # scripts run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from lightcache.proxy.data import generate_clips  # noqa: E402
from lightcache.proxy.load import WEIGHTS_DIR  # noqa: E402

_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class EMA:
    """Exponential moving average of a model's parameters; short runs benefit a lot from it."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))  # warm-up: early averages follow the model closely
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)


def object_weight(x: torch.Tensor, weight: float = 4.0, threshold: float = 0.15) -> torch.Tensor:
    """Per-pixel loss weight 1 + ``weight`` on the coloured object (chroma > ``threshold``; x in [-1, 1], channels
    on dim 1). Objects cover ~10% of a frame and carry the conditioning; unweighted, small autoencoders spend
    hundreds of steps on the background before reconstructing them at all."""
    chroma = (x - x.mean(dim=1, keepdim=True)).norm(dim=1, keepdim=True) / 2
    return 1.0 + weight * (chroma > threshold).float()


def recon_loss(y: torch.Tensor, x: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """Object-weighted MSE + L1, normalised by the mean weight."""
    w = object_weight(x, weight)
    d = y - x
    return (w * (d.pow(2) + d.abs())).mean() / w.mean()


def clip_chunks(n: int, seed: int, chunk: int = 256):
    """Yield (clips in [-1, 1] as (b, 3, F, H, W) float tensors, condition indices) in chunks, so the pixel
    data set never sits in memory whole. Chunk k uses seed*1000+k: deterministic and independent."""
    for k, start in enumerate(range(0, n, chunk)):
        clips, conds = generate_clips(min(chunk, n - start), seed=seed * 1000 + k)
        x = torch.from_numpy(clips).permute(0, 2, 1, 3, 4).mul(2).sub(1).contiguous()
        yield x, torch.from_numpy(conds)


def write_summary(path: Path, key: str, value: dict) -> None:
    """Merge ``value`` under ``key`` into a JSON summary (read by TRAINING.md)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def set_threads() -> None:
    torch.set_num_threads(int(os.environ.get("PROXY_THREADS", "2")))
