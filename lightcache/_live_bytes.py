"""Deterministic CPU memory tracker for tests and benchmarks: live bytes of the tensors allocated
inside a block.

A ``TorchDispatchMode`` sees every aten op; each fresh (non-aliasing) output storage is counted
until its Python storage object is finalised (torch preserves one PyObject per storage, so the
finaliser runs exactly when the storage is freed). Allocations inside a single aten kernel
(BLAS packing buffers, ...) are invisible; everything a Python-level algorithm materialises is seen.
Call the CPU kernel function itself inside the block: a custom op is opaque to dispatch modes.

Meta-device dry runs (``LiveBytes(memo={})``; the sliced decode's budget planning): torch computes
most meta kernels in Python (its reference decompositions), about a millisecond an op, and a dry
run repeats the same ops with the same shapes. An op whose outputs are all fresh storages is, on
meta tensors, a function of its arguments' metadata (shapes, strides, dtypes, offsets: there are no
values), so its outputs' metadata is remembered per (op, arguments' metadata) and later calls get
``empty_strided`` tensors of exactly that metadata: fresh storages of the same sizes, counted the
same. Ops whose outputs alias an input or each other, or are not tensors, and ops on any tensor
that is not meta, always run. (lightcache.simulate.tracker's whole-call counter keeps the same memo.)
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_SCHEMA = {}


def _schema_info(func):
    """(number of returns, indices of the returns without alias annotation, memo-eligible), per op."""
    info = _SCHEMA.get(func)
    if info is None:
        schema = func._schema
        rets = schema.returns
        fresh = tuple(i for i, r in enumerate(rets) if r.alias_info is None)
        eligible = (bool(rets) and all(r.alias_info is None for r in rets)
                    and all(a.alias_info is None for a in schema.arguments)
                    and all(str(r.type) == "Tensor" for r in rets))
        info = _SCHEMA[func] = (len(rets), fresh, eligible)
    return info


_NO = object()  # an argument the memo cannot key on


def _meta_of(x):
    if isinstance(x, torch.Tensor):
        if x.device.type != "meta":
            return _NO
        return ("T", tuple(x.shape), x.stride(), x.dtype, x.storage_offset())
    if isinstance(x, (list, tuple)):
        parts = tuple(_meta_of(v) for v in x)
        return _NO if any(p is _NO for p in parts) else ("L", parts)
    if x is None or isinstance(x, (int, float, bool, str, torch.dtype, torch.device, torch.layout,
                                   torch.memory_format)):
        return (type(x).__name__, x)
    return _NO  # anything else (a generator, a symbolic size): not remembered


def _memo_key(func, args, kwargs):
    if not _schema_info(func)[2]:
        return None  # in-place, out= and view ops, and non-tensor returns, run as they are
    parts = []
    for v in args:
        m = _meta_of(v)
        if m is _NO:
            return None
        parts.append(m)
    if kwargs:
        for k in sorted(kwargs):
            m = _meta_of(kwargs[k])
            if m is _NO:
                return None
            parts.append((k, m))
    return (func, tuple(parts))


def _memo_entry(func, out, args, kwargs):
    outs = out if isinstance(out, tuple) else (out,)
    if not all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in outs):
        return None
    ins = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    seen = set()
    for t in outs:
        st = t.untyped_storage()
        if id(st) in ins or id(st) in seen or t.storage_offset() != 0:
            return None
        if st.nbytes() != _span_bytes(t):
            return None
        seen.add(id(st))
    return ("one" if not isinstance(out, tuple) else "tuple",
            tuple((tuple(t.shape), t.stride(), t.dtype) for t in outs))


def _span_bytes(t) -> int:
    if t.numel() == 0:
        return 0
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return span * t.element_size()


def memo_call(memo, func, args, kwargs):
    """``func(*args, **kwargs)``, answered from ``memo`` (a dict; None: always run) when the op and
    its arguments' metadata were seen (see the module doc); returns (output, whether remembered)."""
    if memo is None:
        return func(*args, **kwargs), False
    key = _memo_key(func, args, kwargs)
    if key is None:
        return func(*args, **kwargs), False
    hit = memo.get(key)
    if hit is not None:
        made = [torch.empty_strided(size, stride, dtype=dtype, device="meta") for size, stride, dtype in hit[1]]
        return (made[0] if hit[0] == "one" else tuple(made)), True
    out = func(*args, **kwargs)
    entry = _memo_entry(func, out, args, kwargs)
    if entry is not None:
        memo[key] = entry
    return out, False


class LiveBytes(TorchDispatchMode):
    """``memo``: None, or a dict remembering meta ops' output metadata (see the module doc; may be
    shared by several counters: an entry depends on the op and its arguments only)."""

    def __init__(self, memo: dict = None):
        super().__init__()
        self.memo = memo
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
        kwargs = kwargs or {}
        out = func(*args, **kwargs) if self.memo is None else memo_call(self.memo, func, args, kwargs)[0]
        n_returns, fresh_returns, _ = _schema_info(func)
        # one output per schema return (a Tensor[] return is one list of tensors); views, in-place
        # and out= results (alias_info set) take no new memory
        outs = out if isinstance(out, tuple) and n_returns > 1 else (out,)
        for i in fresh_returns:
            if i >= len(outs):
                break
            o = outs[i]
            for t in ((o,) if isinstance(o, torch.Tensor) else tree_leaves(o)):
                if not isinstance(t, torch.Tensor):
                    continue
                st = t.untyped_storage()
                n = st.nbytes()
                self.live += n
                if self.live > self.peak:
                    self.peak = self.live
                if self.live > self.window_peak:
                    self.window_peak = self.live
                if n > self.largest:
                    self.largest = n
                self.sizes.append(n)
                weakref.finalize(st, self._free, n)
        return out
