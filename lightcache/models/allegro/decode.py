"""Sliced decode of ``AutoencoderKLAllegro``.

The VAE decodes only through its own tiling: fixed 3-D tiles (``vae.kernel`` pixels/frames, every
``vae.stride``), each decoded alone (one video, one tile per decoder call), weighted by linear
ramps over the overlaps and summed into the video; frames or pixels no tile covers stay zero. Its
own decode keeps every decoded tile until all are done, then the whole video. The slices here are
runs of s temporal tiles (``decode_slices`` counts temporal tiles, not latent frames): each run's
tiles are decoded and summed, in the VAE's order, into a buffer that spans only the run's frames
plus the overlap the previous run left; the frames no later tile touches go to the output at once
(to the host with ``decode_to_host``). Every tile is the VAE's own decoder call on the same latent
window, ramped the same way (diffusers' own blend function), and summed per pixel in the same
order: exact, bit-identical. The output is (B, F, C, H, W) as the VAE returns it. The VAE decodes
one video per decoder call, so videos are decoded one after another (as with ``enable_slicing``).
"""

from __future__ import annotations

import math

import torch

from lightcache.memory.decode import _Slicer


class AllegroSlicer(_Slicer):
    frame_dim = 1  # the VAE returns (B, F, C, H, W)

    def check(self):
        super().check()
        if not self.vae.use_tiling:
            raise ValueError(
                "MemoryPlan.decode_slices: AutoencoderKLAllegro decodes only with its tiling on (diffusers raises "
                "NotImplementedError otherwise); call pipe.vae.enable_tiling() first"
            )

    def _geometry(self, z):
        vae = self.vae
        rs, rt = vae.spatial_compression_ratio, int(vae.config.temporal_compression_ratio)
        kernel = (vae.kernel[0] // rt, vae.kernel[1] // rs, vae.kernel[2] // rs)
        stride = (vae.stride[0] // rt, vae.stride[1] // rs, vae.stride[2] // rs)
        counts = [math.floor((n - k) / st) + 1 for n, k, st in zip(z.shape[2:], kernel, stride)]
        return kernel, stride, counts

    def slice_options(self, z, extra):
        return list(range(1, max(1, self._geometry(z)[2][0]) + 1))

    def frames_out(self, z, extra):
        return z.shape[2] * int(self.vae.config.temporal_compression_ratio)

    def batch_groups(self, z):
        return [(b, b + 1) for b in range(z.shape[0])]  # one video per decoder call, as the VAE's tiles

    def probe_limit(self, s):
        return 3

    def run(self, original, z, extra, s, sink, b0, limit=None):
        from diffusers.models.autoencoders.autoencoder_kl_allegro import _prepare_for_blend

        vae = self.vae
        (lk_t, lk_h, lk_w), (ls_t, ls_h, ls_w), (n_t, n_h, n_w) = self._geometry(z)
        k_t, k_h, k_w = vae.kernel
        s_t, s_h, s_w = vae.stride
        overlap = (k_t - s_t, k_h - s_h, k_w - s_w)
        b, c, t, h, w = z.shape
        frames = self.frames_out(z, extra)
        rs = vae.spatial_compression_ratio
        # the VAE's post-quant conv, per frame (2-D), on the whole latent as it does
        z = vae.post_quant_conv(z.permute(0, 2, 1, 3, 4).flatten(0, 1)).unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4)
        out_c = vae.config.out_channels
        done, carry = 0, None
        for k, i0 in enumerate(range(0, max(n_t, 0), s)):
            if limit is not None and k >= limit:
                break
            i1 = min(n_t, i0 + s)
            last = i1 == n_t
            span = max((i1 - 1) * s_t + k_t, frames if last else 0)
            acc = z.new_zeros((b, out_c, span - done, h * rs, w * rs))
            if carry is not None:
                acc[:, :, : carry.shape[2]] = carry
            for i in range(i0, i1):
                for j in range(n_h):
                    for q in range(n_w):
                        tile = z[:, :, i * ls_t : i * ls_t + lk_t, j * ls_h : j * ls_h + lk_h,
                                 q * ls_w : q * ls_w + lk_w].contiguous()
                        dec = _prepare_for_blend((i, n_t, overlap[0]), (j, n_h, overlap[1]), (q, n_w, overlap[2]),
                                                 vae.decoder(tile))
                        f0 = i * s_t - done
                        acc[:, :, f0 : f0 + k_t, j * s_h : j * s_h + k_h, q * s_w : q * s_w + k_w] += dec
                        del dec
            final = frames if last else i1 * s_t  # frames no later tile reaches
            sink.write(b0, done, acc[:, :, : final - done].permute(0, 2, 1, 3, 4))
            carry = acc[:, :, final - done :]
            done = final
            del acc
        if n_t <= 0:  # no tile fits the latent: the VAE's video is all zeros
            sink.write(b0, 0, z.new_zeros((b, frames, out_c, h * rs, w * rs)))
            done = frames
        return done
