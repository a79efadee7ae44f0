"""Pinned-memory ring buffer for cached features: :class:`RingBuffer`.

A ring is one host slab (page-locked when possible) split into ``num_slots`` slots of
``slot_bytes``. Callers name what they store with integer keys:

* ``store(src, key)``: copies ``src`` into a free slot, device->host, asynchronously: on CUDA on a
  side stream ordered after the work already queued on the producer (current) stream; on CPU on a
  worker thread (a copy of at most 1 MiB issued while no copy is in flight runs on the calling
  thread: cheaper than waking the worker; either way in issue order; the host slot is written
  around the cache with non-temporal stores, as a stored feature is not read again until a later
  step). Storing an existing key replaces it.
* ``prefetch(key, dst)``: starts the host->device copy into ``dst`` (on CUDA on a copy stream,
  ordered after the consumer stream's queued work, so ``dst`` is free to overwrite).
* ``fetch(key, dst=None)``: makes the consumer stream wait for the key's data in ``dst`` (copying
  first unless this very ``dst`` was prefetched). On CUDA this is a stream-to-stream wait, never a
  host sync; on CPU the call returns once the bytes are in ``dst``. Returns ``dst``.
* ``release(key)``: frees the slot.

Contracts (the price of asynchrony, as with ``copy_(non_blocking=True)``):

* ``src`` is kept alive by the ring until its copy has completed (polled, never waited for), so
  the caching allocator cannot hand its memory out early. Do not write into ``src`` in place before
  the store has completed (:meth:`RingBuffer.store_done`, :meth:`RingBuffer.synchronize`), or
  construct the ring with ``sync_store=True``: then the producer stream itself waits for the copy
  (on CUDA a device-side wait; on CPU the store returns after the copy).
* Between ``prefetch(key, dst)`` and ``fetch(key, dst)``, ``dst`` belongs to the ring; the ring
  keeps it alive until it is fetched, re-prefetched or released. Using that memory (``dst`` or any
  tensor overlapping it, in any ring) as the ``dst`` of another key's prefetch or fetch, or as a
  ``src``, raises :class:`DstInUseError` naming both keys: the two copies would race, and the
  later fetch would return the other key's bytes.
* Non-contiguous ``src`` is copied to a contiguous tensor first (one extra device copy on the
  producer stream). ``dst`` must be contiguous (the ring writes raw bytes), with the stored dtype
  and shape.

When every slot holds a live entry, ``full_policy`` decides (never silent corruption):

* ``"error"``: :class:`RingFullError`.
* ``"evict_oldest"``: the oldest entry that is not mid-copy is evicted (if all are mid-copy, the
  oldest is evicted once its copies finish); fetching an evicted key raises
  :class:`StaleHandleError`. Releasing an evicted key just forgets it (returns False).
* ``"block"``: waits up to ``timeout`` seconds for another thread to release, then
  :class:`RingFullError`.

``pinned`` chooses what happens when page-locked memory cannot be had (on CPU the slab is
``mlock``-ed, so ``RLIMIT_MEMLOCK``/``ulimit -l`` applies to non-root users; on CUDA it comes from
``cudaHostAlloc``):

* ``"require"``: :class:`PinnedMemoryError` naming the limit;
* ``"prefer"`` (default): pageable memory and a :class:`PinnedMemoryWarning` (on CUDA, copies from
  pageable memory are not asynchronous);
* ``"off"``: pageable memory, no attempt.

Each ring registers itself under an integer id (``ring.id``, :func:`get_ring`) so the
``torch.ops.lightcache.ring_*`` ops can name it; :meth:`RingBuffer.close` unregisters it and frees
the slab. Rings are not freed by garbage collection while registered: close them (or use ``with``).

``fork()``: a ring's copy engine (the CPU worker thread, the CUDA streams) does not exist in a forked
child, so rings open at the fork are *inherited* there: every call on one (and :func:`get_ring` of
its id) raises :class:`RingError` saying it was opened in the parent process; ``close()`` is a
no-op; nothing of it is torn down in the child (its slab is the parent's copy-on-write memory), so
the child exits cleanly. Rings opened in the child work as usual (a CUDA ring needs CUDA to be
usable in the child: with the ``fork`` start method it is not once the parent initialised CUDA).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import operator
import os
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from lightcache import _ext

__all__ = [
    "RingBuffer",
    "get_ring",
    "open_rings",
    "RingError",
    "RingFullError",
    "StaleHandleError",
    "DstInUseError",
    "PinnedMemoryError",
    "CudaUnavailableError",
    "PinnedMemoryWarning",
    "FULL_POLICIES",
    "PINNED_MODES",
]

FULL_POLICIES = ("error", "evict_oldest", "block")
PINNED_MODES = ("require", "prefer", "off")
_INT64 = (-(2**63), 2**63 - 1)

if _ext.C is not None:
    RingError = _ext.C.RingError
    RingFullError = _ext.C.RingFullError
    StaleHandleError = _ext.C.StaleHandleError
    PinnedMemoryError = _ext.C.PinnedMemoryError
    CudaUnavailableError = _ext.C.CudaUnavailableError
else:  # same names, so `except` clauses work even when _C is missing

    class RingError(RuntimeError):
        pass

    class RingFullError(RingError):
        pass

    class StaleHandleError(RingError):
        pass

    class PinnedMemoryError(RingError):
        pass

    class CudaUnavailableError(RuntimeError):
        pass


class DstInUseError(RingError, ValueError):
    """A tensor overlaps the ``dst`` of another key's prefetch that was not fetched yet."""


