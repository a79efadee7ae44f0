"""Sliced decode of ``AutoencoderKLMochi``.

The decoder is causal in time and otherwise per frame: its GroupNorms normalise each frame alone,
its 3-D convolutions pad only the past (replicating the first frame), its up blocks turn channels
into frames (depth-to-time), and it has no attention. So output frames depend only on the latent
frames at and before theirs, within the decoder's causal receptive field (each causal conv's
reach divided by the temporal expansion before it; :meth:`MochiSlicer.receptive_radius`). A slice
of s latent frames decoded with ``decode_overlap`` latent frames of past context (default: that
field) and cropped to its own frames equals the whole-video decode: exact. A smaller overlap
gives the first frames of each later slice less past than the whole decode (warned; not measured
here). For Mochi's own decoder (diffusers' default config) the field spans 46 latent frames, more
than a 163-frame video has (28), so exact slices save memory only on longer videos.

The VAE's spatial tiles (``enable_tiling``) are kept, each window decoded by its ``tiled_decode``.
The first ``temporal_compression_ratio - 1`` frames are dropped as the VAE does
(``drop_last_temporal_frames``). The VAE's own frame batching (``_enable_framewise_decoding``) is
refused: in diffusers 0.42.1 it switches the convolutions' padding mode after they were built
without padding, so its decode fails on any latent (and so would the slices).
"""

from __future__ import annotations

import math

from lightcache.memory.decode import TemporalWindowSlicer, _attrs


class MochiSlicer(TemporalWindowSlicer):
    def check(self):
        super().check()
        if self.vae.use_framewise_decoding:
            raise ValueError(
                "MemoryPlan.decode_slices: AutoencoderKLMochi with use_framewise_decoding=True is not supported (in "
                "diffusers 0.42.1 its framewise decode fails: the convolutions keep the padding they were built with)"
            )

    def _dropped(self) -> int:
        return self.rt - 1 if self.vae.drop_last_temporal_frames else 0

    def frames_out(self, z, extra):
        return self.rt * z.shape[2] - self._dropped()

    def receptive_radius(self) -> int:
        """Latent frames before an output frame's own that can reach it through the decoder's
        causal convs (each conv's reach divided by the temporal expansion before it), rounded up."""
        from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

        dec = self.vae.decoder

        def reach(module, rate):
            convs = [m for m in module.modules() if isinstance(m, CogVideoXCausalConv3d)]
            return sum((m.time_kernel_size - 1) / rate for m in convs)

        total, rate = reach(dec.block_in, 1), 1
        for up in dec.up_blocks:  # each up block's resnets run before its depth-to-time expansion
            total += reach(up, rate)
            rate *= up.temporal_expansion
        total += reach(dec.block_out, rate)
        return math.ceil(total)

    def default_overlap(self):
        return self.receptive_radius()

    @property
    def exact(self):
        return self.overlap() >= self.receptive_radius()

    @property
    def inexact_note(self):
        if self.exact:
            return ""
        return (
            f"decode_overlap={self.overlap()} latent frames is below the decoder's causal temporal receptive field "
            f"({self.receptive_radius()} latent frames), so the first frames of every slice after the first see "
            "less past context than in the whole-video decode"
        )

    def _window(self, z):
        """The decoder's frames for the latent window ``z``, none dropped."""
        vae = self.vae
        lmh = vae.tile_sample_min_height // vae.spatial_compression_ratio
        lmw = vae.tile_sample_min_width // vae.spatial_compression_ratio
        if vae.use_tiling and (z.shape[-1] > lmw or z.shape[-2] > lmh):
            with _attrs(vae, {"drop_last_temporal_frames": False}):
                return vae.tiled_decode(z, return_dict=False)[0]
        return vae.decoder(z)[0]

    def probe_limit(self, s):
        return 2 + math.ceil(self.overlap() / s)  # up to the first slice with its whole past context

    def run(self, original, z, extra, s, sink, b0, limit=None):
        t, r, halo, d = z.shape[2], self.rt, self.overlap(), self._dropped()
        g1 = 0
        for k, t0 in enumerate(range(0, t, s)):
            if limit is not None and k >= limit:
                break
            t1 = min(t, t0 + s)
            a0 = max(0, t0 - halo)
            dec = self._window(z[:, :, a0:t1])
            if dec.shape[2] != r * (t1 - a0):
                raise RuntimeError(
                    f"lightcache sliced decode: Mochi decoder gave {dec.shape[2]} frames for {t1 - a0} latent frames"
                )
            # latent frame i decodes to frames [r*i, r*(i+1)) before the first d frames are dropped
            g0, g1 = max(0, r * t0 - d), r * t1 - d
            sink.write(b0, g0, dec[:, :, g0 + d - r * a0 : g1 + d - r * a0])
            del dec
        return g1
