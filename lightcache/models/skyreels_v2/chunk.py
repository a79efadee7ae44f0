"""Feature chunk of SkyReels-V2's blocks (``SkyReelsV2TransformerBlock``): Wan's spec (same
attention, rotary pairs and cross-attention, imported from lightcache.models.wan.chunk) with
SkyReels-V2's own processor class and its per-token modulation layout: diffusion forcing passes
``temb`` as (B, 6, L, dim) (Wan 2.2's is (B, L, 6, dim)). The causal block mask (``attention_mask``,
(1, 1, L, L), with ``num_frame_per_block > 1``) is passed whole and sliced to the piece's query
rows by the generic self-attention processor."""

from __future__ import annotations

from lightcache.models.wan.chunk import WanChunking


class SkyReelsV2Chunking(WanChunking):
    processor = ("diffusers.models.transformers.transformer_skyreels_v2", "SkyReelsV2AttnProcessor")
    also_processors = ()  # none of Wan's others

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super(WanChunking, self).rows_changes(a, r0, r1, t0, t1)
        temb = a["temb"]
        if temb.dim() == 4:  # diffusion forcing: modulation per token, (B, 6, L, dim)
            changes["temb"] = temb[:, :, r0:r1]
        return changes
