"""Triton kernels of ``lightcache::chunked_attention``: flash attention with the video-DiT prologue
(RMS-norm of q and k, interleaved rotary embedding) applied to each tile as it is loaded.

Two kernels:
  * ``_inv_rms_kernel``: per-token 1/RMS of q and of k, (B, L, H) or (B, L, 1) fp32 — the only
    full-length tensors besides the output (H·4 bytes per token, vs. H·D·2 for a normalised copy);
  * ``_attn_fwd_kernel``: one program = BLOCK_M queries of one (batch, head). The even and odd
    columns of each q/k tile are loaded separately, so the rotation is elementwise and
    q·k = q_even·k_even + q_odd·k_odd needs no re-interleave (two dots of depth D/2, hence D/2 ≥ 16).
    Online softmax in fp32 (exp2), P@V accumulated in fp32.

chunk_size on CUDA: the kernel never materialises anything larger than a tile, so memory does not
depend on it. The launcher issues one launch per query chunk of ``chunk_size`` rows rounded up to a
multiple of BLOCK_M (so no tile straddles two launches); chunk_size >= L gives a single launch,
which is the fastest choice. Small chunks only add launches.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from lightcache.kernels._launch import on_device

_LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (32, 64, 128)


@triton.jit
def _inv_rms_kernel(
    X, OUT, L, H,
    sxb, sxl, sxh, sxd,
    sob, sol, soh,
    eps,
    ACROSS_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = offs_t < L
    offs_d = tl.arange(0, D)
    ptrs = X + b * sxb + offs_t.to(tl.int64)[:, None] * sxl + offs_d[None, :] * sxd
    out_ptrs = OUT + b * sob + offs_t.to(tl.int64) * sol
    if ACROSS_HEADS:
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for h in range(H):
            x = tl.load(ptrs + h * sxh, mask=tmask[:, None], other=0.0).to(tl.float32)
            acc += tl.sum(x * x, axis=1)
        tl.store(out_ptrs, 1.0 / tl.sqrt(acc / (H * D) + eps), mask=tmask)
    else:
        for h in range(H):
            x = tl.load(ptrs + h * sxh, mask=tmask[:, None], other=0.0).to(tl.float32)
            ms = tl.sum(x * x, axis=1) / D
            tl.store(out_ptrs + h * soh, 1.0 / tl.sqrt(ms + eps), mask=tmask)


@triton.jit
def _prologue(
    te, to, offs, mask, b, h, offs_i,
    INV, sib, sil, sih,
    W, swh, swd,
    COS, SIN, scl, scd, ssl, ssd,
    HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
):
    """Normalise and rotate the even/odd halves (fp32, [rows, D/2]) of a tile; returns them fp32,
    rounded to the input dtype after each stage as diffusers' eager path is."""
    dt = te.dtype  # caller passes tiles in the input dtype
    te = te.to(tl.float32)
    to = to.to(tl.float32)
    if HAS_NORM:
        inv = tl.load(INV + b * sib + offs.to(tl.int64) * sil + h * sih, mask=mask, other=0.0)
        we = tl.load(W + h * swh + (2 * offs_i) * swd).to(tl.float32)
        wo = tl.load(W + h * swh + (2 * offs_i + 1) * swd).to(tl.float32)
        te = (te * inv[:, None] * we[None, :]).to(dt).to(tl.float32)
        to = (to * inv[:, None] * wo[None, :]).to(dt).to(tl.float32)
    if HAS_ROPE:
        c = tl.load(COS + offs[:, None] * scl + offs_i[None, :] * scd, mask=mask[:, None], other=0.0)
        s = tl.load(SIN + offs[:, None] * ssl + offs_i[None, :] * ssd, mask=mask[:, None], other=0.0)
        re = te * c - to * s
        ro = te * s + to * c
        te = re
        to = ro
    return te.to(dt), to.to(dt)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O,
    QINV, KINV, QW, KW, COS, SIN,
    sqb, sql, sqh, sqd,
    skb, skl, skh, skd,
    svb, svl, svh, svd,
    sob, sol, soh, sod,
    sqib, sqil, sqih,
    skib, skil, skih,
    sqwh, sqwd, skwh, skwd,
    scl, scd, ssl, ssd,
    H, Lk, q_start, q_end, qk_scale,
    HAS_QN: tl.constexpr, HAS_KN: tl.constexpr, HAS_ROPE: tl.constexpr,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = q_start + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < q_end
    offs_i = tl.arange(0, HALF)
    offs_d = tl.arange(0, 2 * HALF)

    q_rows = Q + b * sqb + h * sqh + offs_m.to(tl.int64)[:, None] * sql
    qe = tl.load(q_rows + (2 * offs_i)[None, :] * sqd, mask=mmask[:, None], other=0.0)
    qo = tl.load(q_rows + (2 * offs_i + 1)[None, :] * sqd, mask=mmask[:, None], other=0.0)
    qe, qo = _prologue(
        qe, qo, offs_m, mmask, b, h, offs_i, QINV, sqib, sqil, sqih, QW, sqwh, sqwd,
        COS, SIN, scl, scd, ssl, ssd, HAS_QN, HAS_ROPE,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, 2 * HALF], dtype=tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nmask = offs_n < Lk
        k_rows = k_base + offs_n.to(tl.int64)[:, None] * skl
        ke = tl.load(k_rows + (2 * offs_i)[None, :] * skd, mask=nmask[:, None], other=0.0)
        ko = tl.load(k_rows + (2 * offs_i + 1)[None, :] * skd, mask=nmask[:, None], other=0.0)
        ke, ko = _prologue(
            ke, ko, offs_n, nmask, b, h, offs_i, KINV, skib, skil, skih, KW, skwh, skwd,
            COS, SIN, scl, scd, ssl, ssd, HAS_KN, HAS_ROPE,
        )
        s = tl.dot(qe, tl.trans(ke), input_precision=DOT_PREC)
        s = tl.dot(qo, tl.trans(ko), s, input_precision=DOT_PREC)
        s = tl.where(nmask[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + offs_n.to(tl.int64)[:, None] * svl + offs_d[None, :] * svd, mask=nmask[:, None], other=0.0
        )
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m.to(tl.int64)[:, None] * sol + offs_d[None, :] * sod
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mmask[:, None])


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _inv_rms(t: Tensor, across_heads: bool, eps: float) -> Tensor:
    n_batch, length, heads, hd = t.shape
    out = torch.empty((n_batch, length, 1 if across_heads else heads), dtype=torch.float32, device=t.device)
    if length == 0:
        return out
    block_t = 32 if t.is_cuda else 64
    grid = (triton.cdiv(length, block_t), n_batch)
    _inv_rms_kernel[grid](
        t, out, length, heads,
        *t.stride(),
        *out.stride(),
        float(eps),
        ACROSS_HEADS=across_heads, D=hd, BLOCK_T=block_t,
    )
    return out


