"""CPU reference of ``lightcache::chunked_attention``: RMS-norm + rotary prologue fused into a
memory-bounded exact attention.

Same algorithm as the Triton kernel: query chunks of ``chunk_size`` rows; within each, key chunks of
``chunk_size`` rows with an online (running max / running sum) softmax in fp32. Each key chunk is
normalised and rotated on the fly; only k's per-token inverse RMS, (B, Lk, H or 1) fp32, is
precomputed. So the largest intermediates are (B, H, chunk, chunk) scores and chunk-sized copies of
q/k/v — never a full-length normalised q or k, nor an (Lq, Lk) score matrix.

Rounding follows diffusers' Wan processor: the RMS-norm is computed in fp32 and rounded to the
input dtype (as ``F.rms_norm`` does), the rotation is computed in fp32 from that and rounded again.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def _inv_rms(t: Tensor, across_heads: bool, eps: float) -> Tensor:
    """rsqrt(mean(t²) + eps) in fp32: (B, n, 1) over all heads of a token, else (B, n, H)."""
    tf = t.float()
    ms = tf.square().mean(dim=(-2, -1)).unsqueeze(-1) if across_heads else tf.square().mean(dim=-1)
    return torch.rsqrt(ms + eps)


def _prologue(
    t: Tensor,
    weight: Optional[Tensor],
    inv: Optional[Tensor],
    cos: Optional[Tensor],
    sin: Optional[Tensor],
) -> Tensor:
    """Normalise and rotate a (B, n, H, D) chunk; returns it in t's dtype."""
    dtype = t.dtype
    h, d = t.shape[-2], t.shape[-1]
    if weight is not None:
        w = weight.float().view(h, d) if weight.numel() == h * d and weight.numel() != d else weight.float()
        t = (t.float() * inv.unsqueeze(-1) * w).to(dtype)
    if cos is not None:
        tf = t.float()
        x1, x2 = tf[..., 0::2], tf[..., 1::2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        rot = torch.empty_like(t)
        rot[..., 0::2] = x1 * c - x2 * s
        rot[..., 1::2] = x1 * s + x2 * c
        t = rot
    return t


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
    n_batch, lq, heads, hd = q.shape
    lk = k.shape[1]
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    out = q.new_empty(q.shape)
    if lq == 0 or lk == 0:  # no keys: zeros, as F.scaled_dot_product_attention returns
        return out.zero_()
    q_across = q_norm_weight is not None and q_norm_weight.numel() == heads * hd and heads > 1
    k_across = k_norm_weight is not None and k_norm_weight.numel() == heads * hd and heads > 1

    # Per-token statistics of k, computed chunk by chunk (no full fp32 copy of k).
    k_inv = None
    if k_norm_weight is not None:
        k_inv = torch.empty((n_batch, lk, 1 if k_across else heads), dtype=torch.float32, device=k.device)
        for s in range(0, lk, chunk_size):
            k_inv[:, s : s + chunk_size] = _inv_rms(k[:, s : s + chunk_size], k_across, eps)

    for qs in range(0, lq, chunk_size):
        qe = min(qs + chunk_size, lq)
        qc = q[:, qs:qe]
        q_inv = _inv_rms(qc, q_across, eps) if q_norm_weight is not None else None
        cos = rope_cos[qs:qe] if rope_cos is not None else None
        sin = rope_sin[qs:qe] if rope_sin is not None else None
        # (B, H, n, D) fp32, the softmax scale folded in once per chunk instead of once per tile
        qc = _prologue(qc, q_norm_weight, q_inv, cos, sin).transpose(1, 2).float() * scale
        m_i = torch.full(qc.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        l_i = torch.zeros_like(m_i)
        acc = torch.zeros(qc.shape, dtype=torch.float32, device=q.device)
        for ks in range(0, lk, chunk_size):
            ke = min(ks + chunk_size, lk)
            cos = rope_cos[ks:ke] if rope_cos is not None else None
            sin = rope_sin[ks:ke] if rope_sin is not None else None
            kin = k_inv[:, ks:ke] if k_inv is not None else None
            kc = _prologue(k[:, ks:ke], k_norm_weight, kin, cos, sin).transpose(1, 2).float()
            vc = v[:, ks:ke].transpose(1, 2).float()
            scores = torch.matmul(qc, kc.transpose(-1, -2))  # (B, H, n, m) fp32
            m_new = torch.maximum(m_i, scores.amax(dim=-1))
            p = scores.sub_(m_new.unsqueeze(-1)).exp_()
            alpha = torch.exp(m_i - m_new)
            l_i = l_i * alpha + p.sum(dim=-1)
            acc = acc * alpha.unsqueeze(-1) + torch.matmul(p, vc)
            m_i = m_new
        out[:, qs:qe] = (acc / l_i.unsqueeze(-1)).transpose(1, 2).to(out.dtype)
    return out
