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

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

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


def _config(hd: int, dtype: torch.dtype, on_cuda: bool):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). Hopper-sized tiles on CUDA; in the interpreter,
    moderate tiles (fewer programs is what makes it fast)."""
    if not on_cuda or _interpreted():
        return 32, 32, 4, 1
    if dtype == torch.float32:  # ieee fp32 dots run on FMA units; 8 warps keep D <= 64 spill-free on sm_90
        return 64, 32, 8, 2
    if hd == 128:
        return 128, 64, 8, 3
    return 128, 64, 4, 3


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

    block_m, block_n, warps, stages = _config(hd, q.dtype, q.is_cuda)
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
    return out
