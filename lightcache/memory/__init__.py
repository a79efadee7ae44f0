"""The LightCache memory plan: where cached features live, chunking, sliced decode, memory meter."""

from lightcache.memory.store import DeviceStore

__all__ = ["DeviceStore"]
