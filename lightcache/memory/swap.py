"""Asynchronous cache swapping (DESIGN.md §4.1): cached features leave the device right after they
are produced and come back (prefetched one block/step ahead where the policy knows the order)
before they are reused.

Every transfer goes through the ring-buffer ops (``torch.ops.lightcache.ring_*``) on
:class:`lightcache.ring.RingBuffer` rings: one ring per feature size, grown by another ring when
its slots are all taken (so the host side holds exactly the live features, up to
``MemoryPlan.host_cache_budget``). On CPU the same path runs through the CPU ring's worker-thread
copies, so it is what the CPU tests exercise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Tuple

import torch
from torch import Tensor

from lightcache.memory.store import compress, decompress
from lightcache.ring import RingBuffer

SLOTS_PER_RING = 16


class CacheBudgetError(RuntimeError):
    """The swapped cache would exceed MemoryPlan.host_cache_budget."""


@dataclass
class _Swapped:
    ring: RingBuffer
    key_id: int
    shape: Tuple[int, ...]
    stored_dtype: torch.dtype
    dtype: torch.dtype  # the feature's own dtype
    scale: Optional[Tensor]  # per-token fp8 scales (small; stay on the device)
    prefetched: Optional[Tensor] = None


class SwapStore:
    def __init__(self, plan, device: torch.device):
        self.plan = plan
        self.device = device
        self.storage_dtype = plan.storage_dtype
        self._rings: Dict[int, List[RingBuffer]] = {}  # slot bytes -> rings
        self._items: Dict[Hashable, _Swapped] = {}
        self._ids = itertools.count()
        self.device_bytes = 0  # prefetched buffers + scales held on the device
        self.device_peak = 0
        self.host_bytes = 0
        self.host_peak = 0
        self.max_feature_bytes = 0  # largest stored feature (what one reuse needs on the device)

    # -- accounting ----------------------------------------------------------------------------

    def _device_add(self, n: int) -> None:
        self.device_bytes += n
        self.device_peak = max(self.device_peak, self.device_bytes)

    def _ring_for(self, nbytes: int) -> RingBuffer:
        rings = self._rings.setdefault(nbytes, [])
        for ring in rings:
            if len(ring) < ring.num_slots:
                return ring
        slab = nbytes * SLOTS_PER_RING
        budget = self.plan.host_cache_budget
        total = sum(r.slot_bytes * r.num_slots for rs in self._rings.values() for r in rs)
        if budget is not None and total + slab > budget:
            raise CacheBudgetError(
                f"the swapped cache needs another {slab} bytes of host memory ({total} in use); "
                f"MemoryPlan.host_cache_budget is {budget}"
            )
        ring = RingBuffer(slot_bytes=nbytes, num_slots=SLOTS_PER_RING, device=self.device, pinned=self.plan.pinned,
                          sync_store=self.plan.sync_store)
        rings.append(ring)
        return ring

    # -- the store interface -------------------------------------------------------------------

    def put(self, key: Hashable, value: Tensor) -> None:
        self._drop(key)
        value = value.detach()
        stored, scale = compress(value, self.storage_dtype)
        nbytes = stored.numel() * stored.element_size()
        budget = self.plan.device_cache_budget
        if budget is not None and nbytes + (scale.nbytes if scale is not None else 0) > budget:
            raise ValueError(
                f"MemoryPlan.device_cache_budget ({budget} bytes) is below what one cached feature needs on the "
                f"device to be reused ({tuple(stored.shape)} {stored.dtype}): the minimum is "
                f"{nbytes + (scale.nbytes if scale is not None else 0)} bytes"
            )
        self.max_feature_bytes = max(self.max_feature_bytes, nbytes)
        ring = self._ring_for(nbytes)
        key_id = next(self._ids)
        torch.ops.lightcache.ring_store(stored, ring.id, key_id)
        item = _Swapped(ring, key_id, tuple(stored.shape), stored.dtype, value.dtype, scale)
        self._items[key] = item
        if scale is not None:
            self._device_add(scale.nbytes)
        self.host_bytes += nbytes
        self.host_peak = max(self.host_peak, self.host_bytes)

    def _item(self, key) -> _Swapped:
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(f"no cached feature {key!r}: it was never stored in this run") from None

    def prefetch(self, key: Hashable) -> None:
        """Start bringing ``key`` back to the device, unless that would exceed the device budget."""
        item = self._items.get(key)
        if item is None or item.prefetched is not None:
            return
        nbytes = RingBuffer.nbytes_of(item.shape, item.stored_dtype)
        budget = self.plan.device_cache_budget
        # keep room for one on-demand fetch, so a fetch never pushes the device cache over budget
        if budget is not None and self.device_bytes + nbytes + self.max_feature_bytes > budget:
            return
        dst = torch.empty(item.shape, dtype=item.stored_dtype, device=self.device)
        torch.ops.lightcache.ring_prefetch(item.ring.id, item.key_id, dst)
        item.prefetched = dst
        self._device_add(nbytes)

    def get(self, key: Hashable) -> Tuple[Tensor, Optional[Tensor]]:
        """(stored tensor on the device, scale or None). The buffer now belongs to the caller: the
        store keeps only the host copy."""
        item = self._item(key)
        dst = item.prefetched
        if dst is None:
            dst = torch.empty(item.shape, dtype=item.stored_dtype, device=self.device)
            self._device_add(dst.nbytes)  # counted while in flight, like a prefetch
        torch.ops.lightcache.ring_fetch(item.ring.id, item.key_id, dst)
        item.prefetched = None
        self.device_bytes -= dst.nbytes
        return dst, item.scale

    def load(self, key: Hashable, copy: bool = False) -> Tensor:
        stored, scale = self.get(key)
        return decompress(stored, scale, self._items[key].dtype)  # always a fresh tensor

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def _drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        torch.ops.lightcache.ring_release(item.ring.id, item.key_id)
        self.host_bytes -= RingBuffer.nbytes_of(item.shape, item.stored_dtype)
        if item.scale is not None:
            self.device_bytes -= item.scale.nbytes
        if item.prefetched is not None:
            self.device_bytes -= item.prefetched.nbytes

    def clear(self) -> None:
        for key in list(self._items):
            self._drop(key)
        for rings in self._rings.values():
            for ring in rings:
                ring.close()
        self._rings.clear()
