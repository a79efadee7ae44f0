"""Where cached features live. Policies put and get features by key; the store decides placement
and storage precision.

:class:`DeviceStore` keeps them on the producing device (what every other caching tool does);
:class:`lightcache.memory.swap.SwapStore` swaps them to the pinned host ring buffer. Both may
store compressed (bf16, or fp8 with per-token scales); ``get`` then returns ``(q, scale)`` for the
fused reuse op to dequantise, and ``load`` a dense tensor.
"""

from __future__ import annotations

from typing import Hashable, Optional, Tuple

import torch
from torch import Tensor


def compress(value: Tensor, storage_dtype: Optional[torch.dtype]) -> Tuple[Tensor, Optional[Tensor]]:
    """(stored tensor, per-token scale or None) for ``value`` in ``storage_dtype``."""
    if storage_dtype is None or value.dtype == storage_dtype or not value.is_floating_point():
        return value, None
    if storage_dtype == torch.float8_e4m3fn:
        return torch.ops.lightcache.quantize_fp8(value)
    if value.element_size() <= torch.empty((), dtype=storage_dtype).element_size():
        return value, None  # never widen
    return value.to(storage_dtype), None


def decompress(stored: Tensor, scale: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """A dense tensor in ``dtype`` from what :func:`compress` produced."""
    if scale is not None:
        return torch.ops.lightcache.reuse(torch.zeros(stored.shape, dtype=dtype, device=stored.device), stored, scale)
    return stored if stored.dtype == dtype else stored.to(dtype)


class DeviceStore:
    """Cached features stay where they were produced. Tracks bytes held and their high-water mark."""

    def __init__(self, storage_dtype: Optional[torch.dtype] = None):
        self.storage_dtype = storage_dtype
        self._items: dict = {}  # key -> (stored, scale, original dtype)
        self.device_bytes = 0
        self.device_peak = 0
        self.host_bytes = 0
        self.host_peak = 0

    @staticmethod
    def _nbytes(item) -> int:
        stored, scale, _ = item
        return stored.nbytes + (scale.nbytes if scale is not None else 0)

    def put(self, key: Hashable, value: Tensor) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.device_bytes -= self._nbytes(old)
        value = value.detach()
        stored, scale = compress(value, self.storage_dtype)
        item = (stored, scale, value.dtype)
        self._items[key] = item
        self.device_bytes += self._nbytes(item)
        self.device_peak = max(self.device_peak, self.device_bytes)

    def _item(self, key):
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(f"no cached feature {key!r}: it was never stored in this run") from None

    def get(self, key: Hashable) -> Tuple[Tensor, Optional[Tensor]]:
        """(stored tensor, per-token scale or None): what the fused reuse op takes."""
        stored, scale, _ = self._item(key)
        return stored, scale

    def load(self, key: Hashable, copy: bool = False) -> Tensor:
        """The feature as a dense tensor in its original dtype (``copy``: one the caller may modify)."""
        stored, scale, dtype = self._item(key)
        out = decompress(stored, scale, dtype)
        return out.clone() if copy and out is stored else out

    def prefetch(self, key: Hashable) -> None:
        """Hint that ``key`` is needed soon (nothing to do for device-resident features)."""

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def clear(self) -> None:
        self._items.clear()
        self.device_bytes = 0
