"""Feature chunk of LTX-Video's blocks (``LTXVideoTransformerBlock``): see lightcache.memory.chunk_dit."""

from __future__ import annotations

import torch

from lightcache.memory.chunk_dit import _Family


def _rope_ltx(y: torch.Tensor, rot) -> torch.Tensor:
    from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

    # LTX rotates the (B, S, heads * head_dim) rows before splitting heads
    return apply_rotary_emb(y.flatten(2), rot).unflatten(2, y.shape[2:])


class LTXChunking(_Family):
    processor = ("diffusers.models.transformers.transformer_ltx", "LTXVideoAttnProcessor")
    cross_attn = "attn2"
    norm_before_heads = True
    rotary_seq_dim = 1  # (B, L, dim)

    def supported(self, a):
        temb = a.get("temb")
        h = a.get("hidden_states")
        return super().supported(a) and isinstance(temb, torch.Tensor) and temb.shape[1] in (1, h.shape[1])

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super().rows_changes(a, r0, r1, t0, t1)
        temb = a["temb"]
        if temb.shape[1] != 1:  # per-token timesteps (conditioning frames): (B, L, 6 * dim)
            changes["temb"] = temb[:, r0:r1]
        return changes

    def rope(self, y, rot):
        return _rope_ltx(y, rot)

    def cross_kv(self, attn, enc, mask, batch):
        if mask is not None:
            mask = attn.prepare_attention_mask(mask, enc.shape[1], batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
        k = attn.norm_k(attn.to_k(enc)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(enc).unflatten(2, (attn.heads, -1))
        return k, v, mask, None
