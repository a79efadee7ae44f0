"""Sliced decode of ``AutoencoderKLWan``.

The first latent frame alone, then s latent frames per decoder call, the decoder's causal feature
cache (the last two frames each causal conv saw) carried from slice to slice. Every other layer
works per frame, so this is exact: s=1 makes the VAE's own frame-by-frame decoder calls; s>1
differs from them only by convolution blocking (<= 1e-5).

Spatial tiles (the VAE's own ``enable_tiling``, or a budget's) run in the VAE's own order: tile
after tile, each over all its slices with its own causal cache, so that only one tile's cache is
alive (a cache holds the last two frames of every causal conv's input, most of them at the output
resolution: at real sizes as much as the slice's activations); each slice of a tile is blended,
cropped and written to the output as it is made, keeping of the finished tiles only the strips a
later tile blends with.
"""

from __future__ import annotations

import torch

from lightcache.memory.decode import _Slicer, square_tiles


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
        h, w = z.shape[-2:]
        geo = self._geometry(h, w)
        if geo is None:
            return self._run_tile(z, s, limit, lambda f0, out: sink.write(b0, f0, self._finish(out)))
        return self._run_tiled(z, s, sink, b0, geo, limit)

    def _run_tile(self, z, s, limit, emit) -> int:
        """Decode ``z`` (one spatial tile, or the whole frame) slice after slice with one causal
        cache; ``emit(f0, out)`` takes each slice's decoder output as it is made. Returns the frames
        decoded."""
        cache = [None] * self.vae._cached_conv_counts["decoder"]
        f0 = 0
        for k, (t0, t1) in enumerate(self._slices(z.shape[2], s)):
            if limit is not None and k >= limit:
                break
            out = self._decode_tile(z[:, :, t0:t1], cache, t0 == 0)
            emit(f0, out)
            f0 += out.shape[2]
            del out
        return f0

    def _run_tiled(self, z, s, sink, b0, geo, limit) -> int:
        """The VAE's tiled_decode, streamed: tile after tile (row-major), each over all its slices
        with its own causal cache, which is freed when the tile is done -- so only one tile's cache
        exists at a time (the VAE's own order). Each slice of a tile is blended in place with the
        tile above and the tile to its left the way tiled_decode does (blend_v, then blend_h; both
        per pixel and per frame, so blending a slice at a time gives the same values), cropped and
        written to the sink. Of the finished tiles only the strips a later tile blends with are
        kept: the bottom rows of each tile of the row above and the right columns of the tile to
        the left, all frames, in buffers reused from tile to tile: in host memory with
        decode_to_host (finished pixels, like the video; each slice copies its part of them to the
        device to blend). ``limit`` (dry runs) stops each tile after that many slices."""
        vae = self.vae
        h, w = z.shape[-2:]
        (lmh, lmw), (st_h, st_w) = geo["min"], geo["stride"]
        bh, bw = geo["blend"]
        ch, cw = geo["crop"]
        size_h, size_w = geo["size"]
        rows, cols = list(range(0, h, st_h)), list(range(0, w, st_w))
        sink.size = (size_h * self._unpatch(), size_w * self._unpatch())
        frames = self.frames_out(z, None)
        below = {}  # column -> bottom rows of the latest tile in that column (all frames)
        right = None  # right columns of the previous tile of this row (all frames; reused row to row)
        written = 0
        for ii, i in enumerate(rows):
            for jj, j in enumerate(cols):
                zt = z[..., i : i + lmh, j : j + lmw]
                keep_below, keep_right = ii + 1 < len(rows), jj + 1 < len(cols)

                def emit(f0, tile, ii=ii, jj=jj, keep_below=keep_below, keep_right=keep_right):
                    nonlocal right
                    n = tile.shape[2]
                    if ii > 0:
                        tile = vae.blend_v(sink.fetch(below[jj].narrow(2, f0, n), tile), tile, bh)
                    if jj > 0:
                        left = right.narrow(-2, 0, tile.shape[-2]).narrow(2, f0, n)
                        tile = vae.blend_h(sink.fetch(left, tile), tile, bw)
                    if keep_below:  # the rows blend_v of the tile below reads (it clips to the shorter)
                        eh = min(bh, tile.shape[-2])
                        if jj not in below:
                            below[jj] = sink.scratch(tile.shape[:2] + (frames, eh, tile.shape[-1]), tile)
                        dst = below[jj].narrow(2, f0, n)
                        dst.copy_(tile[..., tile.shape[-2] - eh :, :], non_blocking=dst.is_pinned())
                    if keep_right:
                        ew = min(bw, tile.shape[-1])
                        if right is None or right.shape[-2] < tile.shape[-2] or right.shape[-1] != ew:
                            right = sink.scratch(tile.shape[:2] + (frames, tile.shape[-2], ew), tile)
                        dst = right.narrow(-2, 0, tile.shape[-2]).narrow(2, f0, n)
                        dst.copy_(tile[..., tile.shape[-1] - ew :], non_blocking=dst.is_pinned())
                    y0, x0 = ii * ch, jj * cw
                    part = tile[..., : min(ch, size_h - y0), : min(cw, size_w - x0)]
                    p = self._unpatch()
                    sink.write(b0, f0, self._finish(part), y0 * p, x0 * p)

                written = max(written, self._run_tile(zt, s, limit, emit))
        return written

    def _unpatch(self) -> int:
        return self.vae.config.patch_size or 1

    def tile_stride(self, tile):
        return self._ratio_stride(tile, self.vae.tile_sample_stride_height / self.vae.tile_sample_min_height)

    def tile_attrs(self, tile):
        return square_tiles(tile, self.tile_stride(tile), self.vae.spatial_compression_ratio)

