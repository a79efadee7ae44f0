"""The LightCache memory plan (docs/design.md §4): where cached features live (device, or swapped to a
pinned host ring buffer) and at what precision (swap.py, store.py), feature chunk (chunk.py and
chunk_*.py), sliced latent decode (decode.py), all set by one MemoryPlan (plan.py), and the
per-stage meter (meter.py)."""

from lightcache.memory.plan import MemoryPlan
from lightcache.memory.store import DeviceStore, FeatureStore
from lightcache.memory.swap import CacheBudgetError, SwapStore

__all__ = ["MemoryPlan", "FeatureStore", "DeviceStore", "SwapStore", "CacheBudgetError"]
