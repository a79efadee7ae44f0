"""Every lightcache op, declared in one place: ``import lightcache.ops`` registers them all.

Each op has
  * a CPU kernel: the plain-torch reference in :mod:`lightcache.reference`,
  * a CUDA kernel: a Triton launcher in :mod:`lightcache.kernels` (the ring-buffer ops go to the
    compiled ``lightcache._C`` through :mod:`lightcache.ring`),
  * a fake (meta) kernel, so the ops trace under ``torch.compile`` and ``opcheck``.

Arguments are validated here, identically for the real and the fake kernels, and bad input raises
``ValueError``/``TypeError`` naming the argument. Nothing falls back silently: a CUDA call without a
usable Triton raises instead of running the reference.

The public ops are listed in ``__all__``; ``help(lightcache.ops.<op>)`` gives each op's contract.
What they compute and why is in docs/design.md §5.
"""

from __future__ import annotations

import importlib
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from lightcache import reference as _ref

__all__ = [
    "reuse",
    "quantize_fp8",
    "lerp",
    "rel_l1",
    "lowfreq_energy",
    "chunked_ffn",
    "chunked_attention",
    "ring_store",
    "ring_prefetch",
    "ring_fetch",
    "ring_release",
    "FLOAT_DTYPES",
    "FP8_DTYPE",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_DTYPE = torch.float8_e4m3fn
_DTYPE_NAMES = "float32, float16, bfloat16"


# --------------------------------------------------------------------------------------------
# validation shared by real and fake kernels
# --------------------------------------------------------------------------------------------


def _check_tensor(name: str, t, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, names: str = _DTYPE_NAMES):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def _check_same_device(**tensors):
    items = [(n, t) for n, t in tensors.items() if t is not None]
    dev = items[0][1].device
    for n, t in items[1:]:
        if t.device != dev:
            raise ValueError(f"{n} is on {t.device} but {items[0][0]} is on {dev}; all tensors must share one device")


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor):
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def _check_finite_float(name: str, value, *, positive: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_positive_int(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _cuda_kernel(module: str, fn: str):
    """The Triton launcher ``lightcache.kernels.<module>.<fn>``; raises if Triton is unusable."""
    try:
        mod = importlib.import_module(f"lightcache.kernels.{module}")
    except ImportError as exc:  # no silent fallback to the CPU reference
        raise RuntimeError(
            f"lightcache CUDA kernel '{module}.{fn}' needs Triton, which failed to import ({exc}). "
            "Install triton (pip install triton) or run the op on CPU tensors."
        ) from exc
    return getattr(mod, fn)


# --------------------------------------------------------------------------------------------
# fused reuse: x + dequant(delta)
# --------------------------------------------------------------------------------------------


def _check_reuse(x, delta, scale):
    _check_tensor("x", x)
    _check_tensor("delta", delta, FLOAT_DTYPES + (FP8_DTYPE,), _DTYPE_NAMES + ", float8_e4m3fn")
    _check_same_shape("x", x, "delta", delta)
    if delta.dtype == FP8_DTYPE:
        if scale is None:
            raise ValueError("scale is required when delta is float8_e4m3fn (per-token scales, shape x.shape[:-1])")
        _check_tensor("scale", scale, (torch.float32,), "float32")
        if x.dim() < 1 or tuple(scale.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"scale must have shape x.shape[:-1] = {tuple(x.shape[:-1])}, got {tuple(scale.shape)}")
    elif scale is not None:
        raise ValueError("scale must be None unless delta is float8_e4m3fn")
    _check_same_device(x=x, delta=delta, scale=scale)


@torch.library.custom_op("lightcache::reuse", mutates_args=(), device_types="cpu")
def reuse(x: Tensor, delta: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    """``x + delta`` computed in fp32, returned in ``x.dtype``.

    ``delta`` may be stored in a narrower dtype: bf16/fp16, or float8_e4m3fn with per-token fp32
    ``scale`` of shape ``x.shape[:-1]`` (delta ≈ q * scale); it is dequantised in the same pass.
    """
    _check_reuse(x, delta, scale)
    return _ref.reuse(x, delta, scale)


@reuse.register_kernel("cuda")
def _reuse_cuda(x, delta, scale=None):
    _check_reuse(x, delta, scale)
    return _cuda_kernel("reuse", "reuse")(x, delta, scale)


@reuse.register_fake
def _reuse_fake(x, delta, scale=None):
    _check_reuse(x, delta, scale)
    return x.new_empty(x.shape)


def _check_quantize(x):
    _check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (the last one is the token's channels)")


@torch.library.custom_op("lightcache::quantize_fp8", mutates_args=(), device_types="cpu")
def quantize_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token fp8 quantisation: returns ``(q, scale)`` with ``q`` float8_e4m3fn of ``x``'s shape
    and ``scale`` fp32 of shape ``x.shape[:-1]``, ``scale = amax(|x|, dim=-1) / 448`` (1 where the
    row is all zero), ``q = x / scale`` rounded to nearest."""
    _check_quantize(x)
    return _ref.quantize_fp8(x)


@quantize_fp8.register_kernel("cuda")
def _quantize_fp8_cuda(x):
    _check_quantize(x)
    return _cuda_kernel("quantize", "quantize_fp8")(x)


@quantize_fp8.register_fake
def _quantize_fp8_fake(x):
    _check_quantize(x)
    return x.new_empty(x.shape, dtype=FP8_DTYPE), x.new_empty(x.shape[:-1], dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# lerp / first-order extrapolation of cached features
# --------------------------------------------------------------------------------------------


def _check_lerp(start, end, weight):
    _check_tensor("start", start)
    _check_tensor("end", end)
    _check_same_shape("start", start, "end", end)
    if end.dtype != start.dtype:
        raise TypeError(f"end must have the dtype of start ({start.dtype}), got {end.dtype}")
    _check_finite_float("weight", weight)
    _check_same_device(start=start, end=end)


@torch.library.custom_op("lightcache::lerp", mutates_args=(), device_types="cpu")
def lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    """``start + weight * (end - start)`` in fp32, returned in ``start.dtype``.

    ``weight`` in [0, 1] interpolates; ``weight > 1`` is first-order (Taylor) extrapolation:
    for features f' at step t' and f at t, f(t'') ≈ lerp(f', f, (t'' - t') / (t - t'))."""
    _check_lerp(start, end, weight)
    return _ref.lerp(start, end, weight)


@lerp.register_kernel("cuda")
def _lerp_cuda(start, end, weight):
    _check_lerp(start, end, weight)
    return _cuda_kernel("lerp", "lerp")(start, end, weight)


@lerp.register_fake
def _lerp_fake(start, end, weight):
    _check_lerp(start, end, weight)
    return start.new_empty(start.shape)


# --------------------------------------------------------------------------------------------
# fused relative L1: both means in one pass
# --------------------------------------------------------------------------------------------


def _check_rel_l1(a, b):
    _check_tensor("a", a)
    _check_tensor("b", b)
    _check_same_shape("a", a, "b", b)
    _check_same_device(a=a, b=b)


@torch.library.custom_op("lightcache::rel_l1", mutates_args=(), device_types="cpu")
def rel_l1(a: Tensor, b: Tensor) -> Tensor:
    """fp32 tensor ``[mean|a - b|, mean|b|]`` on a's device (no host sync). Empty inputs give NaNs,
    as ``torch.mean`` does."""
    _check_rel_l1(a, b)
    return _ref.rel_l1(a, b)


@rel_l1.register_kernel("cuda")
def _rel_l1_cuda(a, b):
    _check_rel_l1(a, b)
    return _cuda_kernel("rel_l1", "rel_l1")(a, b)


@rel_l1.register_fake
def _rel_l1_fake(a, b):
    _check_rel_l1(a, b)
    return a.new_empty((2,), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# low-frequency energy of a difference
# --------------------------------------------------------------------------------------------


def _check_lowfreq(a, b, radius_ratio):
    _check_tensor("a", a)
    _check_tensor("b", b)
    _check_same_shape("a", a, "b", b)
    if a.dim() < 2:
        raise ValueError(f"a must have at least 2 dimensions (..., H, W), got shape {tuple(a.shape)}")
    _check_finite_float("radius_ratio", radius_ratio, positive=True)
    _check_same_device(a=a, b=b)


@torch.library.custom_op("lightcache::lowfreq_energy", mutates_args=(), device_types="cpu")
def lowfreq_energy(a: Tensor, b: Tensor, radius_ratio: float = 0.2) -> Tensor:
    """LFD = ‖LP(a − b)‖₂ as an fp32 0-d tensor.

    Every leading index of ``(..., H, W)`` is one frame. LP keeps the 2-D DFT coefficients whose
    centred signed frequency (u, v) satisfies u² + v² ≤ r², r = radius_ratio · min(H, W)
    (0.2 = the paper's min(H, W)/5). The norm is the spatial-domain L2 norm of the low-passed
    difference, i.e. by Parseval sqrt(Σ_frames Σ_kept |X(u, v)|² / (H·W)). Only the kept
    frequencies are computed (partial DFT by small matrix products). a − b is never materialised
    whole: the CUDA kernel forms it tile by tile in registers, the CPU kernel in bounded slices
    (differencing before the transform keeps the error relative to ‖a − b‖ when a ≈ b).
    """
    _check_lowfreq(a, b, radius_ratio)
    return _ref.lowfreq_energy(a, b, radius_ratio)


@lowfreq_energy.register_kernel("cuda")
def _lowfreq_energy_cuda(a, b, radius_ratio=0.2):
    _check_lowfreq(a, b, radius_ratio)
    return _cuda_kernel("lowfreq", "lowfreq_energy")(a, b, radius_ratio)


@lowfreq_energy.register_fake
def _lowfreq_energy_fake(a, b, radius_ratio=0.2):
    _check_lowfreq(a, b, radius_ratio)
    return a.new_empty((), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# chunked FFN: Linear -> GELU(tanh) -> Linear over token chunks, optional gated residual
# --------------------------------------------------------------------------------------------


def _ffn_out_shape(x, w2):
    return tuple(x.shape[:-1]) + (w2.shape[0],)


def _check_ffn(x, w1, b1, w2, b2, chunk_size, gate, residual):
    _check_tensor("x", x)
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (L, D) or (B, L, D), got shape {tuple(x.shape)}")
    for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2), ("gate", gate), ("residual", residual)):
        if t is not None:
            _check_tensor(name, t)
            if t.dtype != x.dtype:
                raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    d = x.shape[-1]
    if w1.dim() != 2 or w1.shape[1] != d:
        raise ValueError(f"w1 must be (hidden, {d}) (nn.Linear layout), got {tuple(w1.shape)}")
    hidden = w1.shape[0]
    if w2.dim() != 2 or w2.shape[1] != hidden:
        raise ValueError(f"w2 must be (out, {hidden}) (nn.Linear layout), got {tuple(w2.shape)}")
    if b1 is not None and tuple(b1.shape) != (hidden,):
        raise ValueError(f"b1 must have shape ({hidden},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (w2.shape[0],):
        raise ValueError(f"b2 must have shape ({w2.shape[0]},), got {tuple(b2.shape)}")
    _check_positive_int("chunk_size", chunk_size)
    out_shape = _ffn_out_shape(x, w2)
    if gate is not None:
        try:
            torch.broadcast_shapes(tuple(gate.shape), out_shape)
            ok = torch.broadcast_shapes(tuple(gate.shape), out_shape) == torch.Size(out_shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"gate must broadcast to the output shape {out_shape}, got {tuple(gate.shape)}")
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"residual must have the output shape {out_shape}, got {tuple(residual.shape)}")
    _check_same_device(x=x, w1=w1, b1=b1, w2=w2, b2=b2, gate=gate, residual=residual)


@torch.library.custom_op("lightcache::chunked_ffn", mutates_args=(), device_types="cpu")
def chunked_ffn(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    chunk_size: int,
    gate: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """``y = GELU_tanh(x @ w1ᵀ + b1) @ w2ᵀ + b2``, then ``residual + gate * y`` when given
    (``gate`` alone: ``gate * y``; ``residual`` alone: ``residual + y``).

    Tokens (dim -2 of x) are processed ``chunk_size`` at a time through one reused hidden buffer,
    so the widest intermediate is (chunk_size, hidden), not (L, hidden). ``gate`` broadcasts to the
    output shape; ``residual`` has the output shape."""
    _check_ffn(x, w1, b1, w2, b2, chunk_size, gate, residual)
    return _ref.chunked_ffn(x, w1, b1, w2, b2, chunk_size, gate, residual)


@chunked_ffn.register_kernel("cuda")
def _chunked_ffn_cuda(x, w1, b1, w2, b2, chunk_size, gate=None, residual=None):
    _check_ffn(x, w1, b1, w2, b2, chunk_size, gate, residual)
    return _cuda_kernel("ffn", "chunked_ffn")(x, w1, b1, w2, b2, chunk_size, gate, residual)


@chunked_ffn.register_fake
def _chunked_ffn_fake(x, w1, b1, w2, b2, chunk_size, gate=None, residual=None):
    _check_ffn(x, w1, b1, w2, b2, chunk_size, gate, residual)
    return x.new_empty(_ffn_out_shape(x, w2))


# --------------------------------------------------------------------------------------------
# chunked attention with the video-DiT prologue fused (RMS-norm of q and k, rotary embedding)
# --------------------------------------------------------------------------------------------


def _check_attention(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, L, heads, head_dim), got shape {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    b, lq, h, d = q.shape
    if k.shape[0] != b or k.shape[2] != h or k.shape[3] != d:
        raise ValueError(f"k must be ({b}, Lk, {h}, {d}), got {tuple(k.shape)}")
    _check_same_shape("k", k, "v", v)
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None:
            _check_tensor(name, w)
            if tuple(w.shape) not in ((h * d,), (d,)):
                raise ValueError(
                    f"{name} must be ({h * d},) for an RMS-norm across heads or ({d},) per head, got {tuple(w.shape)}"
                )
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError("rope_cos and rope_sin must be given together")
    if rope_cos is not None:
        if d % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {d}")
        if lq != k.shape[1]:
            raise ValueError(f"rotary embedding needs self-attention (Lq == Lk), got Lq={lq}, Lk={k.shape[1]}")
        for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
            _check_tensor(name, t, (torch.float32,), "float32")
            if tuple(t.shape) != (lq, d // 2):
                raise ValueError(f"{name} must be (L, head_dim/2) = ({lq}, {d // 2}), got {tuple(t.shape)}")
    _check_finite_float("eps", eps, positive=True)
    _check_positive_int("chunk_size", chunk_size)
    if scale is not None:
        _check_finite_float("scale", scale, positive=True)
    _check_same_device(
        q=q, k=k, v=v, q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, rope_cos=rope_cos, rope_sin=rope_sin
    )


@torch.library.custom_op("lightcache::chunked_attention", mutates_args=(), device_types="cpu")
def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_norm_weight: Optional[Tensor],
    k_norm_weight: Optional[Tensor],
    rope_cos: Optional[Tensor],
    rope_sin: Optional[Tensor],
    eps: float,
    chunk_size: int,
    scale: Optional[float] = None,
) -> Tensor:
    """Exact softmax attention of ``q`` (B, L, H, D) against full ``k``, ``v`` (B, Lk, H, D), with
    the prologue applied on the fly, one block of queries (``chunk_size`` rows) at a time:

    * RMS-norm: ``t * rsqrt(mean(t²) + eps) * weight`` — over all heads of a token when the weight
      has shape (H·D,) (Wan), per head when it has shape (D,) (HunyuanVideo); None skips it;
    * rotary embedding on interleaved pairs (t[2i], t[2i+1]) by angle with ``rope_cos``/``rope_sin``
      of shape (L, D/2) (diffusers' Wan/HunyuanVideo convention); None skips it.

    Normalised/rotated q and k are never materialised for the whole sequence. Returns (B, L, H, D)
    in q's dtype. ``scale`` defaults to 1/sqrt(D)."""
    _check_attention(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale)
    return _ref.chunked_attention(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale)


@chunked_attention.register_kernel("cuda")
def _chunked_attention_cuda(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale=None):
    _check_attention(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale)
    return _cuda_kernel("attention", "chunked_attention")(
        q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale
    )


@chunked_attention.register_fake
def _chunked_attention_fake(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale=None):
    _check_attention(q, k, v, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale)
    return q.new_empty(q.shape)


# --------------------------------------------------------------------------------------------
# ring buffer: store / prefetch / fetch / release (implemented by lightcache.ring over lightcache._C)
# --------------------------------------------------------------------------------------------
# RING-OPS-SECTION (owned by the ring-buffer work). The ops drive lightcache.ring.RingBuffer
# objects named by their integer id (RingBuffer.id); one implementation serves every device, the
# ring's device decides where the copies run. Dtype/shape of dst vs. the stored entry can only be
# checked at run time (the fake cannot see the ring's contents).


def _check_ring_args(ring, key, name: Optional[str] = None, t=None, *, store: bool = False):
    for arg, v in (("ring", ring), ("key", key)):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
            raise TypeError(f"{arg} must be an int, got {type(v).__name__}")
    if t is not None and not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(ring, int):
        return  # symbolic id: checked when the op runs
    from lightcache.ring import get_ring

    r = get_ring(ring)
    if t is None:
        return
    if t.device != r.device:
        raise ValueError(f"{name} is on {t.device} but ring {ring} is on {r.device}")
    if store:
        nbytes = t.numel() * t.element_size()
        if isinstance(nbytes, int) and nbytes > r.slot_bytes:
            raise ValueError(
                f"{name} needs {nbytes} bytes ({tuple(t.shape)} {t.dtype}) but slot_bytes of ring {ring} "
                f"is {r.slot_bytes}"
            )
    elif not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the ring writes the stored bytes into it)")


def _get_ring(ring):
    from lightcache.ring import get_ring

    return get_ring(int(ring))


@torch.library.custom_op("lightcache::ring_store", mutates_args=())
def ring_store(src: Tensor, ring: int, key: int) -> None:
    """Store ``src`` under ``key`` in ring ``ring``: async device->host copy into a pinned slot,
    ordered after the current stream's queued work (replaces an existing ``key``). See
    :meth:`lightcache.ring.RingBuffer.store` for the lifetime contract of ``src``."""
    _check_ring_args(ring, key, "src", src, store=True)
    _get_ring(ring).store(src, key)


@ring_store.register_fake
def _ring_store_fake(src, ring, key):
    _check_ring_args(ring, key, "src", src, store=True)


@torch.library.custom_op("lightcache::ring_prefetch", mutates_args=("dst",))
def ring_prefetch(ring: int, key: int, dst: Tensor) -> None:
    """Start the host->device copy of ``key`` into ``dst`` on the ring's copy stream, ordered after
    the current stream's queued work. ``dst`` belongs to the ring until :func:`ring_fetch`."""
    _check_ring_args(ring, key, "dst", dst)
    _get_ring(ring).prefetch(key, dst)


@ring_prefetch.register_fake
def _ring_prefetch_fake(ring, key, dst):
    _check_ring_args(ring, key, "dst", dst)


@torch.library.custom_op("lightcache::ring_fetch", mutates_args=("dst",))
def ring_fetch(ring: int, key: int, dst: Tensor) -> None:
    """Make the current stream wait for ``key``'s bytes in ``dst`` (copying first unless ``dst``
    was prefetched). CUDA: a stream-to-stream wait, no host sync. CPU: returns with ``dst`` filled."""
    _check_ring_args(ring, key, "dst", dst)
    _get_ring(ring).fetch(key, dst)


@ring_fetch.register_fake
def _ring_fetch_fake(ring, key, dst):
    _check_ring_args(ring, key, "dst", dst)


@torch.library.custom_op("lightcache::ring_release", mutates_args=())
def ring_release(ring: int, key: int) -> None:
    """Free ``key``'s slot (an evicted key is just forgotten). Unknown keys raise ValueError."""
    _check_ring_args(ring, key)
    _get_ring(ring).release(key)


@ring_release.register_fake
def _ring_release_fake(ring, key):
    _check_ring_args(ring, key)


def _register_ordered_effect(qualname: str) -> None:
    """ring_store/ring_release return nothing and mutate no input, so torch.compile would
    dead-code-eliminate them (measured: a compiled store-then-fetch lost the store). An ORDERED
    effect keeps them, in program order, threaded by effect tokens."""
    ns, name = qualname.split("::")
    opoverload = getattr(getattr(torch.ops, ns), name).default
    try:
        from torch._library.effects import EffectType

        torch.library._register_effectful_op(qualname, EffectType.ORDERED)
        return
    except (ImportError, AttributeError):
        pass
    try:  # torch < 2.8 kept the registry here
        from torch._higher_order_ops.effects import _EffectType, _register_effectful_op

        _register_effectful_op(opoverload, _EffectType.ORDERED)
        return
    except (ImportError, AttributeError):
        pass
    torch.fx.node.has_side_effect(opoverload)  # last resort: at least not eliminated


_register_ordered_effect("lightcache::ring_store")
_register_ordered_effect("lightcache::ring_release")


def _document_ops() -> None:
    """Give each op object its function's signature and docstring: ``help(lightcache.ops.reuse)``
    would otherwise show only torch's CustomOpDef class documentation. Documentation only."""
    import inspect

    for name in __all__:
        fn = getattr(globals()[name], "_init_fn", None)  # the decorated function (torch's CustomOpDef)
        if fn is not None and fn.__doc__:
            globals()[name].__doc__ = f"torch.ops.lightcache.{name}{inspect.signature(fn)}\n\n{inspect.cleandoc(fn.__doc__)}"


_document_ops()
