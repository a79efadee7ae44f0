"""Deterministic CPU memory tracker for tests and benchmarks: live bytes of the tensors allocated
inside a block.

A ``TorchDispatchMode`` sees every aten op; each fresh (non-aliasing) output storage is counted
until its Python storage object is finalised (torch preserves one PyObject per storage, so the
finaliser runs exactly when the storage is freed). Allocations inside a single aten kernel
(BLAS packing buffers, ...) are invisible; everything a Python-level algorithm materialises is seen.
Call the CPU kernel function itself inside the block: a custom op is opaque to dispatch modes.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.window_peak = 0  # peak since the last window_start()
        self.largest = 0  # largest single allocation
        self.sizes = []

    def window_start(self) -> None:
        """Start a new peak window at the bytes alive now (re-entering one instance per stage keeps
        counting what earlier stages left alive, like a device allocator does)."""
        self.window_peak = self.live

    def _free(self, nbytes):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        # one output per schema return (a Tensor[] return is one list of tensors)
        outs = out if isinstance(out, tuple) and len(returns) > 1 else (out,)
        fresh = [t for ret, o in zip(returns, outs) if ret.alias_info is None for t in tree_leaves(o)]
        for t in fresh:  # views, in-place and out= results (alias_info set) take no new memory
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            n = st.nbytes()
            self.live += n
            self.peak = max(self.peak, self.live)
            self.window_peak = max(self.window_peak, self.live)
            self.largest = max(self.largest, n)
            self.sizes.append(n)
            weakref.finalize(st, self._free, n)
        return out
