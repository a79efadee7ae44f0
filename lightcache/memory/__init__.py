"""The LightCache memory plan: where cached features live (device, or swapped to a pinned host
ring buffer) and at what precision. Feature chunking and sliced decode are not built yet."""

from lightcache.memory.plan import MemoryPlan
from lightcache.memory.store import DeviceStore
from lightcache.memory.swap import CacheBudgetError, SwapStore

__all__ = ["MemoryPlan", "DeviceStore", "SwapStore", "CacheBudgetError"]
