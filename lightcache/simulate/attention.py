"""What ``scaled_dot_product_attention`` holds on the device, per backend, during a simulation.

On the meta device torch runs every SDPA call through its math composite (it materialises the
(B, H, L, S) score matrix), which is not what a CUDA run does. :class:`AttentionEmulation` (a
``TorchFunctionMode``) intercepts ``torch.nn.functional.scaled_dot_product_attention`` and
allocates what the chosen backend's kernel returns, mirroring the C++ composite
(``aten/src/ATen/native/transformers/attention.cpp``): a boolean mask becomes a float mask of the
query's dtype first (every fused backend), then

* ``"flash"`` (CUDA FlashAttention-2): the output (the query's shape with the value's head size,
  in the query's dtype) and the log-sum-exp, (B, H, L) fp32; no attention mask; head sizes equal
  and <= 256; fp16/bf16 only;
* ``"efficient"`` (CUDA memory-efficient attention): the output; the log-sum-exp only when
  gradients are needed (never in a pipeline call), a boolean/float mask padded to a multiple of 8
  key positions when its rows are not aligned; fp16/bf16/fp32, head sizes multiples of 8 (fp16,
  bf16) or 4 (fp32);
* ``"cudnn"`` (cuDNN attention): the output (softmax statistics only with gradients); fp16/bf16,
  head sizes <= 128 and multiples of 8, more than one key;
* ``"math"``: torch's own math composite, run as is (the score matrix, its softmax, fp32 upcasts
  of fp16/bf16 inputs);
* ``"cpu"``: what torch on a CPU does (its flash kernel: output + (B, H, L) fp32 log-sum-exp, when
  the head sizes agree and there is no dropout; else math). This is the backend of the CPU
  tracker's runs, so a meta simulation with it counts what the tracker counts.

``"auto"`` picks per call what torch's CUDA dispatcher picks on an sm90 GPU (H100/H200) with a
cuDNN >= 9.15.1 build (torch's own priority there: cuDNN, flash, efficient, math), from each call's
dtype, head size and mask. A named backend is tried first and the same order applies where it
cannot run the call (flash never takes a mask); every call's backend is counted (``used``).

The same mode runs lightcache's ``chunked_ffn`` op on meta tensors as its CPU reference
(``lightcache.reference.chunked_ffn``): that is what lightcache itself runs under the CPU tracker
(lightcache.memory.chunk), so the output and the one-chunk hidden buffer are counted as the
tracker counts them (the op's fake kernel would show the output only).

Not counted (what no simulation of shapes can see): workspaces cuDNN and FlashAttention take from
the caching allocator inside the kernel, and the allocator's block rounding.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

BACKENDS = ("auto", "cudnn", "flash", "efficient", "math", "cpu")
_CUDA_ORDER = ("cudnn", "flash", "efficient", "math")
_LOW = (torch.float16, torch.bfloat16)


def _arguments(args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    a = dict(zip(names, args))
    a.update(kwargs or {})
    a.setdefault("attn_mask", None)
    a.setdefault("dropout_p", 0.0)
    a.setdefault("is_causal", False)
    a.setdefault("scale", None)
    a.setdefault("enable_gqa", False)
    return a


def can_run(backend: str, q, k, v, mask, dropout: float, is_causal: bool) -> bool:
    """Whether ``backend`` takes this call (the checks of torch's dispatcher that depend on what a
    simulation knows: dtype, head sizes, mask, causal shape, dims)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return backend == "math"
    dq, dk, dv = q.shape[-1], k.shape[-1], v.shape[-1]
    if backend == "math":
        return True
    if backend == "cpu":
        return dq == dk == dv and dropout == 0.0
    if backend == "flash":
        return (q.dtype in _LOW and mask is None and dq == dk == dv and dq <= 256
                and not (is_causal and q.shape[-2] != k.shape[-2]))
    if backend == "efficient":
        align = 8 if q.dtype in _LOW else 4
        return (q.dtype in _LOW + (torch.float32,) and dq == dk and dq % align == 0 and dv % align == 0)
    if backend == "cudnn":
        return (q.dtype in _LOW and dq <= 128 and dv <= 128 and dq % 8 == 0 and dv % 8 == 0
                and k.shape[-2] != 1 and dropout * 16.0 == math.floor(dropout * 16.0))
    raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")


def choose(backend: str, q, k, v, mask, dropout: float, is_causal: bool) -> str:
    """The backend a call runs on: ``backend`` if it can, else torch's CUDA order (or, for
    ``"cpu"``, the CPU's: flash for CPU, else math)."""
    if backend == "cpu":
        return "cpu" if can_run("cpu", q, k, v, mask, dropout, is_causal) else "math"
    if backend == "math":
        return "math"
    order = _CUDA_ORDER if backend == "auto" else (backend,) + tuple(b for b in _CUDA_ORDER if b != backend)
    for b in order:
        if can_run(b, q, k, v, mask, dropout, is_causal):
            return b
    return "math"


def _float_mask(mask, dtype):
    """The composite's ``convert_boolean_attn_mask``: where(mask, 0, -inf) in the query's dtype."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    zero = torch.scalar_tensor(0.0, dtype=dtype, device=mask.device)
    ninf = torch.scalar_tensor(-float("inf"), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, ninf)


def _is_chunked_ffn(func) -> bool:
    try:
        packet = torch.ops.lightcache.chunked_ffn
    except (AttributeError, RuntimeError):
        return False
    return func is packet or func is getattr(packet, "default", None)


def _out_shape(q, v):
    return (*q.shape[:-1], v.shape[-1])


class AttentionEmulation(TorchFunctionMode):
    """Run every SDPA call as ``backend`` would (see the module doc); ``used`` counts the backends
    the calls ran on."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"attention must be one of {list(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.used: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _is_chunked_ffn(func) and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
            from lightcache.reference import chunked_ffn

            return chunked_ffn(*args, **(kwargs or {}))
        if func is not F.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        a = _arguments(args, kwargs)
        q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
        b = choose(self.backend, q, k, v, mask, float(a["dropout_p"]), bool(a["is_causal"]))
        self.used[b] += 1
        if b == "math":
            return func(*args, **(kwargs or {}))
        mask = _float_mask(mask, q.dtype)
        if b == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, float(a["dropout_p"]), bool(a["is_causal"]), attn_mask=mask, scale=a["scale"])
            del lse
            return out
        if b == "efficient" and mask is not None and mask.shape[-1] % 8 != 0:
            # preprocess_mask: rows not aligned to 8 elements are padded (then sliced back)
            keys = mask.shape[-1]
            mask = F.pad(mask, (0, 8 - keys % 8))[..., :keys]
        out = torch.empty(_out_shape(q, v), dtype=q.dtype, device=q.device)
        if b == "flash":
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            del lse
        del mask
        return out
