"""Sliced decode of ``AutoencoderKLCogVideoX``.

The VAE's own frame batches (``num_latent_frames_batch_size``; the first batch also takes the
remainder), conv caches carried: exact. Its GroupNorms normalise over all frames of a decoder call,
so no other temporal split gives the VAE's output; ``decode_slices`` must equal the batch size, and
a budget can only add spatial tiles.
"""

from __future__ import annotations

from lightcache.memory.decode import OwnBatchesSlicer, _blend_tiles


class CogVideoXSlicer(OwnBatchesSlicer):
    def __init__(self, vae, memory):
        super().__init__(vae, memory)
        self.rt = int(vae.config.temporal_compression_ratio)
        self.spatial_ratio = 2 ** (len(vae.config.block_out_channels) - 1)

    def _groups(self, t):
        b = self.vae.num_latent_frames_batch_size
        rem = t % b
        return [(b * i + (0 if i == 0 else rem), min(t, b * (i + 1) + rem)) for i in range(max(t // b, 1))]

    def frames_out(self, z, extra):
        # odd frame counts keep their first frame through each time upsampler, even ones double
        sizes = [g1 - g0 for g0, g1 in self._groups(z.shape[2])]
        return sum(self.rt * (n - 1) + 1 if n % 2 else self.rt * n for n in sizes)

    def _decode_tile(self, z, caches, key):
        vae = self.vae
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        out, caches[key] = vae.decoder(z, conv_cache=caches.get(key))
        return out

    def run(self, original, z, extra, s, sink, b0, limit=None):
        vae = self.vae
        h, w = z.shape[-2:]
        tiled = vae.use_tiling and (w > vae.tile_latent_min_width or h > vae.tile_latent_min_height)
        caches = {}
        f0 = 0
        for k, (g0, g1) in enumerate(self._groups(z.shape[2])):
            if limit is not None and k >= limit:
                break
            zs = z[:, :, g0:g1]
            if not tiled:
                out = self._decode_tile(zs, caches, None)
            else:
                lmh, lmw = vae.tile_latent_min_height, vae.tile_latent_min_width
                fh, fw = vae.tile_overlap_factor_height, vae.tile_overlap_factor_width
                ov_h, ov_w = int(lmh * (1 - fh)), int(lmw * (1 - fw))
                bh, bw = int(vae.tile_sample_min_height * fh), int(vae.tile_sample_min_width * fw)
                rows = [
                    [self._decode_tile(zs[..., i : i + lmh, j : j + lmw], caches, (i, j)) for j in range(0, w, ov_w)]
                    for i in range(0, h, ov_h)
                ]
                out = _blend_tiles(vae, rows, bh, bw, vae.tile_sample_min_height - bh, vae.tile_sample_min_width - bw)
                del rows
            sink.write(b0, f0, out)
            f0 += out.shape[2]
            del out
        return f0

    def tile_stride(self, tile):
        return int(tile * (1 - self._overlap_factor(tile)))

    def tile_consistent(self, tile):
        return self._factor_consistent(tile, self.spatial_ratio)

    def tile_attrs(self, tile):
        f = self._overlap_factor(tile)
        return dict(
            use_tiling=True,
            tile_sample_min_height=tile * self.spatial_ratio,
            tile_sample_min_width=tile * self.spatial_ratio,
            tile_latent_min_height=tile,
            tile_latent_min_width=tile,
            tile_overlap_factor_height=f,
            tile_overlap_factor_width=f,
        )