class PinnedMemoryWarning(RuntimeWarning):
    """The ring fell back to pageable host memory (``pinned="prefer"``)."""


_REGISTRY: dict[int, "RingBuffer"] = {}
_REGISTRY_LOCK = threading.Lock()
_IDS = itertools.count()
# ids of rings inherited through fork() -> pid of the process that opened them
_INHERITED: dict[int, int] = {}

# Destinations of pending prefetches, over all rings (a dst of one ring must not be written by
# another): (device, first byte, end byte) -> (ring id, key). Kept alive by their entries, so the
# allocator cannot hand their memory out: an overlap is always the caller reusing the memory.
_PENDING_DST: dict[tuple, tuple[int, int]] = {}
_DST_LOCK = threading.Lock()

_NO_GUARD = contextlib.nullcontext()  # a cpu ring's device guard (reusable: nullcontext keeps no state)


def _span(t: Tensor) -> Optional[tuple]:
    """(device, first byte, end byte) of the memory ``t`` covers (gaps of a strided view included)."""
    numel = t.numel()
    if numel == 0:
        return None
    start = t.data_ptr()
    if t.is_contiguous():  # the common case, without the per-dimension sum
        return (t.device, start, start + numel * t.element_size())
    extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return (t.device, start, start + extent * t.element_size())


def _owner_of(span: Optional[tuple], allowed=None) -> Optional[tuple[int, int]]:
    """(ring id, key) of a pending prefetch whose dst overlaps ``span`` (other than ``allowed``)."""
    if span is None:
        return None
    dev, start, end = span
    for (d, s, e), owner in _PENDING_DST.items():
        if s < end and start < e and d == dev and owner != allowed:
            return owner
    return None


def _inherited_error(ring_id: int, pid: int) -> RingError:
    return RingError(
        f"ring {ring_id} was opened in the parent process (pid {pid}) before fork(); its copy engine does not "
        f"exist in this process (pid {os.getpid()}): open a new RingBuffer here"
    )


def _after_fork_in_child() -> None:
    # Locks may have been held by threads that do not exist here: replace them. Rings open at the
    # fork become unusable, leave the registry (so atexit does not close them: that would join a
    # thread that does not exist) and release nothing (the parent owns their memory).
    global _REGISTRY_LOCK, _DST_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _DST_LOCK = threading.Lock()
    _PENDING_DST.clear()
    for ring in _REGISTRY.values():
        ring._inherit()
        _INHERITED[ring.id] = ring._pid
    _REGISTRY.clear()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_ring(ring_id: int) -> "RingBuffer":
    """The open ring with this id; ValueError naming ``ring`` otherwise."""
    if isinstance(ring_id, bool) or not isinstance(ring_id, int):
        raise TypeError(f"ring must be an int ring id, got {type(ring_id).__name__}")
    with _REGISTRY_LOCK:
        ring = _REGISTRY.get(ring_id)
        if ring is None:
            if ring_id in _INHERITED:
                raise _inherited_error(ring_id, _INHERITED[ring_id])
            raise ValueError(f"ring={ring_id} is not an open RingBuffer id (open ids: {sorted(_REGISTRY)})")
        return ring


