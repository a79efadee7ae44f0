"""Feature chunk of Wan's blocks (``WanTransformerBlock``): see lightcache.memory.chunk_dit."""

from __future__ import annotations

import torch

from lightcache.memory.chunk_dit import _Family


def _rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding: channel pairs (2i, 2i+1) rotated by the angle whose cosine is
    ``cos[..., 2i]`` and sine ``sin[..., 2i+1]`` (Wan's processor defines it inline, so it cannot
    be imported); same element-wise arithmetic, so the same values."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).to(x.dtype)


class WanChunking(_Family):
    processor = ("diffusers.models.transformers.transformer_wan", "WanAttnProcessor")
    # Wan Animate's module defines its own WanTransformerBlock/WanAttnProcessor (the same code): the
    # block is found by its name, its processor is taken here
    also_processors = (("diffusers.models.transformers.transformer_wan_animate", "WanAttnProcessor"),)
    cross_attn = "attn2"
    norm_before_heads = True
    rotary_arg = "rotary_emb"
    rotary_seq_dim = 1  # (1, L, 1, head_dim)

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super().rows_changes(a, r0, r1, t0, t1)
        temb = a["temb"]
        if temb.dim() == 4:  # Wan 2.2 TI2V: modulation per token, (B, L, 6, dim)
            changes["temb"] = temb[:, r0:r1]
        return changes

    def rope(self, y, rot):
        return _rope_pairs(y, *rot)

    def usable(self, block):
        return not (block.attn1.fused_projections or block.attn2.fused_projections)

    def cross_kv(self, attn, enc, mask, batch):
        img = None
        if attn.add_k_proj is not None:  # Wan I2V: image tokens first, then the 512 text tokens
            n_img = enc.shape[1] - 512
            img, enc = enc[:, :n_img], enc[:, n_img:]
        k = attn.norm_k(attn.to_k(enc)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(enc).unflatten(2, (attn.heads, -1))
        extra = None
        if img is not None:
            ki = attn.norm_added_k(attn.add_k_proj(img)).unflatten(2, (attn.heads, -1))
            vi = attn.add_v_proj(img).unflatten(2, (attn.heads, -1))
            extra = (ki, vi)
        return k, v, mask, extra
