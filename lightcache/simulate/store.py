"""The memory plan's feature stores on the meta device.

:class:`MetaSwapStore` is lightcache's :class:`~lightcache.memory.swap.SwapStore`, unchanged,
over rings that hold no memory (:class:`MetaRing`: the ring ops on meta tensors run their fake
kernels, which only check their arguments), so its device accounting -- prefetched buffers,
in-flight fetches, per-token fp8 scales, the device budget's rules -- is the real store's, and its
host side is counted by the store itself (``host_bytes``/``host_peak``). Stored sources: a
RingBuffer keeps the tensor it stores alive until a later operation on the same ring finds its copy
complete (it polls, never waits); a :class:`MetaRing` keeps it until the next operation on it, so
the simulation assumes each device-to-host copy has completed by then (one block's residual copies
over PCIe in far less time than the next block computes at these sizes) and holds, like the CPU
ring does, one stored source per ring between operations.

:class:`SimPlan` is a :class:`~lightcache.memory.MemoryPlan` whose store is a
:class:`MetaSwapStore` when the plan swaps on a GPU (``swap="on"`` or ``"auto"``), else the
device store.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from lightcache.memory import MemoryPlan
from lightcache.memory import swap as _swap
from lightcache.memory.store import DeviceStore
from lightcache import ring as _ring


class MetaRing:
    """A ring on the meta device: registered under an id like a RingBuffer, holding nothing."""

    def __init__(self, slot_bytes=None, num_slots=2, device="meta", **_):
        self.slot_bytes = int(slot_bytes)
        self.num_slots = int(num_slots)
        self.device = torch.device("meta")
        self._keys = set()
        self._held = None  # the last stored source, kept until the next operation on this ring
        with _ring._REGISTRY_LOCK:
            self.id = next(_ring._IDS)
            _ring._REGISTRY[self.id] = self

    def hold(self, src):
        # a RingBuffer stores a non-contiguous source through its own contiguous copy, which it
        # holds until its next operation (RingBuffer.store); the CPU tracker sees that copy
        if src is not None and not src.is_contiguous():
            src = src.contiguous()
        self._held = src

    def poll(self):
        self._held = None

    def store(self, src, key):
        self.poll()  # RingBuffer.store polls first: the previous source's copy is done by now
        self._keys.add(key)

    def prefetch(self, key, dst):
        pass

    def fetch(self, key, dst=None):
        return dst

    def release(self, key):
        self._keys.discard(key)
        return True

    def __len__(self):
        return len(self._keys)

    def close(self):
        self._held = None
        with _ring._REGISTRY_LOCK:
            _ring._REGISTRY.pop(self.id, None)


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class MetaSwapStore(_swap.SwapStore):
    """SwapStore over :class:`MetaRing` rings (see the module doc)."""

    def _ring_for(self, nbytes):
        with _patched(_swap, "RingBuffer", MetaRing):
            return super()._ring_for(nbytes)

    # The ring ops on meta tensors run their fake kernels, which never reach the ring: each store
    # operation below tells the ring what the real ring op would do (poll; hold a stored source).

    @staticmethod
    def _poll(item):
        if item is not None and hasattr(item.ring, "poll"):
            item.ring.poll()

    def put(self, key, value):
        old = self._items.get(key)
        captured = {}
        original = _swap.compress

        def compress(v, dtype):
            out = original(v, dtype)
            captured["stored"] = out[0]
            return out

        with _patched(_swap, "compress", compress):
            super().put(key, value)
        self._poll(old)
        item = self._items[key]
        self._poll(item)
        item.ring.hold(captured.get("stored"))

    def prefetch(self, key):
        super().prefetch(key)
        self._poll(self._items.get(key))

    def get(self, key):
        out = super().get(key)
        self._poll(self._items.get(key))
        return out

    def _drop(self, key):
        item = self._items.get(key)
        super()._drop(key)
        self._poll(item)


class SimPlan(MemoryPlan):
    """A MemoryPlan for a simulated GPU run on the meta device (see the module doc)."""

    def make_store(self, session):
        if self.swap in ("on", "auto"):
            return MetaSwapStore(self, torch.device("meta"))
        return DeviceStore(storage_dtype=self.storage_dtype)


def sim_plan(plan) -> SimPlan:
    """``plan`` (a MemoryPlan or None) as a :class:`SimPlan` with the stage tracker on."""
    plan = plan if plan is not None else MemoryPlan()
    values = {f.name: getattr(plan, f.name) for f in dataclasses.fields(MemoryPlan)}
    values["cpu_tracker"] = True
    return SimPlan(**values)
