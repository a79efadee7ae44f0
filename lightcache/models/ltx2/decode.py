"""Sliced decode of ``AutoencoderKLLTX2Video``: the same temporal-window decode as LTX-Video's
(lightcache.models.ltx.decode; exact once the margin covers the decoder's temporal receptive
field). LTX-2's convs choose causal or centred padding per call: causal when the call's ``causal``
argument or the decoder's ``is_causal`` is true (diffusers ORs them). The receptive field is
computed for the decoder's own setting, so a call that turns causal padding on for a non-causal
decoder is refused rather than decoded with a margin computed for other convs.
"""

from __future__ import annotations

from lightcache.models.ltx.decode import LTXSlicer


class LTX2Slicer(LTXSlicer):
    def _conv_classes(self):
        from diffusers.models.autoencoders.autoencoder_kl_ltx2 import LTX2VideoCausalConv3d, LTX2VideoUpsampler3d

        return LTX2VideoCausalConv3d, LTX2VideoUpsampler3d

    def _is_causal(self, conv) -> bool:
        return bool(self.vae.decoder.is_causal)

    def run(self, original, z, extra, s, sink, b0, limit=None):
        causal = extra.get("causal")
        if causal and not self.vae.decoder.is_causal:
            raise ValueError(
                f"MemoryPlan.decode_slices: this decode call passes causal={causal!r} but the decoder's is_causal is "
                "False; the slices' margin is computed for the decoder's own (centred) convs"
            )
        return super().run(original, z, extra, s, sink, b0, limit=limit)
