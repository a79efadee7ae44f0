"""Feature chunk, attention part: exact attention over query chunks with full keys and values.

Every attention processor of the adapted models ends in ``torch.nn.functional.
scaled_dot_product_attention``: directly (``AttnProcessor2_0``, CogVideoX, EasyAnimate) or through
diffusers' ``dispatch_attention_fn`` with its native backends (Wan, HunyuanVideo, LTX). Inside a
chunked block, :class:`QueryChunkedSDPA` (a ``TorchFunctionMode``) catches those calls and runs the
same function, with the same arguments and so the same backend choice, over slices of the
queries; keys and values stay whole, and the mask is sliced along its query (and batch) dimension
where it is not broadcast. Each query row's softmax runs over all keys either way, so the result
is the unchunked one up to the backend's own rounding. What it bounds: the (batch, heads, Lq, Lk)
score matrix of backends that materialise it (the math backend); calls that torch would run on a
fused kernel (flash, memory-efficient, cuDNN, CPU flash) never hold it and run unsplit. Attention
backends that bypass torch's SDPA (flash-attn, sage, xformers packages) are not touched: they
never materialise the scores either. Only that function call is split: the attention module, its
processor and its projections run as they would unchunked (their hooks and adapters included).

A piece is a run of query rows: ``rows`` = batch items × query positions ≤ the chunk (one batch
item's queries are split when they alone exceed it), so the scores of one piece take at most
``chunk × heads × Lk`` elements.

The function mode costs Python work on every torch call inside the block (a few microseconds each:
for a small block more than its kernels). :class:`SplitMemo` runs a block under it only while it
may split something: once a call with the same inputs (shapes, dtypes, strides, non-tensor
arguments), grad mode, autocast, SDPA backend switches and attention processors split nothing
(torch ran every attention call on a fused kernel, or each call fitted one chunk), later such
calls run without it: the same inputs give the same attention calls, so they would not split
either.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch.nn.attention import SDPBackend
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightcache.memory.chunk_spec import count

_SDPA = F.scaled_dot_product_attention


def sdpa_row_bytes(query: torch.Tensor, key: torch.Tensor) -> int:
    """Bytes of one query row's scores (all heads, all keys): the per-row cost of the widest
    intermediate of a materialising backend; half-precision inputs count 4 bytes per score, as a
    backend may run the softmax in float32."""
    heads = 1
    for s in query.shape[1:-2]:
        heads *= s
    elem = max(query.element_size(), 4) if query.dtype in (torch.float16, torch.bfloat16) else query.element_size()
    return heads * key.shape[-2] * elem


def _bind(args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in bound:
            raise TypeError(f"scaled_dot_product_attention got multiple values for argument {k!r}")
        bound[k] = v
    return bound


def _slice_mask(mask, q_ndim, b0, b1, q0, q1):
    """The mask rows of batch items [b0, b1) and queries [q0, q1) (broadcast dimensions kept)."""
    if mask is None:
        return None
    idx = [slice(None)] * mask.dim()
    lead = mask.dim() - q_ndim  # the mask broadcasts from the right against (batch, ..., Lq, Lk)
    if lead >= 0 and mask.shape[lead] != 1:
        idx[lead] = slice(b0, b1)
    if mask.dim() >= 2 and mask.shape[-2] != 1:
        idx[-2] = slice(q0, q1)
    return mask[tuple(idx)]


def _slice_batch(t, n, b0, b1):
    return t[b0:b1] if t.dim() >= 3 and t.shape[0] == n else t


def _materialises_scores(a: dict) -> bool:
    """Whether torch would run this SDPA call on its math backend, the one that holds the whole
    (queries x keys) score matrix. The fused backends (flash, memory-efficient, cuDNN; flash on
    CPU for 4-D inputs) never hold it, so splitting their queries would only add launches."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:  # unknown torch: assume the worst
        return True
    kw = {name: a[name] for name in ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa") if name in a}
    try:
        return choose(a["query"], a["key"], a["value"], **kw) == int(SDPBackend.MATH)
    except (RuntimeError, TypeError):
        return True


_LEAF = (int, float, bool, str, type(None))


def _arg_key(x):
    """What of one block argument can decide its attention calls' shapes and backends; raises
    TypeError for a value it cannot describe (then the call is not memoised)."""
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad)
    if isinstance(x, _LEAF):
        return (type(x), x)
    if isinstance(x, (tuple, list)):
        return (type(x), tuple(_arg_key(v) for v in x))
    if isinstance(x, dict):
        return (dict, tuple((k, _arg_key(v)) for k, v in x.items()))
    raise TypeError(type(x).__name__)


