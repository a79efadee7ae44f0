"""Sliced decode of ``AutoencoderKLMagvit`` (EasyAnimate).

The VAE decodes its first latent frame alone and the rest in its own batches of
``num_latent_frames_batch_size`` latent frames, carrying causal-convolution caches between them;
its GroupNorms normalise over the frames of one decoder call, so only those batches give its
output. The sliced decode runs exactly those batches (exact: bit-identical) and writes each into
the preallocated video, frames to the host with ``decode_to_host``, instead of holding every batch's
output and concatenating them. ``decode_slices`` must equal the batch size; the VAE's spatial tiling
(which blends tiles) is not used, so a budget below one batch is an error naming the minimum.
"""

from __future__ import annotations

from lightcache.memory.decode import OwnBatchesSlicer


class MagvitSlicer(OwnBatchesSlicer):
    def _groups(self, t):
        b = self.vae.num_latent_frames_batch_size
        return [(0, 1)] + [(i, min(t, i + b)) for i in range(1, t, b)]

    def frames_out(self, z, extra):
        # the first latent frame gives one frame, every later one temporal_compression_ratio frames
        return 1 + (z.shape[2] - 1) * int(self.vae.temporal_compression_ratio)

    def run(self, original, z, extra, s, sink, b0, limit=None):
        vae = self.vae
        vae._clear_conv_cache()  # the causal caches start empty, as in the VAE's own decode
        f0 = 0
        try:
            for k, (g0, g1) in enumerate(self._groups(z.shape[2])):
                if limit is not None and k >= limit:
                    break
                out = vae.decoder(vae.post_quant_conv(z[:, :, g0:g1]))  # post_quant_conv is 1x1x1: per slice
                sink.write(b0, f0, out)
                f0 += out.shape[2]
                del out
        finally:
            vae._clear_conv_cache()
        return f0

    def probe_limit(self, s):
        return 3  # the first frame, one full batch, and the shape that repeats
