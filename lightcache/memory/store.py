"""Where cached features live. Policies put and get features by key; the store decides placement.

:class:`DeviceStore` keeps them on the producing device (what every other caching tool does).
The memory plan swaps them to the pinned host ring instead (see lightcache.memory.swap).
"""

from __future__ import annotations

from typing import Hashable, Optional, Tuple

from torch import Tensor


class DeviceStore:
    """Cached features stay where they were produced. Tracks bytes held and their high-water mark."""

    def __init__(self):
        self._items: dict = {}
        self.device_bytes = 0
        self.device_peak = 0
        self.host_bytes = 0
        self.host_peak = 0

    def put(self, key: Hashable, value: Tensor) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.device_bytes -= old.nbytes
        value = value.detach()
        self._items[key] = value
        self.device_bytes += value.nbytes
        self.device_peak = max(self.device_peak, self.device_bytes)

    def get(self, key: Hashable) -> Tuple[Tensor, Optional[Tensor]]:
        """(tensor, per-token scale or None)."""
        try:
            return self._items[key], None
        except KeyError:
            raise KeyError(f"no cached feature {key!r}: it was never stored in this run") from None

    def load(self, key: Hashable, copy: bool = False) -> Tensor:
        """The feature as a dense tensor (``copy``: a tensor the caller may keep and modify)."""
        value, _ = self.get(key)
        return value.clone() if copy else value

    def prefetch(self, key: Hashable) -> None:
        """Hint that ``key`` is needed soon (nothing to do for device-resident features)."""

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def clear(self) -> None:
        self._items.clear()
        self.device_bytes = 0
