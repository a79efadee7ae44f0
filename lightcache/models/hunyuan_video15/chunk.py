"""Feature chunk of HunyuanVideo 1.5's blocks (``HunyuanVideo15TransformerBlock``): a dual-stream
block like HunyuanVideo's (see lightcache.memory.chunk_dit), with one difference in the mask. The
block's ``attention_mask`` is the context's padding mask (B, L_text); the processor pads it with
the video's rows (all valid) to the key validity (B, S) and attends with the (queries x keys) mask
``valid_i & valid_j``: a padded context row attends to nothing (a zero attention output). A piece
gets exactly its rows of that mask: the key validity (B, 1, 1, S) as the block's attention_mask
(the same for every row of the piece, so never cut), and, for a piece of context rows, the rows'
own validity applied when the piece attends. The piece's rows are set by ``rows_changes``, which
the chunk hook calls right before each piece's block call, and read by ``attend`` within it."""

from __future__ import annotations

import torch

from lightcache.models.hunyuan_video.chunk import HunyuanVideoChunking


class HunyuanVideo15Chunking(HunyuanVideoChunking):
    processor = ("diffusers.models.transformers.transformer_hunyuan_video15", "HunyuanVideo15AttnProcessor2_0")
    rotary_arg = "freqs_cis"

    def __init__(self):
        self._rows = None  # the current piece's query validity (B, n) for context rows, else None

    def supported(self, a):
        mask, enc = a.get("attention_mask"), a.get("encoder_hidden_states")
        return (super().supported(a) and isinstance(mask, torch.Tensor) and mask.dim() == 2
                and tuple(mask.shape) == tuple(enc.shape[:2]))

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super().rows_changes(a, r0, r1, t0, t1)
        text = a["attention_mask"].bool()
        keys = torch.cat([text.new_ones(text.shape[0], a["hidden_states"].shape[1]), text], dim=1)
        changes["attention_mask"] = keys[:, None, None, :]
        self._rows = text[:, t0:t1] if t1 > t0 else None
        return changes

    def attend(self, original, q, k, v, mask):
        if self._rows is not None:
            mask = mask & self._rows[:, None, :, None]
        return super().attend(original, q, k, v, mask)