def _autocast_state():
    try:
        return (torch.is_autocast_enabled("cuda"), torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4 takes no device type
        return (torch.is_autocast_enabled(), torch.is_autocast_cpu_enabled())


def call_key(args, kwargs, extra=()):
    """The memo key of one block call (see the module docstring), or None when an argument is of a
    kind it cannot describe."""
    try:
        a = tuple(_arg_key(v) for v in args)
        kw = tuple((k, _arg_key(v)) for k, v in kwargs.items())
    except (TypeError, RuntimeError, NotImplementedError):  # an unknown value, or a tensor without strides
        return None
    b = torch.backends.cuda
    flags = (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(), b.cudnn_sdp_enabled())
    return (a, kw, torch.is_grad_enabled(), _autocast_state(), flags, tuple(extra))


# module -> the call keys (most recent last) of its calls that split nothing. Kept per module, not
# per hook, so that enabling lightcache again (a new hook on the same block) does not pay the mode
# again for inputs already seen; the chunk spec is part of the key.
_UNSPLIT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_KEYS_PER_MODULE = 8  # distinct input shapes remembered per block (CFG/no-CFG, trial forwards, sizes)


class SplitMemo:
    """Runs a block's forward under :class:`QueryChunkedSDPA`, or without it where a call with the
    same :func:`call_key` split no attention call. ``attention`` lists the block's attention
    modules (their processors are part of the key: a swapped processor may call SDPA
    differently); ``spec`` is the chunk spec (part of the key)."""

    def __init__(self, rows_for, attention=(), spec=None):
        self.rows_for = rows_for
        self.attention = list(attention)
        self.spec = (getattr(spec, "size", None), getattr(spec, "budget", None))
        self.mode_calls = 0  # calls run under the function mode (for tests and reports)
        self.last_key = None

    def unsplit(self, module):
        """Whether the last call of ``module`` seen here split nothing (and was memoised)."""
        return self.last_key is not None and self.last_key in _UNSPLIT.get(module, ())

    def __call__(self, fwd, module, args, kwargs):
        """(output, SDPA calls split)."""
        extra = [self.spec, module.training]
        extra += [(type(p), id(p)) for p in (getattr(m, "processor", None) for m in self.attention)]
        key = self.last_key = call_key(args, kwargs, extra)
        seen = _UNSPLIT.get(module)
        if key is not None and seen is not None and key in seen:
            return fwd(*args, **kwargs), 0
        mode = QueryChunkedSDPA(self.rows_for)
        self.mode_calls += 1
        with mode:
            out = fwd(*args, **kwargs)
        if key is not None and mode.calls == 0:
            if seen is None:
                seen = _UNSPLIT[module] = OrderedDict()
            seen[key] = True
            while len(seen) > _KEYS_PER_MODULE:
                seen.popitem(last=False)
        return out, mode.calls


def attention_modules(block):
    """The modules inside ``block`` that hold an attention processor."""
    return [m for m in block.modules() if hasattr(m, "processor") and hasattr(m, "set_processor")]


class QueryChunkedSDPA(TorchFunctionMode):
    """Runs ``F.scaled_dot_product_attention`` over query pieces of at most ``rows_for(q, k)`` rows.

    ``rows_for(query, key) -> int`` gives the chunk (query rows per piece) for one call: a fixed
    chunk size, or one derived from a byte budget and :func:`sdpa_row_bytes`."""

    def __init__(self, rows_for):
        super().__init__()
        self.rows_for = rows_for
        self.calls = 0  # SDPA calls that were split (for tests and reports)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not _SDPA:
            return func(*args, **kwargs)
        a = _bind(args, kwargs)
        q, k, v = a["query"], a["key"], a["value"]
        if q.dim() < 3:
            return func(*args, **kwargs)
        n, lq = q.shape[0], q.shape[-2]
        chunk = self.rows_for(q, k)
        if n * lq <= chunk or not _materialises_scores(a):
            return func(*args, **kwargs)
        if a.get("dropout_p", 0.0):
            # chunking would change which elements the dropout RNG drops
            raise ValueError("MemoryPlan.chunk_size: cannot chunk attention with dropout_p > 0; call .eval() first")
        if a.get("is_causal", False):
            # the causal diagonal of a query chunk is offset; the adapted video models never ask for it
            raise ValueError("MemoryPlan.chunk_size: causal attention (is_causal=True) cannot be query-chunked")
        self.calls += 1
        mask = a.get("attn_mask")
        rest = {key: val for key, val in a.items() if key not in ("query", "key", "value", "attn_mask")}
        out_shape = (*q.shape[:-1], v.shape[-1])
        if q.dim() == 4:
            # (N, Lq, H, Dv) storage seen as (N, H, Lq, Dv): the layout the fused kernels return, so
            # the processors' transpose + reshape stays a view as it is unchunked
            out = q.new_empty((n, lq, q.shape[1], v.shape[-1])).transpose(1, 2)
        else:
            out = q.new_empty(out_shape)
        if lq >= chunk:  # one batch item at a time, its queries split
            pieces = ((b, b + 1, s, min(s + chunk, lq)) for b in range(n) for s in range(0, lq, chunk))
        else:  # whole batch items, as many as fit
            per = max(1, chunk // lq)
            pieces = ((b, min(b + per, n), 0, lq) for b in range(0, n, per))
        n_pieces = 0
        for b0, b1, q0, q1 in pieces:
            n_pieces += 1
            out[b0:b1, ..., q0:q1, :] = func(
                q[b0:b1, ..., q0:q1, :],
                _slice_batch(k, n, b0, b1),
                _slice_batch(v, n, b0, b1),
                attn_mask=_slice_mask(mask, q.dim(), b0, b1, q0, q1),
                **rest,
            )
        count(n_pieces, out.numel() * out.element_size())
        return out
