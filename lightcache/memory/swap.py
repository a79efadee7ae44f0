"""Asynchronous cache swapping (docs/design.md §4.1): cached features leave the device right after they
are produced and come back (prefetched one block/step ahead where the policy knows the order)
before they are reused.

Every transfer goes through :class:`lightcache.ring.RingBuffer` rings (what the ring-buffer ops
``torch.ops.lightcache.ring_*`` run): one ring per feature size, grown by another ring when its
slots are all taken (so the host side holds exactly the live features, up to
``MemoryPlan.host_cache_budget``). The store calls the rings' methods, not the ops: it runs in
the policies' eager bookkeeping, where the ops' dispatch would only add tens of microseconds per
call (a third of the swap's CPU overhead on the Wan proxy, measured). On CPU the same path runs
through the CPU ring's copy engine, so it is what the CPU tests exercise.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Tuple

import torch
from torch import Tensor

from lightcache.memory.store import FeatureStore, compress
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
    feature_bytes: int  # the stored tensor's bytes (what one fetch brings back)
    prefetched: Optional[Tensor] = None

    @property
    def scale_bytes(self) -> int:
        return self.scale.nbytes if self.scale is not None else 0


class SwapStore(FeatureStore):
    """Features live in pinned host rings; the device holds only what is being reused.

    Device bytes (``device_bytes``, ``device_peak``) = per-token scales of every live feature
    (fp8 only; they stay on the device) + prefetched buffers + the buffer of a fetch in flight
    (counted until ``get`` hands it to the caller). With ``MemoryPlan.device_cache_budget = B``
    they never exceed B, by this rule:

    * ``put`` refuses (ValueError naming the minimum) the first feature that makes
      ``scales of the live features + the largest live feature > B``: past that point some fetch
      could not fit. The minimum it names is that sum at the refused put; features stored later
      add their scales, so the smallest B for a whole run is the high-water mark of the sum,
      ``min_device_budget`` (measured by a run without a budget; a budget one byte short of it is
      refused naming exactly it). When a put's scale would leave no room for one fetch next to the
      prefetched buffers, the newest prefetches are completed and dropped (shed) first.
    * ``prefetch`` is skipped unless ``scales + prefetched + this feature + the largest live
      feature <= B``: room for one on-demand fetch always stays.
    * so an un-prefetched ``get`` always fits (it sheds prefetches before exceeding B, which the two
      rules above make unnecessary).

    Not counted: the tensor being stored and its compressed copy while its device-to-host copy
    runs (producer-side memory, alive anyway for the policy's value), and a fetched buffer once the
    caller holds it.

    Rings are opened as features need them and kept until :meth:`clear` (default) or, with
    ``clear(keep_rings=True)`` for reuse across pipeline calls (pinned allocation is slow), until
    :meth:`close`.
    """

    get_returns_owned = True  # every get is a fresh device buffer: the store keeps the host copy

    def __init__(self, plan, device: torch.device):
        super().__init__(plan.storage_dtype)
        self.plan = plan
        self.device = device
        self._rings: Dict[int, List[RingBuffer]] = {}  # slot bytes -> rings
        self._rings_used: Dict[int, int] = {}  # slot bytes -> rings this call needed (kept by clear(keep_rings=True))
        self._items: Dict[Hashable, _Swapped] = {}
        self._ids = itertools.count()
        self._scale_bytes = 0  # per-token scales of the live features (on the device)
        self._prefetched: Dict[Hashable, int] = {}  # key -> bytes, in prefetch order
        self._prefetched_bytes = 0
        self._live_sizes: Counter = Counter()  # stored bytes -> live features of that size
        self.min_device_budget = 0  # high-water of scales + largest live feature: the smallest budget so far

    # -- accounting ----------------------------------------------------------------------------

    def _largest_live(self, excluding: Optional[int] = None) -> int:
        """Largest live feature's bytes, counting one feature of size ``excluding`` less."""
        return max((size for size, n in self._live_sizes.items() if n - (size == excluding) > 0), default=0)

    def _shed(self, room: int) -> None:
        """Drop prefetched buffers, newest first (the oldest is needed soonest), until they take at
        most ``room`` bytes."""
        while self._prefetched_bytes > max(room, 0) and self._prefetched:
            key, n = self._prefetched.popitem()
            item = self._items[key]
            # ends the ring's hold on the buffer (stream-ordered on CUDA: no host sync) before freeing it
            item.ring.fetch(item.key_id, item.prefetched)
            item.prefetched = None
            self._prefetched_bytes -= n
            self._device_sub(n)

    def cache_bytes(self) -> dict:
        # the smallest device_cache_budget this run could have had: what a refused budget asks for
        return dict(super().cache_bytes(), min_device_budget=self.min_device_budget)

    def reset_peaks(self) -> None:
        super().reset_peaks()
        self.min_device_budget = self._scale_bytes + self._largest_live()

    def _poll_others(self, ring) -> None:
        """Every ring keeps its last stored source (and fetch buffers) until its next operation
        finds the copy complete; a full ring may see no operation for a whole step, so each
        operation looks at the other rings too (never blocks)."""
        for rings in self._rings.values():
            for other in rings:
                if other is not ring:
                    other.poll()

    def _ring_for(self, nbytes: int) -> RingBuffer:
        rings = self._rings.setdefault(nbytes, [])
        for i, ring in enumerate(rings):
            if len(ring) < ring.num_slots:
                self._rings_used[nbytes] = max(self._rings_used.get(nbytes, 0), i + 1)
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
        self._rings_used[nbytes] = len(rings)
        return ring

    def _budget_error(self, key, stored: Tensor, budget: int, scales: int, largest: int) -> ValueError:
        need = scales + largest
        where = f"storing {key!r} ({tuple(stored.shape)} {stored.dtype})"
        if scales:
            live = len(self._items) + (key not in self._items)
            why = (
                f"{scales} bytes of per-token fp8 scales of the {live} live cached features (they stay on the "
                f"device) + {largest} bytes to fetch the largest one for reuse; features cached later add their "
                "scales: the smallest budget for the whole run is report(pipe).cache_bytes['min_device_budget'] "
                "after a call without one"
            )
        else:
            why = f"the largest live cached feature ({largest} bytes) must fit on the device to be reused"
        return ValueError(
            f"MemoryPlan.device_cache_budget ({budget} bytes) is below what the swapped cache needs on the device: "
            f"it must be None or at least the minimum at this point of the run, {need} bytes ({where}): {why}"
        )

    # -- the store interface -------------------------------------------------------------------

    def put(self, key: Hashable, value: Tensor) -> None:
        value = value.detach()
        stored, scale = compress(value, self.storage_dtype)
        nbytes = stored.numel() * stored.element_size()
        sbytes = scale.nbytes if scale is not None else 0
        old = self._items.get(key)
        # the need once this put replaces `old`: every live scale plus room for the largest fetch
        scales = self._scale_bytes - (old.scale_bytes if old is not None else 0) + sbytes
        largest = max(self._largest_live(excluding=old.feature_bytes if old is not None else None), nbytes)
        budget = self.plan.device_cache_budget
        if budget is not None and scales + largest > budget:
            raise self._budget_error(key, stored, budget, scales, largest)  # before anything changes
        self.min_device_budget = max(self.min_device_budget, scales + largest)
        self._drop(key)
        if budget is not None:  # room for the new scale and one fetch next to the prefetched buffers
            self._shed(budget - scales - largest)
        self._feature_stored(nbytes)
        ring = self._ring_for(nbytes)
        key_id = next(self._ids)
        ring.store(stored, key_id)
        self._poll_others(ring)
        self._items[key] = _Swapped(ring, key_id, tuple(stored.shape), stored.dtype, value.dtype, scale, nbytes)
        self._live_sizes[nbytes] += 1
        self._scale_bytes += sbytes
        self._device_add(sbytes)
        self._host_add(nbytes)

    def prefetch(self, key: Hashable) -> None:
        """Start bringing ``key`` back to the device, unless that would leave no room in the device
        budget for one on-demand fetch. Unknown or already prefetched keys are ignored."""
        item = self._items.get(key)
        if item is None or item.prefetched is not None:
            return
        n = item.feature_bytes
        budget = self.plan.device_cache_budget
        if budget is not None and self._scale_bytes + self._prefetched_bytes + n + self._largest_live() > budget:
            return
        dst = torch.empty(item.shape, dtype=item.stored_dtype, device=self.device)
        item.ring.prefetch(item.key_id, dst)
        self._poll_others(item.ring)
        item.prefetched = dst
        self._prefetched[key] = n
        self._prefetched_bytes += n
        self._device_add(n)

    def get(self, key: Hashable) -> Tuple[Tensor, Optional[Tensor]]:
        """(stored tensor on the device, scale or None). The buffer now belongs to the caller: the
        store keeps only the host copy."""
        item = self._item(key)
        n = item.feature_bytes
        dst = item.prefetched
        if dst is None:
            budget = self.plan.device_cache_budget
            if budget is not None and self.device_bytes + n > budget:
                self._shed(budget - self._scale_bytes - n)  # put/prefetch keep this room; never exceed B
            dst = torch.empty(item.shape, dtype=item.stored_dtype, device=self.device)
            self._device_add(n)  # counted while in flight, like a prefetch
        else:
            del self._prefetched[key]
            self._prefetched_bytes -= n
        item.ring.fetch(item.key_id, dst)
        self._poll_others(item.ring)
        item.prefetched = None
        self._device_sub(n)
        return dst, item.scale

    def _drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        item.ring.release(item.key_id)
        self._host_sub(item.feature_bytes)
        self._live_sizes[item.feature_bytes] -= 1
        if not self._live_sizes[item.feature_bytes]:
            del self._live_sizes[item.feature_bytes]
        self._scale_bytes -= item.scale_bytes
        self._device_sub(item.scale_bytes)
        if item.prefetched is not None:
            n = self._prefetched.pop(key)
            self._prefetched_bytes -= n
            self._device_sub(n)

    def clear(self, keep_rings: bool = False) -> None:
        """Drop every cached feature. ``keep_rings``: leave the (now empty) rings that this call
        needed open for the next call's features (sized to need: rings of feature sizes the call
        did not use, or beyond the number it used at once, are freed); :meth:`close` frees them."""
        if not isinstance(keep_rings, bool):
            raise TypeError(f"keep_rings must be a bool, got {type(keep_rings).__name__}")
        for key in list(self._items):
            self._drop(key)
        used = self._rings_used if keep_rings else {}
        for size in list(self._rings):
            rings = self._rings[size]
            keep = used.get(size, 0)
            for ring in rings[keep:]:
                ring.close()
            if keep:
                self._rings[size] = rings[:keep]
            else:
                del self._rings[size]
        self._rings_used = {}

    def close(self) -> None:
        """Drop every feature and free the rings (idempotent; a later put opens new ones)."""
        self.clear(keep_rings=False)
