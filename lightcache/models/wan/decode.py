"""Sliced decode of ``AutoencoderKLWan``.

The first latent frame alone, then s latent frames per decoder call, the decoder's causal feature
cache (the last two frames each causal conv saw) carried from slice to slice. Every other layer
works per frame, so this is exact: s=1 makes the VAE's own frame-by-frame decoder calls; s>1
differs from them only by convolution blocking (<= 1e-5). The VAE's own spatial tiles are kept.
"""

from __future__ import annotations

import torch

from lightcache.memory.decode import _blend_tiles, _Slicer, square_tiles


class WanSlicer(_Slicer):
    def __init__(self, vae, memory):
        super().__init__(vae, memory)
        self.rt = 2 ** sum(bool(t) for t in vae.config.temperal_downsample)

    def slice_options(self, z, extra):
        return list(range(1, max(1, z.shape[2] - 1) + 1))

    def frames_out(self, z, extra):
        return 1 + self.rt * (z.shape[2] - 1)

    def _slices(self, t, s):
        return [(0, 1)] + [(t0, min(t0 + s, t)) for t0 in range(1, t, s)]

    def _geometry(self, h, w):
        """The VAE's tiled_decode layout when its tiling applies to this latent, else None."""
        vae = self.vae
        scr = vae.spatial_compression_ratio
        lmh, lmw = vae.tile_sample_min_height // scr, vae.tile_sample_min_width // scr
        if not (vae.use_tiling and (w > lmw or h > lmh)):
            return None
        p = vae.config.patch_size or 1
        sh, sw = vae.tile_sample_stride_height // p, vae.tile_sample_stride_width // p
        return dict(
            min=(lmh, lmw),
            stride=(vae.tile_sample_stride_height // scr, vae.tile_sample_stride_width // scr),
            blend=(vae.tile_sample_min_height // p - sh, vae.tile_sample_min_width // p - sw),
            crop=(sh, sw),
            size=(h * scr // p, w * scr // p),
        )

    def _finish(self, x):
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        if self.vae.config.patch_size is not None:
            x = unpatchify(x, patch_size=self.vae.config.patch_size)
        return torch.clamp(x, min=-1.0, max=1.0)

    def _decode_tile(self, z, cache, first):
        vae = self.vae
        x = vae.post_quant_conv(z)
        return vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first)

    def run(self, original, z, extra, s, sink, b0, limit=None):
        vae = self.vae
        n_conv = vae._cached_conv_counts["decoder"]
        h, w = z.shape[-2:]
        geo = self._geometry(h, w)
        caches = {}  # one causal feature cache per spatial tile, carried across slices
        f0 = 0
        for k, (t0, t1) in enumerate(self._slices(z.shape[2], s)):
            if limit is not None and k >= limit:
                break
            zs = z[:, :, t0:t1]
            if geo is None:
                out = self._decode_tile(zs, caches.setdefault(None, [None] * n_conv), t0 == 0)
            else:
                (lmh, lmw), (st_h, st_w) = geo["min"], geo["stride"]
                rows = [
                    [
                        self._decode_tile(
                            zs[..., i : i + lmh, j : j + lmw], caches.setdefault((i, j), [None] * n_conv), t0 == 0
                        )
                        for j in range(0, w, st_w)
                    ]
                    for i in range(0, h, st_h)
                ]
                out = _blend_tiles(vae, rows, *geo["blend"], *geo["crop"])
                del rows
                out = out[..., : geo["size"][0], : geo["size"][1]]
            out = self._finish(out)
            sink.write(b0, f0, out)
            f0 += out.shape[2]
            del out
        return f0

    def tile_stride(self, tile):
        return self._ratio_stride(tile, self.vae.tile_sample_stride_height / self.vae.tile_sample_min_height)

    def tile_attrs(self, tile):
        return square_tiles(tile, self.tile_stride(tile), self.vae.spatial_compression_ratio)