def open_rings() -> list[int]:
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


@atexit.register
def _close_all():  # join worker threads and free slabs before the interpreter tears down
    with _REGISTRY_LOCK:
        rings = list(_REGISTRY.values())
    for r in rings:
        with contextlib.suppress(Exception):
            r.close()


@dataclass(slots=True)  # one per store: cheaper to create
class _Entry:
    slot: int
    generation: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple
    store_ticket: int
    evicted: bool = False
    prefetched: Optional[Tensor] = None  # dst of the latest prefetch, until fetched
    prefetched_span: Optional[tuple] = None  # its key in _PENDING_DST


def _check_key(key) -> int:
    if type(key) is int and _INT64[0] <= key <= _INT64[1]:  # the hot path: one type test
        return key
    if isinstance(key, bool):
        raise TypeError("key must be an int, got bool")
    try:
        k = operator.index(key)
    except TypeError:
        raise TypeError(f"key must be an int, got {type(key).__name__}") from None
    if not _INT64[0] <= k <= _INT64[1]:
        raise ValueError(f"key must fit in int64, got {k}")
    return k


def _check_pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class RingBuffer:
    """Pinned host ring buffer of ``num_slots`` slots of ``slot_bytes`` (see the module doc).

    Args:
        slot_bytes: capacity of one slot in bytes (give this or ``total_bytes``).
        num_slots: number of slots (>= 1).
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (the device the tensors live on).
        full_policy: ``"error"``, ``"evict_oldest"`` or ``"block"``.
        pinned: ``"require"``, ``"prefer"`` or ``"off"``.
        total_bytes: alternative to ``slot_bytes``: the slab size, split evenly into the slots.
        timeout: seconds a ``"block"`` ring waits for a release before raising.
        sync_store: the producer stream waits for each store's copy (safe to overwrite ``src``
            right away, at the cost of the copy/compute overlap).
    """

    def __init__(
        self,
        slot_bytes: Optional[int] = None,
        num_slots: int = 2,
        device: Union[str, torch.device] = "cpu",
        full_policy: str = "error",
        pinned: str = "prefer",
        *,
        total_bytes: Optional[int] = None,
        timeout: float = 10.0,
        sync_store: bool = False,
        _copy_delay_us: int = 0,
    ):
        self._core = None  # so close()/__del__ work if construction fails
        num_slots = _check_pos_int("num_slots", num_slots)
        if (slot_bytes is None) == (total_bytes is None):
            raise ValueError("give exactly one of slot_bytes and total_bytes")
        if slot_bytes is not None:
            slot_bytes = _check_pos_int("slot_bytes", slot_bytes)
        else:
            total_bytes = _check_pos_int("total_bytes", total_bytes)
            if total_bytes < num_slots:
                raise ValueError(f"total_bytes ({total_bytes}) must be >= num_slots ({num_slots})")
            slot_bytes = total_bytes // num_slots
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if full_policy not in FULL_POLICIES:
            raise ValueError(f"full_policy must be one of {FULL_POLICIES}, got {full_policy!r}")
        if pinned not in PINNED_MODES:
            raise ValueError(f"pinned must be one of {PINNED_MODES}, got {pinned!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise TypeError(f"timeout must be a finite number of seconds, got {timeout!r}")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        if not isinstance(sync_store, bool):
            raise TypeError(f"sync_store must be a bool, got {type(sync_store).__name__}")

        C = _ext.require("lightcache.ring.RingBuffer")
        index = -1
        if dev.type == "cuda":
            if dev.index is not None:
                index = dev.index
            elif torch.cuda.is_available():
                index = torch.cuda.current_device()
            else:
                index = 0  # the compiled module reports the missing device
            dev = torch.device("cuda", index)
        self.device = dev
        self._cuda = dev.type == "cuda"
        with self._device_guard():
            self._core = C.Ring(
                dev.type,
                slot_bytes,
                num_slots,
                full_policy,
                float(timeout),
                pinned,
                max(index, 0),
                sync_store,
                int(_copy_delay_us),
            )
        if pinned == "prefer" and not self._core.pinned:
            warnings.warn(
                "lightcache.RingBuffer: pinned memory unavailable, using pageable host memory: "
                f"{self._core.pinned_note}",
                PinnedMemoryWarning,
                stacklevel=2,
            )
        self.slot_bytes = slot_bytes
        self.num_slots = num_slots
        self.full_policy = full_policy
        self.pinned_mode = pinned
        self.timeout = float(timeout)
        self.sync_store = sync_store
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}
        self._by_handle: dict[tuple[int, int], int] = {}
        # (ticket, tensor) of copies in flight, per direction (0: D2H, 1: H2D); each direction
        # completes in order, so polling pops from the left.
        self._inflight = (deque(), deque())
        self._closed = False
        self._inherited = False
        self._pid = os.getpid()
        with _REGISTRY_LOCK:
            self.id = next(_IDS)
            _REGISTRY[self.id] = self

    # ---- properties ------------------------------------------------------------------------

    @property
    def pinned(self) -> bool:
        """Whether the host slab is page-locked."""
        return bool(self._core.pinned) if self._core is not None else False

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self):
        state = "closed" if self._closed else f"{len(self._entries)} keys"
        return (
            f"RingBuffer(id={getattr(self, 'id', None)}, device={self.device}, slot_bytes={self.slot_bytes}, "
            f"num_slots={self.num_slots}, full_policy={self.full_policy!r}, pinned={self.pinned}, {state})"
        )

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if not e.evicted)

    def __contains__(self, key) -> bool:
        with self._lock:
            e = self._entries.get(key)
            return e is not None and not e.evicted

    def keys(self) -> list[int]:
        """Keys with a live (not evicted) entry."""
        with self._lock:
            return [k for k, e in self._entries.items() if not e.evicted]

    # ---- helpers ---------------------------------------------------------------------------

    def _device_guard(self):
        if self._cuda and torch.cuda.is_available():
            return torch.cuda.device(self.device)
        return _NO_GUARD

    def _check_open(self):
        if self._inherited:
            raise _inherited_error(self.id, self._pid)
        if self._closed:
            raise RingError(f"ring {self.id} is closed")

    def _inherit(self) -> None:
        """In a forked child: unusable from now on (see the module doc)."""
        self._inherited = True
        self._lock = threading.RLock()  # the parent's may be held by a thread that is gone
        self._inflight = (deque(), deque())  # those copies never run here

    # ---- prefetch destinations -----------------------------------------------------------------

    def _in_use(self, op: str, name: str, key: int, owner: tuple[int, int]) -> DstInUseError:
        rid, k = owner
        return DstInUseError(
            f"{op}: {name} overlaps the dst of the pending prefetch of key={k} of ring {rid} (not fetched yet); "
            f"using it for key={key} of ring {self.id} would overwrite or race with key={k}'s bytes. Fetch "
            f"key={k} into that dst (or release it) first, or pass another tensor"
        )

    def _check_free(self, op: str, name: str, t: Tensor, key: int) -> None:
        """``t`` must not overlap any pending prefetch's dst (this key's included)."""
        if not _PENDING_DST:  # nothing to overlap (a claim racing with this check races with the copy anyway)
            return
        with _DST_LOCK:
            owner = _owner_of(_span(t))
        if owner is not None:
            raise self._in_use(op, name, key, owner)

    def _disown(self, e: _Entry) -> None:
        """``e``'s pending prefetch no longer owns its dst."""
        if e.prefetched_span is not None:
            with _DST_LOCK:
                _PENDING_DST.pop(e.prefetched_span, None)
            e.prefetched_span = None
        e.prefetched = None

    def _stream_handle(self, stream) -> int:
        if not self._cuda:
            if stream is not None:
                raise ValueError("stream must be None for a cpu ring")
            return 0
        if stream is None:
            return torch.cuda.current_stream(self.device).cuda_stream
        if isinstance(stream, torch.cuda.Stream):
            if stream.device != self.device:
                raise ValueError(f"stream is on {stream.device} but ring {self.id} is on {self.device}")
            return stream.cuda_stream
        raise TypeError(f"stream must be a torch.cuda.Stream or None, got {type(stream).__name__}")

    def _check_tensor(self, name: str, t) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device} but ring {self.id} is on {self.device}")
        return t

    def _entry(self, key: int, op: str) -> _Entry:
        e = self._entries.get(key)
        if e is None:
            raise ValueError(f"key={key} is not stored in ring {self.id} (never stored, or already released)")
        if e.evicted:
            raise StaleHandleError(
                f"{op}: key={key} of ring {self.id} was evicted to make room (full_policy='evict_oldest'); "
                "its data is gone"
            )
        return e

    def _check_dst(self, dst, key: int, e: _Entry) -> Tensor:
        self._check_tensor("dst", dst)
        if dst.dtype != e.dtype:
            raise TypeError(f"dst has dtype {dst.dtype} but key={key} was stored as {e.dtype}")
        if tuple(dst.shape) != e.shape:
            raise ValueError(f"dst has shape {tuple(dst.shape)} but key={key} was stored with shape {e.shape}")
        if not dst.is_contiguous():
            raise ValueError("dst must be contiguous (the ring writes the stored bytes into it)")
        return dst

    def _poll(self):
        """Drop tensors whose copies have completed; never blocks."""
        core = self._core
        for q in self._inflight:
            while q and core.done(q[0][0]):
                q.popleft()

    def _forget(self, key: int) -> Optional[_Entry]:
        e = self._entries.pop(key, None)
        if e is not None:
            self._by_handle.pop((e.slot, e.generation), None)
            self._disown(e)
        return e

    def _free_entry(self, e: _Entry) -> bool:
        if e.evicted:
            return False
        try:
            self._core.release(e.slot, e.generation)
        except StaleHandleError:
            return False
        return True

    # ---- the protocol ----------------------------------------------------------------------

    def store(self, src: Tensor, key: int, *, stream=None) -> None:
        """Copy ``src`` into a slot under ``key`` (asynchronously; replaces an existing ``key``)."""
        self._check_open()
        key = _check_key(key)
        src = self._check_tensor("src", src)
        nbytes = src.numel() * src.element_size()
        if nbytes > self.slot_bytes:
            raise ValueError(
                f"src needs {nbytes} bytes ({tuple(src.shape)} {src.dtype}) but slot_bytes of ring {self.id} "
                f"is {self.slot_bytes}"
            )
        handle = self._stream_handle(stream)
        self._check_free("store", "src", src, key)  # a copy is writing it
        if not src.is_contiguous():
            src = src.contiguous()  # documented: one extra copy, on the producer stream
        with self._lock:
            self._poll()
            old = self._forget(key)
        if old is not None:
            self._free_entry(old)  # frees its slot first, so replacing never needs a spare slot
        with self._device_guard():
            slot, gen, ticket, ev_slot, ev_gen = self._core.store(src.data_ptr(), nbytes, handle)
        with self._lock:
            self._inflight[0].append((ticket, src))
            if ev_slot >= 0:
                ev_key = self._by_handle.pop((ev_slot, ev_gen), None)
                if ev_key is not None and ev_key in self._entries:
                    victim = self._entries[ev_key]
                    victim.evicted = True
                    self._disown(victim)  # eviction waited for its copies
            raced = self._forget(key)  # another thread stored the same key meanwhile
            self._entries[key] = _Entry(slot, gen, nbytes, src.dtype, tuple(src.shape), ticket)
            self._by_handle[(slot, gen)] = key
        if raced is not None:
            self._free_entry(raced)

    def prefetch(self, key: int, dst: Tensor, *, stream=None) -> None:
        """Start copying ``key``'s bytes into ``dst`` (same dtype/shape as stored, contiguous)."""
        self._check_open()
        key = _check_key(key)
        with self._lock:
            self._poll()
            e = self._entry(key, "prefetch")
        self._check_dst(dst, key, e)
        handle = self._stream_handle(stream)
        span = _span(dst)
        me = (self.id, key)
        with _DST_LOCK:  # check and claim at once: two threads must not claim one dst
            owner = _owner_of(span, me)
            if owner is None and span is not None:
                _PENDING_DST[span] = me
        if owner is not None:  # this key's own pending dst may overlap: its copies run in order
            raise self._in_use("prefetch", "dst", key, owner)
        try:
            with self._device_guard():
                ticket = self._core.prefetch(e.slot, e.generation, dst.data_ptr(), e.nbytes, handle)
        except BaseException:
            if span is not None and span != e.prefetched_span:
                with _DST_LOCK:
                    _PENDING_DST.pop(span, None)
            raise
        with self._lock:
            self._inflight[1].append((ticket, dst))
            old = e.prefetched_span
            if old is not None and old != span:  # re-prefetched: the old dst is the caller's again
                with _DST_LOCK:
                    _PENDING_DST.pop(old, None)
            e.prefetched, e.prefetched_span = dst, span

    def fetch(self, key: int, dst: Optional[Tensor] = None, *, stream=None) -> Tensor:
        """Make the consumer stream wait for ``key``'s bytes in ``dst`` and return ``dst``
        (a new tensor when None). Copies now unless this ``dst`` was prefetched."""
        self._check_open()
        key = _check_key(key)
        with self._lock:
            self._poll()
            e = self._entry(key, "fetch")
        if dst is None:
            dst = torch.empty(e.shape, dtype=e.dtype, device=self.device)
        self._check_dst(dst, key, e)
        handle = self._stream_handle(stream)
        p = e.prefetched
        # The prefetched tensor is held alive, so an equal address is the same memory.
        use_prefetched = p is not None and p.data_ptr() == dst.data_ptr() and p.device == dst.device
        if not use_prefetched:
            self._check_free("fetch", "dst", dst, key)
        with self._device_guard():
            ticket = self._core.fetch(e.slot, e.generation, dst.data_ptr(), e.nbytes, handle, use_prefetched)
        with self._lock:
            if use_prefetched:
                self._disown(e)
            if self.device.type == "cuda":
                self._inflight[1].append((ticket, dst))
        return dst

    def release(self, key: int) -> bool:
        """Free ``key``'s slot. Returns True, or False when the key had been evicted. Unknown (or
        already released) keys raise ValueError."""
        self._check_open()
        key = _check_key(key)
        with self._lock:
            self._poll()
            e = self._forget(key)
        if e is None:
            raise ValueError(f"key={key} is not stored in ring {self.id} (never stored, or already released)")
        return self._free_entry(e)

    def poll(self) -> None:
        """Release the tensors of completed copies (stored sources, fetch buffers) now instead of
        at this ring's next operation; never blocks (an event query per copy in flight on CUDA)."""
        self._check_open()
        with self._lock:
            self._poll()

    def store_done(self, key: int) -> bool:
        """Whether ``key``'s device->host copy has completed (``src`` may be overwritten). Never blocks."""
        self._check_open()
        key = _check_key(key)
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                raise ValueError(f"key={key} is not stored in ring {self.id}")
            return bool(self._core.done(e.store_ticket))

    def state(self, key: int) -> str:
        """``"copying_out"``, ``"on_host"``, ``"copying_in"`` or ``"evicted"``."""
        self._check_open()
        key = _check_key(key)
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                raise ValueError(f"key={key} is not stored in ring {self.id}")
            if e.evicted:
                return "evicted"
            return self._core.state(e.slot)

    def synchronize(self) -> None:
        """Block until every copy issued so far has completed; drops every kept-alive tensor."""
        self._check_open()
        with self._device_guard():
            self._core.synchronize()
        with self._lock:
            self._poll()

    def stats(self) -> dict:
        """Counters and the memory report: ``slot_bytes``, ``num_slots``, ``slab_bytes``,
        ``bytes_in_use``, ``high_water_bytes`` (bytes of live entries on the host), ``pinned``, ..."""
        if self._inherited:
            raise _inherited_error(self.id, self._pid)
        d = dict(self._core.stats()) if self._core is not None else {}
        with self._lock:
            if not self._closed:
                self._poll()
            d.update(
                ring_id=self.id,
                keys=sum(1 for e in self._entries.values() if not e.evicted),
                evicted_keys=sum(1 for e in self._entries.values() if e.evicted),
                pending_sources=len(self._inflight[0]),
                pending_destinations=len(self._inflight[1]),
                closed=self._closed,
            )
        return d

    def close(self) -> None:
        """Wait for copies in flight, free the slab, unregister the id. Idempotent."""
        if self._core is None or self._closed:
            return
        with _REGISTRY_LOCK:
            _REGISTRY.pop(getattr(self, "id", None), None)
        try:
            if not self._inherited:  # an inherited core is the parent's: nothing to free here
                with self._device_guard():
                    self._core.close()
        finally:
            with self._lock:
                self._closed = True
                for e in self._entries.values():
                    self._disown(e)
                self._entries.clear()
                self._by_handle.clear()
                for q in self._inflight:
                    q.clear()

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def nbytes_of(shape, dtype: torch.dtype) -> int:
        """Bytes a tensor of ``shape`` and ``dtype`` needs in a slot."""
        return math.prod(shape) * torch.empty((), dtype=dtype).element_size()
