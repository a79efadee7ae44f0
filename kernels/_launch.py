"""Launch helpers shared by the elementwise/reduction Triton kernels (private)."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor


def same_dense_layout(*ts: Tensor) -> bool:
    """True when all tensors share strides and cover their storage span without gaps or overlap,
    so element i of one flat memory walk pairs with element i of the others."""
    st = ts[0].stride()
    if any(t.stride() != st for t in ts[1:]):
        return False
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(st, ts[0].shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def contiguous(*ts: Tensor) -> tuple[Tensor, ...]:
    """Outputs are contiguous (the ops' fakes say so), so inputs are walked in contiguous order:
    a non-contiguous input costs one copy."""
    return tuple(t if t.is_contiguous() else t.contiguous() for t in ts)


def interpreted(t: Tensor) -> bool:
    """CPU tensors only reach a Triton kernel under TRITON_INTERPRET=1 (tests)."""
    return t.device.type != "cuda"


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def on_device(t: Tensor):
    """Launch on t's GPU even when another one is current (Triton launches on the current device)."""
    if t.device.type == "cuda" and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
