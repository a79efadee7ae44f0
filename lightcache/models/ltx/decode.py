"""Sliced decode of ``AutoencoderKLLTXVideo``.

Every decoder layer is local in time (per-position norms, kernel-3 temporal convs, depth-to-space
upsampling), so a slice of s latent frames decoded with ``decode_overlap`` latent frames of context
on each side and cropped to its own frames equals the whole-video decode once that margin covers
the decoder's temporal receptive field -- the default margin, computed from the decoder's layers
(exact; for LTX-Video's own decoder the field spans about 22 latent frames, so exact slices save
memory only on long videos). A smaller margin trades exactness for memory (measured in
tests/test_memory_decode.py; warned at enable time). The VAE's own temporal tiling is not used: in
diffusers 0.42.1 the frames it keeps from its second tile on start one frame early (the first
repeats the first tile's last frame), so every later frame is shifted by one; with
``use_framewise_decoding`` switched on, the sliced decode therefore differs from the VAE's own
(warned). Decoders that inject noise (drawn per decoder call) are refused.
"""

from __future__ import annotations

import math

import torch

from lightcache.memory.decode import TemporalWindowSlicer


class LTXSlicer(TemporalWindowSlicer):
    def check(self):
        super().check()
        cfg = self.vae.config
        if any(cfg.decoder_inject_noise):
            raise ValueError(
                f"MemoryPlan.decode_slices: this {type(self.vae).__name__} injects random noise in its decoder, drawn per "
                "decoder call, so a sliced decode would draw different noise; sliced decode is not offered for it"
            )
        if cfg.patch_size_t != 1:
            raise ValueError(
                f"MemoryPlan.decode_slices: {type(self.vae).__name__} with patch_size_t={cfg.patch_size_t} is not "
                "supported (1 is)"
            )

    def _conv_classes(self):
        """(temporal conv class, upsampler class) of this VAE's decoder."""
        from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d, LTXVideoUpsampler3d

        return LTXVideoCausalConv3d, LTXVideoUpsampler3d

    def _is_causal(self, conv) -> bool:
        return conv.is_causal

    def receptive_radius(self) -> int:
        """Latent frames on either side that can reach an output frame through the decoder's
        temporal convs (each conv's reach divided by the temporal upsampling before it), rounded up."""
        conv_cls, upsampler_cls = self._conv_classes()
        upsampler_conv = {}
        for m in self.vae.decoder.modules():
            if isinstance(m, upsampler_cls):
                upsampler_conv[id(m.conv)] = m.stride[0]
        reach, rate = 0.0, 1
        for m in self.vae.decoder.modules():  # registration order is execution order in this decoder
            if isinstance(m, conv_cls):
                k = m.kernel_size[0]
                reach += ((k - 1) if self._is_causal(m) else (k - 1) // 2) / rate
                rate *= upsampler_conv.get(id(m), 1)
        return math.ceil(reach)

    def default_overlap(self):
        return self.receptive_radius()

    @property
    def exact(self):
        return self.overlap() >= self.receptive_radius() and not self.vae.use_framewise_decoding

    @property
    def inexact_note(self):
        if self.exact:
            return ""
        radius = self.receptive_radius()
        if self.overlap() < radius:
            return (
                f"decode_overlap={self.overlap()} latent frames is below the decoder's temporal receptive field "
                f"({radius} latent frames), so slices see less context than the whole-video decode: measured up "
                "to 0.51 max abs on pixels in [0, 1] with a margin of 2 on a random-weight tiny VAE"
            )
        return (
            "the VAE's own temporal tiling (use_framewise_decoding) is not reproduced: the slices give the "
            "whole-video decode, which its framewise decode is not (in diffusers 0.42.1 every frame after its "
            "first tile is shifted by one)"
        )

    def _window(self, z, temb, extra):
        vae = self.vae
        lmh = vae.tile_sample_min_height // vae.spatial_compression_ratio
        lmw = vae.tile_sample_min_width // vae.spatial_compression_ratio
        more = {k: v for k, v in extra.items() if k != "temb"}  # LTX-2's causal
        if vae.use_tiling and (z.shape[-1] > lmw or z.shape[-2] > lmh):
            return vae.tiled_decode(z, temb, return_dict=True, **more).sample
        return vae.decoder(z, temb, **more)

    def probe_limit(self, s):
        return 2 + math.ceil(self.overlap() / s)  # up to the first slice with context on both sides

    def split_extra(self, extra, b0, b1):
        temb = extra.get("temb")
        if isinstance(temb, torch.Tensor) and temb.ndim > 0 and temb.shape[0] > 1:
            return dict(extra, temb=temb[b0:b1])
        return extra

    def run(self, original, z, extra, s, sink, b0, limit=None):
        t, r, halo = z.shape[2], self.rt, self.overlap()
        temb = extra.get("temb")
        g1 = 0
        for k, t0 in enumerate(range(0, t, s)):
            if limit is not None and k >= limit:
                break
            t1 = min(t, t0 + s)
            a0, a1 = max(0, t0 - halo), min(t, t1 + halo)
            dec = self._window(z[:, :, a0:a1], temb, extra)
            if dec.shape[2] != r * (a1 - a0 - 1) + 1:
                raise RuntimeError(
                    f"lightcache sliced decode: LTX decoder gave {dec.shape[2]} frames for {a1 - a0} latent frames"
                )
            # a window's first latent frame decodes to one frame: output frame r*a0 of the video
            g0 = 0 if t0 == 0 else r * (t0 - 1) + 1
            g1 = r * (t1 - 1) + 1
            sink.write(b0, g0, dec[:, :, g0 - r * a0 : g1 - r * a0])
            del dec
        return g1
