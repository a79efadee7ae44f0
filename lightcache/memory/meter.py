"""Per-stage memory meter on CPU: a deterministic live-tensor byte tracker.

On CUDA the engine reads the allocator's peaks. On CPU, ``MemoryPlan(cpu_tracker=True)`` runs each
stage invocation under :class:`lightcache._live_bytes.LiveBytes`, which counts every tensor storage
allocated inside the stage until it is freed: the peak is the stage's own high-water mark above
what existed before it (weights, inputs), exact and repeatable, so tests can assert memory claims
without a GPU. Allocations inside one aten kernel (BLAS packing buffers) are not seen; lightcache's
own CPU kernels are called as Python functions while tracking so their buffers are seen.
"""

from __future__ import annotations

import threading

from lightcache._live_bytes import LiveBytes

_state = threading.local()


def tracking() -> bool:
    return getattr(_state, "depth", 0) > 0


class StageTracker:
    """Context manager: ``.peak`` is the stage's peak live bytes after exit."""

    def __enter__(self):
        self.mode = LiveBytes()
        _state.depth = getattr(_state, "depth", 0) + 1
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        _state.depth -= 1
        self.peak = self.mode.peak
        self.largest = self.mode.largest
