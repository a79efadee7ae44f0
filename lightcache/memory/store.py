"""Where cached features live. Policies put and get features by key; the store decides placement
and storage precision.

:class:`FeatureStore` is the interface policies use and the byte accounting every store shares;
:class:`DeviceStore` keeps features on the producing device (what every other caching tool does);
:class:`lightcache.memory.swap.SwapStore` swaps them to the pinned host ring buffer. Both may
store compressed (bf16, or fp8 with per-token scales); ``get`` then returns ``(q, scale)`` for the
fused reuse op to dequantise, and ``load`` a dense tensor.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
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


class FeatureStore(abc.ABC):
    """What policies call, and the accounting every store keeps.

    Interface: ``put(key, value)`` (replaces an existing key), ``get(key)`` -> ``(stored, scale or
    None)`` for the fused reuse op, ``load(key, copy=False)`` -> a dense tensor in the feature's own
    dtype (``copy``: one the caller may modify), ``prefetch(key)`` (a hint that ``key`` is needed
    soon; unknown keys are ignored), ``key in store``, ``clear()`` (drop every feature; the peaks
    stay, :meth:`reset_peaks` restarts them), ``close()`` (clear, and free what a store keeps for
    reuse across calls, e.g. SwapStore's rings).

    Accounting, in bytes: ``device_bytes``/``host_bytes`` held now, ``device_peak``/``host_peak``
    their high-water marks, ``max_feature_bytes`` the largest stored feature (stored dtype, scales
    excluded) so far.
    """

    #: ``get`` hands out a buffer the caller owns (True), or the store's own tensor (False)
    get_returns_owned: bool = False

    def __init__(self, storage_dtype: Optional[torch.dtype] = None):
        self.storage_dtype = storage_dtype
        self._items: dict = {}  # key -> the store's record (.dtype: the feature's own; .feature_bytes)
        self.device_bytes = 0
        self.device_peak = 0
        self.host_bytes = 0
        self.host_peak = 0
        self.max_feature_bytes = 0

    # -- accounting helpers --------------------------------------------------------------------

    def _device_add(self, n: int) -> None:
        self.device_bytes += n
        self.device_peak = max(self.device_peak, self.device_bytes)

    def _device_sub(self, n: int) -> None:
        self.device_bytes -= n

    def _host_add(self, n: int) -> None:
        self.host_bytes += n
        self.host_peak = max(self.host_peak, self.host_bytes)

    def _host_sub(self, n: int) -> None:
        self.host_bytes -= n

    def _feature_stored(self, nbytes: int) -> None:
        self.max_feature_bytes = max(self.max_feature_bytes, nbytes)

    def cache_bytes(self) -> dict:
        """The high-water marks a report shows: "device", "host", "largest_feature"."""
        return {"device": self.device_peak, "host": self.host_peak, "largest_feature": self.max_feature_bytes}

    def reset_peaks(self) -> None:
        """Restart the high-water marks from what is held now (a store reused for another call)."""
        self.device_peak = self.device_bytes
        self.host_peak = self.host_bytes
        self.max_feature_bytes = max((item.feature_bytes for item in self._items.values()), default=0)

    # -- the interface -------------------------------------------------------------------------

    def _item(self, key: Hashable):
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(f"no cached feature {key!r}: it was never stored in this run") from None

    @abc.abstractmethod
    def put(self, key: Hashable, value: Tensor) -> None:
        """Store ``value`` (detached) under ``key``, replacing what was there."""

    @abc.abstractmethod
    def get(self, key: Hashable) -> Tuple[Tensor, Optional[Tensor]]:
        """(stored tensor on the device, per-token scale or None): what the fused reuse op takes."""

    def load(self, key: Hashable, copy: bool = False) -> Tensor:
        """The feature as a dense tensor in its original dtype (``copy``: one the caller may modify)."""
        dtype = self._item(key).dtype
        stored, scale = self.get(key)
        out = decompress(stored, scale, dtype)
        if copy and out is stored and not self.get_returns_owned:
            out = out.clone()
        return out

    def prefetch(self, key: Hashable) -> None:
        """Hint that ``key`` is needed soon (nothing to do where features stay on the device)."""

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @abc.abstractmethod
    def clear(self, keep_rings: bool = False) -> None:
        """Drop every cached feature. ``keep_rings``: keep what the store allocated for holding
        features (a swap store's pinned rings) for the next pipeline call, until :meth:`close`."""

    def close(self) -> None:
        """Drop every feature and free what the store holds for reuse (idempotent)."""
        self.clear()


@dataclass
class _Held:
    stored: Tensor
    scale: Optional[Tensor]
    dtype: torch.dtype  # the feature's own dtype

    @property
    def feature_bytes(self) -> int:
        return self.stored.nbytes

    @property
    def nbytes(self) -> int:  # scales included: all of it stays on the device
        return self.stored.nbytes + (self.scale.nbytes if self.scale is not None else 0)


class DeviceStore(FeatureStore):
    """Cached features stay where they were produced. Tracks bytes held and their high-water mark."""

    def put(self, key: Hashable, value: Tensor) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._device_sub(old.nbytes)
        value = value.detach()
        stored, scale = compress(value, self.storage_dtype)
        item = _Held(stored, scale, value.dtype)
        self._items[key] = item
        self._device_add(item.nbytes)
        self._feature_stored(stored.nbytes)

    def get(self, key: Hashable) -> Tuple[Tensor, Optional[Tensor]]:
        """(stored tensor, per-token scale or None), the store's own tensors: do not modify them."""
        item = self._item(key)
        return item.stored, item.scale

    def clear(self, keep_rings: bool = False) -> None:  # nothing but the features themselves to free
        self._items.clear()
        self.device_bytes = 0
