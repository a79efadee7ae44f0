"""Sliced decode of ``AutoencoderKLHunyuanVideo``.

NOT exact in general. Its GroupNorms normalise over all frames of a decoder call and its mid-block
attention spans frames, so no temporal split equals decoding the whole video in one call. A slice
is one of the VAE's own temporal tiles (``_temporal_tiled_decode``: windows of s + overlap + 1
latent frames at a stride of s, consecutive windows blended linearly over r * overlap frames;
overlap = ``decode_overlap``, by default the VAE's own, 1), streamed: the output equals the VAE's
own framewise decode with those tile sizes (on by default in diffusers for videos longer than 4
latent frames) -- so it is the VAE's own decode when s and the overlap are the VAE's own tile
settings (s = 3 for its defaults) -- and differs from an untiled decode by what
tests/test_memory_decode.py measures. Other settings warn at enable time.
"""

from __future__ import annotations

from lightcache.memory.decode import TemporalWindowSlicer


class HunyuanVideoSlicer(TemporalWindowSlicer):
    def default_overlap(self) -> int:
        vae = self.vae  # the VAE's own tiles overlap by (min - stride) sample frames
        return max(0, (vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames) // self.rt)

    def own_tile(self) -> float:
        """Latent frames per slice that make the VAE's own temporal tiles (its sample stride / r)."""
        return self.vae.tile_sample_stride_num_frames / self.rt

    @property
    def exact(self):
        # the VAE's own decode is temporally tiled (use_framewise_decoding, on by default): the
        # slices are its tiles exactly when their stride and overlap are the VAE's
        vae, s = self.vae, self.memory.decode_slices
        if s is None or not vae.use_framewise_decoding:
            return False
        own_overlap = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames
        return s == self.own_tile() and self.overlap() * self.rt == own_overlap

    @property
    def inexact_note(self):
        if self.exact:
            return ""
        if self.vae.use_framewise_decoding:
            tile = self.own_tile()
            own = (f"decode_slices={int(tile)} with the default decode_overlap" if tile == int(tile)
                   else "no decode_slices (its tile stride is not a whole number of latent frames)")
            when = f"it equals the VAE's own temporal tiles only with {own}"
        else:
            when = "the VAE decodes the whole video in one call (use_framewise_decoding is off)"
        return (
            "AutoencoderKLHunyuanVideo's GroupNorms and mid-block attention span all frames of a decoder call, "
            f"so a temporal slice decodes differently ({when}): measured up to 1.0 max abs on pixels in [0, 1] "
            "(PSNR 16-19 dB) on a random-weight tiny VAE"
        )

    def _window(self, z):
        vae = self.vae
        lmh = vae.tile_sample_min_height // self.spatial_ratio
        lmw = vae.tile_sample_min_width // self.spatial_ratio
        if vae.use_tiling and (z.shape[-1] > lmw or z.shape[-2] > lmh):
            return vae.tiled_decode(z, return_dict=True).sample
        return vae.decoder(vae.post_quant_conv(z))

    def run(self, original, z, extra, s, sink, b0, limit=None):
        t, r = z.shape[2], self.rt
        frames = self.frames_out(z, extra)
        st = s
        m = s + self.overlap()
        if t <= m:  # one window: the VAE decodes such a video whole
            out = self._window(z)
            sink.write(b0, 0, out)
            return out.shape[2]
        blend = r * (m - st)
        f0, tail = 0, None
        for k, i in enumerate(range(0, t, st)):
            if f0 >= frames or (limit is not None and k >= limit):
                break
            dec = self._window(z[:, :, i : i + m + 1])
            if i > 0:
                dec = dec[:, :, 1:]  # the window's first frame was decoded as a video start
            if tail is not None:
                dec = self.vae.blend_t(tail, dec, blend)
            keep = dec[:, :, : r * st + (1 if k == 0 else 0)]
            n = min(keep.shape[2], frames - f0)
            sink.write(b0, f0, keep[:, :, :n])
            f0 += n
            # the next window blends with this one's last frames (as blended, like the VAE's list)
            tail = dec[:, :, -blend:].clone() if blend > 0 else None
            del dec, keep
        return f0