# Shared memory of one program, as Triton lays this kernel out: each pipeline stage buffers one K
# and one V tile (BLOCK_N x D; K as its even and odd halves) plus a barrier word, and the layout
# conversions of the dot operands take the q tile (BLOCK_M x D) and, for fp32 (FMA dots: both
# operands go through shared memory), the P tile (BLOCK_M x BLOCK_N) too, and a second q tile with
# 3 or more stages. Checked against the compiler's own figure (``CompiledKernel.metadata.shared``
# of triton 3.9 compiling ahead of time for sm_80 and sm_90, which needs no GPU) over BLOCK_M
# 16-128, BLOCK_N 16-64, D 32/64/128, 1-3 stages, 4 and 8 warps, bf16 and fp32: never below it,
# 15-22% above it for the 16-bit tiles chosen below.
_SMEM_SLACK = 1024  # Triton's own scratch (barriers, reductions) beyond the tiles


def smem_estimate(head_dim: int, dtype: torch.dtype, block_m: int, block_n: int, num_stages: int) -> int:
    """Upper bound on the shared memory (bytes) one program of ``_attn_fwd_kernel`` needs."""
    elem = dtype.itemsize
    stages = max(1, num_stages)
    per_stage = 2 * block_n * head_dim * elem + 256
    q_tile = block_m * head_dim * elem
    convert = q_tile
    if dtype == torch.float32:
        convert += block_m * block_n * elem + (q_tile if stages >= 3 else 0)
    return stages * per_stage + convert + _SMEM_SLACK


