"""Feature chunk of CogVideoX's blocks (``CogVideoXBlock``): see lightcache.memory.chunk_dit."""

from __future__ import annotations

from lightcache.memory.chunk_dit import _Joint


class CogVideoXChunking(_Joint):
    processor = ("diffusers.models.attention_processor", "CogVideoXAttnProcessor2_0")
    sdpa_direct = True
    text_first = True

    def supported(self, a):
        return super().supported(a) and not a.get("attention_kwargs")

    def finish(self, attn, out, n_hidden, n_text):
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, n_text:], out[:, :n_text]
