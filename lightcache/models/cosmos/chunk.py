"""Feature chunk of Cosmos's blocks (``CosmosTransformerBlock`` with ``CosmosAttnProcessor2_0``):
see lightcache.memory.chunk_dit.

Self-attention over the video tokens (q/k RMS norms per head, rotary tables (S, D)), then
cross-attention to the text, then the FFN; everything but self-attention works per token. The
per-token arguments are cut with the piece: the learned positions (``extra_pos_emb``), the AdaLN
conditioning when it is per token (video-to-world's per-frame timesteps make ``embedded_timestep``
and ``temb`` (B, S, C)), a ControlNet residual. Blocks with Cosmos 2.5's control projections
(``before_proj``/``after_proj``) or image context (a (text, image) tuple) run whole.
"""

from __future__ import annotations

from lightcache.memory.chunk_dit import _Family

_PER_TOKEN = ("embedded_timestep", "temb", "extra_pos_emb", "controlnet_residual")


class CosmosChunking(_Family):
    processor = ("diffusers.models.transformers.transformer_cosmos", "CosmosAttnProcessor2_0")
    cross_attn = "attn2"

    def supported(self, a):
        return super().supported(a) and not isinstance(a.get("encoder_hidden_states"), tuple)

    def usable(self, block):
        return (block.before_proj is None and block.after_proj is None
                and not (block.attn1.fused_projections or block.attn2.fused_projections))

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super().rows_changes(a, r0, r1, t0, t1)
        n = a["hidden_states"].shape[1]
        for name in _PER_TOKEN:
            v = a.get(name)
            if v is not None and v.dim() == 3 and v.shape[1] == n:
                changes[name] = v[:, r0:r1]
        return changes

    def rope(self, y, rot):
        from diffusers.models.embeddings import apply_rotary_emb

        # the processor rotates (B, H, S, D) with tables (S, D): the same on (B, S, H, D) by sequence_dim=1
        return apply_rotary_emb(y, rot, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)

    def cross_kv(self, attn, enc, mask, batch):
        k = attn.norm_k(attn.to_k(enc).unflatten(2, (attn.heads, -1)))
        v = attn.to_v(enc).unflatten(2, (attn.heads, -1))
        return k, v, mask, None
