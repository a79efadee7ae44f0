"""Feature chunk of EasyAnimate's blocks (``EasyAnimateTransformerBlock``): see
lightcache.memory.chunk_dit."""

from __future__ import annotations

from lightcache.memory.chunk_dit import _Joint


class EasyAnimateChunking(_Joint):
    processor = ("diffusers.models.transformers.transformer_easyanimate", "EasyAnimateAttnProcessor2_0")
    sdpa_direct = True
    text_first = True

    def finish(self, attn, out, n_hidden, n_text):
        text, hidden = out[:, :n_text], out[:, n_text:]
        if getattr(attn, "to_out", None) is not None:
            hidden = attn.to_out[1](attn.to_out[0](hidden))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return hidden, text
