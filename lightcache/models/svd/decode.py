"""Sliced decode of SVD's ``AutoencoderKLTemporalDecoder``.

The pipeline already decodes ``decode_chunk_size`` frames per call; s splits each call into calls
of s frames. The temporal decoder mixes the frames of a call (time convolutions, GroupNorms over
frames), so this equals the pipeline run with ``decode_chunk_size=s`` (when s divides the
pipeline's chunk) and NOT the pipeline's own chunks (measured in tests/test_memory_decode.py): not
exact, warned at enable time. This VAE has no spatial tiling.
"""

from __future__ import annotations

from lightcache.memory.decode import PerFrameSlicer


class TemporalDecoderSlicer(PerFrameSlicer):
    """SVD: the temporal decoder mixes the frames of one call; s frames per call (see module doc)."""

    exact = False

    @property
    def inexact_note(self):
        return (
            "AutoencoderKLTemporalDecoder mixes the frames of one decoder call (time convolutions, GroupNorms over "
            "frames), so slices of s frames give the pipeline run with decode_chunk_size=s, not with the "
            "pipeline's own decode_chunk_size (the same only when s >= it): measured up to 0.51 max abs on pixels "
            "in [0, 1] on a random-weight tiny VAE"
        )

    def _videos(self, z, extra):
        nf = extra.get("num_frames")
        nf = z.shape[0] if nf is None else int(nf)
        if nf < 1 or z.shape[0] % nf:
            raise ValueError(
                f"vae.decode: {z.shape[0]} latent frames are not a whole number of videos of num_frames={nf}"
            )
        return nf

    def slice_options(self, z, extra):
        return list(range(1, self._videos(z, extra) + 1))

    def run(self, original, z, extra, s, sink, b0, limit=None):
        nf = self._videos(z, extra)
        rest = {k: v for k, v in extra.items() if k != "num_frames"}
        k = 0
        for v0 in range(0, z.shape[0], nf):  # one video after another, s frames per call
            for start in range(v0, v0 + nf, s):
                if limit is not None and k >= limit:
                    return z.shape[0]
                stop = min(start + s, v0 + nf)
                part = original(z[start:stop], num_frames=stop - start, return_dict=False, **rest)[0]
                sink.write(0, start, part)
                del part
                k += 1
        return z.shape[0]

    def tile_attrs(self, tile):
        return {}

