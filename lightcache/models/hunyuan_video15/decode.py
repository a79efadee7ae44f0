"""Sliced decode of ``AutoencoderKLHunyuanVideo15``.

NOT exact. The decoder is causal in time (causal 3-D convolutions, replicate-padded at the first
frame; mid-block attention from each frame to all earlier ones; per-position RMS norms) and
decodes the whole video in one call, with no cache to carry between calls. A slice of s latent
frames is decoded with ``decode_overlap`` (default 1, at least 1) earlier latent frames in front
as context, and the frames decoded from the context are dropped: the first latent frame of a
decoder call decodes to one frame and every later one to ``temporal_compression_ratio`` frames, so
the kept frames line up with the whole decode's. What the context does not cover (the earlier
frames the convolutions' and the attention's reach extends to) makes a slice differ from the whole
decode: by the amount the inexact note states. The VAE's own spatial tiling
(``enable_tiling()``) is kept inside each slice; a budget cannot choose tiles for it.
"""

from __future__ import annotations

from lightcache.memory.decode import _Slicer


class HunyuanVideo15Slicer(_Slicer):
    takes_overlap = True

    def __init__(self, vae, memory):
        super().__init__(vae, memory)
        self.rt = vae.temporal_compression_ratio

    def check(self):
        o = self.memory.decode_overlap
        if o is not None and o < 1:
            raise ValueError(
                "MemoryPlan.decode_overlap must be >= 1 latent frame for AutoencoderKLHunyuanVideo15 (a decoder "
                f"call's first latent frame decodes to one frame, so each slice needs one in front), got {o}"
            )

    def overlap(self) -> int:
        o = self.memory.decode_overlap
        return 1 if o is None else o

    @property
    def exact(self):
        return False

    @property
    def inexact_note(self):
        return (
            "AutoencoderKLHunyuanVideo15 decodes the whole video in one causal call (causal convolutions and "
            "mid-block attention reach back to the first frame), and a slice sees only decode_overlap latent frames "
            "before it: measured up to 1.8 max abs on the decoder's output (values within about +-1.4) on a "
            "random-weight tiny VAE, with 3-9 latent frames and decode_overlap 1-2 (3-5 frames re-checked by tests/test_hunyuan_video15.py)"
        )

    def frames_out(self, z, extra):
        return (z.shape[2] - 1) * self.rt + 1

    def run(self, original, z, extra, s, sink, b0, limit=None):
        t, c, f0 = z.shape[2], self.overlap(), 0
        for k, t0 in enumerate(range(0, t, s)):
            if limit is not None and k >= limit:
                break
            t1 = min(t0 + s, t)
            out = self.vae._decode(z[:, :, max(0, t0 - c) : t1])
            if t0 > 0:  # drop the context's frames
                out = out[:, :, -(t1 - t0) * self.rt :]
            sink.write(b0, f0, out)
            f0 += out.shape[2]
            del out
        return f0