# Candidate tiles (BLOCK_M, BLOCK_N, num_warps, num_stages), best first; tile_config takes the first
# whose smem_estimate fits the device's per-block limit. The first 16-bit entries are the Hopper
# tiles (at D = 128, 115,200 bytes by the compiler: more than the 99 KB of sm_86/sm_89 parts, which
# get the 2-stage tile, 82,176 bytes); the small ones fit 48 KB. fp32 dots run on FMA units with
# their operands in registers: at D = 128 the 64 x 32 tile spills (952 bytes of spill stores with
# ptxas for sm_90; triton 3.6 spills there as well), 32 x 32 with 8 warps and one stage
# does not (198 registers on sm_90, 224 on sm_80); at D <= 64, 64 x 32 with 8 warps is spill-free.
# (Registers, spills and bytes: triton 3.9 compiling ahead of time, ptxas 13.4 -v, no GPU run.)
_TILES_16BIT = {
    128: ((128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (64, 32, 4, 1), (32, 32, 4, 1),
          (16, 16, 4, 1)),
    64: ((128, 64, 4, 3), (128, 64, 4, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1)),
    32: ((128, 64, 4, 3), (128, 64, 4, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1)),
}
_TILES_FP32 = {
    128: ((32, 32, 8, 1), (16, 16, 4, 1)),
    64: ((64, 32, 8, 2), (64, 32, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)),
    32: ((64, 32, 8, 2), (64, 32, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)),
}
INTERPRETER_TILE = (32, 32, 4, 1)  # moderate tiles: fewer programs is what makes the interpreter fast


def tile_config(head_dim: int, dtype: torch.dtype, smem_bytes: int) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for ``head_dim`` and ``dtype`` on a device whose
    programs may use ``smem_bytes`` of shared memory each: the first candidate whose estimate fits,
    else the smallest (a pure function, unit-tested without a GPU)."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    table = _TILES_FP32 if dtype == torch.float32 else _TILES_16BIT
    candidates = table[head_dim]
    for bm, bn, warps, stages in candidates:
        if smem_estimate(head_dim, dtype, bm, bn, stages) <= smem_bytes:
            return bm, bn, warps, stages
    return candidates[-1]


@functools.lru_cache(maxsize=None)
def device_smem_bytes(index: int) -> int:
    """Shared memory one program may use on CUDA device ``index`` (the opt-in per-block limit Triton
    checks at launch; 48 KB when neither Triton nor torch says)."""
    try:
        from triton.runtime import driver

        return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - an older Triton without this driver API
        props = torch.cuda.get_device_properties(index)
        return int(getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024)


def _config(hd: int, dtype: torch.dtype, t: Tensor):
    if t.device.type != "cuda" or _interpreted():
        return INTERPRETER_TILE
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return tile_config(hd, dtype, device_smem_bytes(index))


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
    """Launch the fused prologue + flash-attention forward; arguments as ``lightcache::chunked_attention``
    (validated by lightcache.ops). Returns a contiguous (B, L, H, D) tensor in q's dtype."""
    n_batch, lq, heads, hd = q.shape
    lk = k.shape[1]
    if hd not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"chunked_attention's Triton kernel supports head_dim in {SUPPORTED_HEAD_DIMS}, got {hd} "
            "(the even/odd split needs a power-of-two D/2 >= 16)"
        )
    scale = 1.0 / math.sqrt(hd) if scale is None else float(scale)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lk == 0:  # no keys: zeros, as F.scaled_dot_product_attention returns
        return out.zero_()
    if lq == 0 or n_batch == 0 or heads == 0:
        return out

    with on_device(q):  # Triton launches on the current device, not q's
        _launch(q, k, v, out, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale)
    return out


def _launch(q, k, v, out, q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps, chunk_size, scale):
    n_batch, lq, heads, hd = q.shape
    lk = k.shape[1]

    def _stats(t, w):
        if w is None:
            # dummies: never read (HAS_*N is False), any valid pointer will do
            return t, (0, 0, 0), t, (0, 0)
        across = w.numel() == heads * hd and heads > 1
        inv = _inv_rms(t, across, eps)
        sinv = (inv.stride(0), inv.stride(1), 0 if across else inv.stride(2))
        sw = (hd * w.stride(0) if across else 0, w.stride(0))
        return inv, sinv, w, sw

    q_inv, sqi, qw, sqw = _stats(q, q_norm_weight)
    k_inv, ski, kw, skw = _stats(k, k_norm_weight)
    has_rope = rope_cos is not None
    cos = rope_cos if has_rope else q
    sin = rope_sin if has_rope else q
    sc = tuple(rope_cos.stride()) if has_rope else (0, 0)
    ss = tuple(rope_sin.stride()) if has_rope else (0, 0)

    block_m, block_n, warps, stages = _config(hd, q.dtype, q)
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs
    step = triton.cdiv(max(chunk_size, 1), block_m) * block_m
    for q0 in range(0, lq, step):
        q1 = min(q0 + step, lq)
        grid = (triton.cdiv(q1 - q0, block_m), n_batch * heads)
        _attn_fwd_kernel[grid](
            q, k, v, out,
            q_inv, k_inv, qw, kw, cos, sin,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            *sqi, *ski, *sqw, *skw, *sc, *ss,
            heads, lk, q0, q1, scale * _LOG2E,
            HAS_QN=q_norm_weight is not None, HAS_KN=k_norm_weight is not None, HAS_ROPE=has_rope,
            HALF=hd // 2, BLOCK_M=block_m, BLOCK_N=block_n, DOT_PREC=dot_prec,
            num_warps=warps, num_stages=stages,
        )
