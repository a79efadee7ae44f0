"""Sliced latent decode (DESIGN.md §4.3).

With ``MemoryPlan(decode_slices=...)`` or ``MemoryPlan(decode_budget=...)`` the pipeline's
``vae.decode`` runs the VAE's decoder over temporal slices of the latent video (and, when a budget
needs it, over spatial tiles laid out by the VAE's own tiling scheme), writing every finished slice
into one output allocated at the first slice -- in host memory with ``decode_to_host``, so finished
frames leave the device at once. Only one slice's decoder activations (plus the VAE's causal caches)
exist at a time, and the decoded video exists once: the VAEs' own decodes keep finished slices in a
list and concatenate them, holding the video twice at the end. That list is smaller than the whole
output while the first slices run, so with the output on the device, few slices and activations
much larger than the video, the sliced decode can hold a few percent more than the VAE's own
slicing (measured in the tests: HunyuanVideo with its own tiles, 1.08x); it always holds less than
an unsliced decode.

What a slice is and what is exact, per VAE (``s`` = ``decode_slices``; frames are latent frames for
the video VAEs, ``r`` = the VAE's temporal compression; a spatial tiling the user switched on
with ``vae.enable_tiling()`` is kept):

- ``AutoencoderKL`` (TextToVideoSD, AnimateDiff): s frames per decoder call. Frames are decoded
  independently, so this is exact (up to convolution blocking over a smaller batch, <= 1e-5).
- ``AutoencoderKLWan``: the first latent frame alone, then s latent frames per decoder call, the
  decoder's causal feature cache (the last two frames each causal conv saw) carried from slice to
  slice. Every other layer works per frame, so this is exact: s=1 makes the VAE's own
  frame-by-frame decoder calls; s>1 differs from them only by convolution blocking (<= 1e-5).
- ``AutoencoderKLCogVideoX``: the VAE's own frame batches (``num_latent_frames_batch_size``; the
  first batch also takes the remainder), conv caches carried: exact. Its GroupNorms normalise over
  all frames of a decoder call, so no other temporal split gives the VAE's output; ``decode_slices``
  must equal the batch size, and a budget can only add spatial tiles.
- ``AutoencoderKLHunyuanVideo``: NOT exact. Its GroupNorms normalise over all frames of a decoder
  call and its mid-block attention spans frames, so no temporal split equals decoding the whole
  video in one call. A slice is one of the VAE's own temporal tiles (``_temporal_tiled_decode``:
  windows of s + overlap + 1 latent frames at a stride of s, consecutive windows blended linearly
  over r * overlap frames; overlap = ``decode_overlap``, by default the VAE's own, 1), streamed: the
  output equals the VAE's own framewise decode with those tile sizes (on by default in diffusers
  for videos longer than 4 latent frames) and differs from an untiled decode by what
  tests/test_memory_decode.py measures.
- ``AutoencoderKLLTXVideo``: every decoder layer is local in time (per-position norms, kernel-3
  temporal convs, depth-to-space upsampling), so a slice of s latent frames decoded with
  ``decode_overlap`` latent frames of context on each side and cropped to its own frames equals the
  whole-video decode once that margin covers the decoder's temporal receptive field -- the default
  margin, computed from the decoder's layers (exact; for LTX-Video's own decoder the field spans
  about 22 latent frames, so exact slices save memory only on long videos). A smaller margin trades
  exactness for memory (measured in the tests). The VAE's own temporal tiling is not used: in
  diffusers 0.42.1 the frames it keeps from its second tile on start one frame early (the first
  repeats the first tile's last frame), so every later frame is shifted by one. Decoders that
  inject noise (drawn per decoder call) are refused.
- ``AutoencoderKLTemporalDecoder`` (SVD): the pipeline already decodes ``decode_chunk_size`` frames
  per call; s splits each call into calls of s frames. The temporal decoder mixes the frames of a
  call (time convolutions, GroupNorms over frames), so this equals the pipeline run with
  ``decode_chunk_size=s`` (when s divides the pipeline's chunk) and NOT the pipeline's own chunks
  (measured in the tests). This VAE has no spatial tiling.

Budget (``decode_budget``, bytes): the bytes the decode may allocate on the device on top of what
exists when it starts -- decoder activations, causal caches, and the output unless it goes to the
host (on CPU, host and device are one memory, so the output always counts). Slices are sized by a
dry run of the sliced decode with the VAE's weights and the latents on the meta device (shapes
only), counting every tensor it allocates the way the CPU tracker does, over its first slices (they
include every distinct slice shape; later ones repeat or shrink): the largest slice whose count fits
is used; when even the smallest slice does not fit, the largest spatial tile (the VAE's own tiling;
square tiles, at most 16 per frame) that fits at the smallest slice; when nothing fits,
``ValueError`` naming the minimum -- raised when the pipeline reaches its decode, since the latent
shape is known only then (:func:`plan_decode` checks ahead). On CPU the count is what the tracker
reports; on CUDA the allocator's block rounding and library workspaces come on top. The plan is made
once per latent shape; the dry run swaps the VAE's parameters for meta tensors while it runs, so
the VAE must not be used from another thread meanwhile.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

SUPPORTED = (
    "AutoencoderKL",
    "AutoencoderKLWan",
    "AutoencoderKLCogVideoX",
    "AutoencoderKLHunyuanVideo",
    "AutoencoderKLLTXVideo",
    "AutoencoderKLTemporalDecoder",
)
# smallest spatial tile (latent pixels) a budget may choose: the VAEs' tilings need an overlap >= 1
_MIN_TILE = 2
# most tiles per frame a budget may choose (each costs a dry run per slice when planning)
_MAX_TILES = 16


@dataclass(frozen=True)
class DecodePlan:
    """How one latent shape is decoded: ``frames_per_slice`` (latent frames per slice, or frames
    per decoder call for the per-frame VAEs), ``tile`` (latent pixels per square spatial tile chosen
    by the budget, or None: the VAE's own tiling settings apply), ``estimated_bytes`` (the dry-run
    count of device bytes the decode allocates; None without a budget)."""

    frames_per_slice: int
    tile: Optional[int] = None
    estimated_bytes: Optional[int] = None


# ------------------------------------------------------------------------------------------------
# the output
# ------------------------------------------------------------------------------------------------


class _Sink:
    """The decoded video, allocated once at the first slice (its shape comes from that slice): on
    the device, or with ``to_host`` in host memory (page-locked on CUDA, per ``pinned``) so that each
    finished slice leaves the device at once. ``discard`` (dry runs) keeps nothing."""

    def __init__(self, batch: int, frames: int, frame_dim: int, to_host: bool, pinned: str, discard: bool = False):
        self.batch, self.frames, self.frame_dim = batch, frames, frame_dim
        self.to_host, self.pinned, self.discard = to_host, pinned, discard
        self.out = None
        self.async_copies = False

    def _allocate(self, part: torch.Tensor) -> None:
        shape = list(part.shape)
        shape[self.frame_dim] = self.frames
        if self.frame_dim != 0:
            shape[0] = self.batch
        if not self.to_host or part.device.type == "cpu":
            self.out = torch.empty(shape, dtype=part.dtype, device=part.device)
            return
        pin = self.pinned != "off"
        try:
            self.out = torch.empty(shape, dtype=part.dtype, device="cpu", pin_memory=pin)
        except RuntimeError as e:  # page-locked memory refused (memlock limit)
            if self.pinned == "require":
                raise RuntimeError(f"lightcache decode_to_host: page-locked host memory refused ({e})") from e
            warnings.warn(f"lightcache decode_to_host: page-locked memory unavailable, using pageable memory ({e})")
            self.out = torch.empty(shape, dtype=part.dtype, device="cpu")
        self.async_copies = self.out.is_pinned()

    def write(self, b0: int, f0: int, part: torch.Tensor) -> None:
        if self.discard:
            return
        whole = (f0 == 0 and part.shape[self.frame_dim] == self.frames
                 and (self.frame_dim == 0 or part.shape[0] == self.batch))
        if self.out is None and whole and (not self.to_host or part.device.type == "cpu"):
            self.out = part  # one slice is the whole video: keep it rather than copy it
            return
        if self.out is None:
            self._allocate(part)
        n = part.shape[self.frame_dim]
        if f0 + n > self.frames:
            raise RuntimeError(f"lightcache sliced decode: frames {f0}..{f0 + n} past the expected {self.frames}")
        region = self.out.narrow(self.frame_dim, f0, n)
        if self.frame_dim != 0:
            region = region.narrow(0, b0, part.shape[0])
        region.copy_(part, non_blocking=self.async_copies)

    def result(self, device: torch.device) -> torch.Tensor:
        if self.async_copies and device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the pinned copies must land before use
        return self.out


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _attrs(obj, values: dict):
    """Set attributes for the duration of a block (the VAE's tiling settings), then restore them."""
    old = {k: getattr(obj, k) for k in values}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


def _blend_tiles(vae, rows, blend_h: int, blend_w: int, crop_h: int, crop_w: int):
    """Blend one slice's decoded tiles in the order the VAEs' ``tiled_decode`` do (each tile blended
    in place with the already-blended tile above and to its left), crop and assemble."""
    out_rows = []
    for i, row in enumerate(rows):
        parts = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, blend_h)
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, blend_w)
            parts.append(tile[..., :crop_h, :crop_w])
        out_rows.append(torch.cat(parts, dim=-1))
    return torch.cat(out_rows, dim=-2)


def _bisect_last(options, fits):
    """The last option for which ``fits`` holds, given that it holds for options[0] and is monotone."""
    lo, hi = 0, len(options) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(options[mid]):
            lo = mid
        else:
            hi = mid - 1
    return options[lo]


# ------------------------------------------------------------------------------------------------
# per-VAE slicers
# ------------------------------------------------------------------------------------------------


class _Slicer:
    """One VAE family: how to slice, how to run one slice, and the VAE's spatial tiling."""

    frame_dim = 2  # video VAEs: (batch, channels, frames, height, width)

    def __init__(self, vae, memory):
        self.vae = vae
        self.memory = memory

    # -- overridden per family -----------------------------------------------------------------
    def check(self) -> None:
        if self.memory.decode_overlap is not None:
            raise ValueError(
                f"MemoryPlan.decode_overlap applies to AutoencoderKLHunyuanVideo and AutoencoderKLLTXVideo, "
                f"not {type(self.vae).__name__}"
            )

    def slice_options(self, z, extra):
        """Slice sizes a budget may choose, ascending."""
        return list(range(1, max(1, z.shape[2]) + 1))

    def clamp(self, s: int, z, extra) -> int:
        return min(s, self.slice_options(z, extra)[-1])

    def frames_out(self, z, extra) -> int:
        raise NotImplementedError

    def run(self, original, z, extra, s, sink, b0, limit=None) -> int:
        """Decode ``z`` (one batch group) in slices of ``s``, writing into ``sink`` at batch ``b0``;
        stop after ``limit`` slices (dry runs). Returns the frames written."""
        raise NotImplementedError

    def probe_limit(self, s: int) -> int:
        """Slices a dry run needs to meet every distinct slice shape (later ones repeat or shrink)."""
        return 3

    def tile_attrs(self, tile: int) -> dict:
        """The VAE's tiling attributes for square tiles of ``tile`` latent pixels (empty: cannot tile)."""
        return {}

    def tile_stride(self, tile: int) -> int:
        """Latent pixels between tile origins under :meth:`tile_attrs` (the VAE's own overlap rule)."""
        raise NotImplementedError

    def tile_options(self, z):
        """Tile sizes a budget may choose, largest first: the latent's larger side times 3/4, 9/16,
        ..., down to _MIN_TILE, keeping those with at most _MAX_TILES tiles per frame. Smaller tiles
        are not always cheaper (per-tile causal caches and overlaps add up), so each is costed."""
        if not self.tile_attrs(_MIN_TILE):
            return []
        h, w = z.shape[-2:]
        out, size = [], max(h, w)
        while True:
            size = min(size - 1, int(size * 0.75))
            if size < _MIN_TILE:
                return out
            st = self.tile_stride(size)
            if st >= 1 and math.ceil(h / st) * math.ceil(w / st) <= _MAX_TILES and self.tile_consistent(size):
                out.append(size)

    def tile_consistent(self, tile: int) -> bool:
        """Whether the VAE's tiling, with :meth:`tile_attrs`, crops each tile to exactly its stride
        (else its output would not have the video's size)."""
        return True

    def _ratio_stride(self, tile: int, ratio: float) -> int:
        return max(1, min(tile - 1, round(tile * ratio)))

    @staticmethod
    def _overlap_factor(tile: int) -> float:
        """For the VAEs whose tiling takes an overlap factor: a quarter of the tile, at least one
        latent pixel, as a factor."""
        return max(1, tile // 4) / tile

    def _factor_consistent(self, tile: int, scale: int) -> bool:
        f = self._overlap_factor(tile)  # the VAEs compute stride and crop with int() of products
        return int(tile * (1 - f)) * scale == tile * scale - int(tile * scale * f)

    def batch_groups(self, z):
        n = z.shape[0]
        if self.frame_dim != 0 and getattr(self.vae, "use_slicing", False) and n > 1:
            return [(b, b + 1) for b in range(n)]  # the VAE's own batch slicing, kept
        return [(0, n)]

    def split_extra(self, extra, b0, b1):
        return extra


class _PerFrame(_Slicer):
    """AutoencoderKL: frames are independent; s frames per call of the VAE's own decode."""

    frame_dim = 0

    def slice_options(self, z, extra):
        return list(range(1, z.shape[0] + 1))

    def frames_out(self, z, extra):
        return z.shape[0]

    def run(self, original, z, extra, s, sink, b0, limit=None):
        n = z.shape[0]
        for k, start in enumerate(range(0, n, s)):
            if limit is not None and k >= limit:
                break
            part = original(z[start : start + s], return_dict=False, **extra)[0]
            sink.write(0, start, part)
            del part
        return n

    def probe_limit(self, s):
        return 2

    def tile_attrs(self, tile):
        ratio = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return dict(use_tiling=True, tile_latent_min_size=tile, tile_sample_min_size=tile * ratio,
                    tile_overlap_factor=self._overlap_factor(tile))

    def tile_stride(self, tile):
        return int(tile * (1 - self._overlap_factor(tile)))

    def tile_consistent(self, tile):
        return self._factor_consistent(tile, 2 ** (len(self.vae.config.block_out_channels) - 1))


class _TemporalDecoder(_PerFrame):
    """SVD: the temporal decoder mixes the frames of one call; s frames per call (see module doc)."""

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


class _Wan(_Slicer):
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
        return _square_tiles(tile, self.tile_stride(tile), self.vae.spatial_compression_ratio)


def _square_tiles(tile: int, stride: int, ratio: int) -> dict:
    """The VAE tiling attributes for square latent tiles of ``tile`` pixels every ``stride``."""
    return dict(
        use_tiling=True,
        tile_sample_min_height=tile * ratio,
        tile_sample_min_width=tile * ratio,
        tile_sample_stride_height=stride * ratio,
        tile_sample_stride_width=stride * ratio,
    )


class _CogVideoX(_Slicer):
    def __init__(self, vae, memory):
        super().__init__(vae, memory)
        self.rt = int(vae.config.temporal_compression_ratio)
        self.spatial_ratio = 2 ** (len(vae.config.block_out_channels) - 1)

    def check(self):
        super().check()
        b = self.vae.num_latent_frames_batch_size
        s = self.memory.decode_slices
        if s is not None and s != b:
            raise ValueError(
                f"MemoryPlan.decode_slices: AutoencoderKLCogVideoX decodes in its own batches of {b} latent frames "
                f"(its GroupNorms normalise over a whole batch, so another split changes the output); "
                f"use decode_slices={b} or decode_budget, got {s}"
            )

    def _groups(self, t):
        b = self.vae.num_latent_frames_batch_size
        rem = t % b
        return [(b * i + (0 if i == 0 else rem), min(t, b * (i + 1) + rem)) for i in range(max(t // b, 1))]

    def slice_options(self, z, extra):
        return [self.vae.num_latent_frames_batch_size]

    def clamp(self, s, z, extra):
        return self.vae.num_latent_frames_batch_size

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


class _Hunyuan(_Slicer):
    def __init__(self, vae, memory):
        super().__init__(vae, memory)
        self.rt = vae.temporal_compression_ratio
        self.spatial_ratio = vae.spatial_compression_ratio

    def check(self):
        o = self.memory.decode_overlap
        if o is not None and o < 0:
            raise ValueError(f"MemoryPlan.decode_overlap must be >= 0 latent frames, got {o}")

    def overlap(self) -> int:
        o = self.memory.decode_overlap
        if o is not None:
            return o
        vae = self.vae  # the VAE's own tiles overlap by (min - stride) sample frames
        return max(0, (vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames) // self.rt)

    def slice_options(self, z, extra):
        return list(range(1, max(1, z.shape[2]) + 1))

    def frames_out(self, z, extra):
        return (z.shape[2] - 1) * self.rt + 1

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

    def tile_stride(self, tile):
        return self._ratio_stride(tile, self.vae.tile_sample_stride_height / self.vae.tile_sample_min_height)

    def tile_attrs(self, tile):
        return _square_tiles(tile, self.tile_stride(tile), self.spatial_ratio)


class _LTX(_Hunyuan):
    def check(self):
        super().check()
        cfg = self.vae.config
        if any(cfg.decoder_inject_noise):
            raise ValueError(
                "MemoryPlan.decode_slices: this AutoencoderKLLTXVideo injects random noise in its decoder, drawn per "
                "decoder call, so a sliced decode would draw different noise; sliced decode is not offered for it"
            )
        if cfg.patch_size_t != 1:
            raise ValueError(
                f"MemoryPlan.decode_slices: AutoencoderKLLTXVideo with patch_size_t={cfg.patch_size_t} is not "
                "supported (1 is)"
            )

    def receptive_radius(self) -> int:
        """Latent frames on either side that can reach an output frame through the decoder's
        temporal convs (each conv's reach divided by the temporal upsampling before it), rounded up."""
        from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d, LTXVideoUpsampler3d

        upsampler_conv = {}
        for m in self.vae.decoder.modules():
            if isinstance(m, LTXVideoUpsampler3d):
                upsampler_conv[id(m.conv)] = m.stride[0]
        reach, rate = 0.0, 1
        for m in self.vae.decoder.modules():  # registration order is execution order in this decoder
            if isinstance(m, LTXVideoCausalConv3d):
                k = m.kernel_size[0]
                reach += ((k - 1) if m.is_causal else (k - 1) // 2) / rate
                rate *= upsampler_conv.get(id(m), 1)
        return math.ceil(reach)

    def overlap(self):
        o = self.memory.decode_overlap
        return self.receptive_radius() if o is None else o

    def _window(self, z, temb):
        vae = self.vae
        lmh = vae.tile_sample_min_height // vae.spatial_compression_ratio
        lmw = vae.tile_sample_min_width // vae.spatial_compression_ratio
        if vae.use_tiling and (z.shape[-1] > lmw or z.shape[-2] > lmh):
            return vae.tiled_decode(z, temb, return_dict=True).sample
        return vae.decoder(z, temb)

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
            dec = self._window(z[:, :, a0:a1], temb)
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


_SLICERS = {
    "AutoencoderKL": _PerFrame,
    "AutoencoderKLTemporalDecoder": _TemporalDecoder,
    "AutoencoderKLWan": _Wan,
    "AutoencoderKLCogVideoX": _CogVideoX,
    "AutoencoderKLHunyuanVideo": _Hunyuan,
    "AutoencoderKLLTXVideo": _LTX,
}


def _slicer(vae, memory) -> _Slicer:
    name = type(vae).__name__
    if name not in _SLICERS:
        field = "decode_slices" if memory.decode_slices is not None else "decode_budget"
        raise ValueError(
            f"MemoryPlan.{field}: sliced decode supports {', '.join(SUPPORTED)}; "
            f"the pipeline's VAE is {name if vae is not None else 'missing'}"
        )
    slicer = _SLICERS[name](vae, memory)
    slicer.check()
    return slicer


# ------------------------------------------------------------------------------------------------
# planning and the wrapper
# ------------------------------------------------------------------------------------------------


class _Decoder:
    """The sliced decode of one VAE under one MemoryPlan."""

    def __init__(self, vae, memory):
        self.vae = vae
        self.memory = memory
        self.slicer = _slicer(vae, memory)
        self.plans = {}

    def _sink(self, z, extra, discard=False):
        s = self.slicer
        return _Sink(z.shape[0], s.frames_out(z, extra), s.frame_dim, self.memory.decode_to_host,
                     self.memory.pinned, discard=discard)

    def _tiling(self, tile):
        return _attrs(self.vae, self.slicer.tile_attrs(tile)) if tile is not None else contextlib.nullcontext()

    def estimate(self, original, z, extra, s, tile, batch=None) -> int:
        """Device bytes the sliced decode of one batch group ``z`` allocates, with an output for
        ``batch`` videos (default: z's): a dry run of its first slices with the VAE's weights and
        the latents swapped for meta tensors (shapes only: nothing is computed or allocated), every
        fresh storage counted as the CPU tracker counts it."""
        from torch.nn.utils.stateless import _reparametrize_module
        from torch.utils._python_dispatch import _disable_current_modes

        from lightcache._live_bytes import LiveBytes

        on_host = z.device.type == "cpu"  # host and device are one memory: the output counts
        sink = _Sink(batch or z.shape[0], self.slicer.frames_out(z, extra), self.slicer.frame_dim, False, "off",
                     discard=self.memory.decode_to_host and not on_host)
        count = LiveBytes()
        # the caller's modes (the CPU stage tracker) must not see the dry run
        with _disable_current_modes(), torch.no_grad():
            meta = {k: torch.empty_like(v, device="meta") for k, v in
                    list(self.vae.named_parameters()) + list(self.vae.named_buffers())}
            mz = z.to("meta")
            mextra = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
            with _reparametrize_module(self.vae, meta), self._tiling(tile), count:
                self.slicer.run(original, mz, mextra, s, sink, 0, limit=self.slicer.probe_limit(s))
                del sink
        return count.peak

    def plan(self, original, z, extra) -> DecodePlan:
        mem, sl = self.memory, self.slicer
        b0, b1 = sl.batch_groups(z)[0]
        zg, eg = z[b0:b1], sl.split_extra(extra, b0, b1)
        if mem.decode_budget is None:
            return DecodePlan(sl.clamp(mem.decode_slices, zg, eg))
        budget = mem.decode_budget
        options = sl.slice_options(zg, eg)
        cost = {}

        def fits(s, tile=None):
            if (s, tile) not in cost:
                cost[s, tile] = self.estimate(original, zg, eg, s, tile, batch=z.shape[0])
            return cost[s, tile] <= budget

        if fits(options[0]):
            s = _bisect_last(options, fits)
            return DecodePlan(s, None, cost[s, None])
        s = options[0]
        for tile in sl.tile_options(zg):  # largest first
            if fits(s, tile):
                return DecodePlan(s, tile, cost[s, tile])
        (_, tile), need = min(cost.items(), key=lambda kv: kv[1])
        smallest = f"{s} frame(s) per slice" + (f", {tile}x{tile} latent tiles" if tile is not None else ", untiled")
        raise ValueError(
            f"MemoryPlan.decode_budget={budget} bytes is below what {type(self.vae).__name__} needs to decode latents "
            f"of shape {tuple(z.shape)} ({z.dtype}, {z.device}): the minimum is {need} bytes ({smallest})"
        )

    def plan_for(self, original, z, extra) -> DecodePlan:
        key = (tuple(z.shape), z.dtype, str(z.device), bool(getattr(self.vae, "use_slicing", False)),
               bool(getattr(self.vae, "use_tiling", False)),
               tuple(sorted((k, tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in extra.items())))
        if key not in self.plans:
            plan = self.plans[key] = self.plan(original, z, extra)
            if plan.tile is not None:  # chosen by the budget: say so, the result changes
                warnings.warn(
                    f"lightcache: MemoryPlan.decode_budget={self.memory.decode_budget} bytes needs spatial tiles "
                    f"({plan.tile}) for {type(self.vae).__name__}; tiled decoding blends tile borders and is not "
                    "exact (raise the budget for an exact sliced decode)",
                    stacklevel=4,
                )
        return self.plans[key]

    def __call__(self, original, z, extra) -> torch.Tensor:
        sl = self.slicer
        plan = self.plan_for(original, z, extra)
        one_call = sl.frame_dim == 0 and plan.frames_per_slice >= z.shape[0] and plan.tile is None
        if one_call and not self.memory.decode_to_host:
            return original(z, return_dict=False, **extra)[0]  # one slice: the VAE's own call
        hook = getattr(self.vae, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.vae)  # what the VAE's decode does first (accelerate offload hooks)
        sink = self._sink(z, extra)
        frames = sink.frames
        with self._tiling(plan.tile):
            for b0, b1 in sl.batch_groups(z):
                written = sl.run(original, z[b0:b1], sl.split_extra(extra, b0, b1), plan.frames_per_slice, sink, b0)
                if written != frames:
                    raise RuntimeError(f"lightcache sliced decode: wrote {written} frames, expected {frames}")
        return sink.result(z.device)


def check_decode_slicing(vae, memory) -> None:
    """ValueError when ``memory``'s decode settings cannot apply to ``vae`` (see module doc)."""
    _slicer(vae, memory)


def _bind(vae, args, kwargs):
    """``vae.decode``'s arguments by name: the latents, return_dict, and the rest."""
    bound = inspect.signature(type(vae).decode).bind(vae, *args, **kwargs)
    a = dict(bound.arguments)
    a.pop("self", None)
    z = a.pop("z")
    return z, a.pop("return_dict", True), a


def plan_decode(vae, latents: torch.Tensor, memory, *args, **kwargs) -> DecodePlan:
    """The :class:`DecodePlan` that ``memory`` gives ``vae.decode(latents, *args, **kwargs)``
    (ValueError when the budget is too small), without decoding."""
    dec = _Decoder(vae, memory)
    z, _, extra = _bind(vae, (latents,) + args, kwargs)
    return dec.plan_for(type(vae).decode.__get__(vae), z, extra)


def sliced_decode(vae, memory):
    """A wrapper factory for ``vae.decode`` (see lightcache.engine._wrap_method); ValueError when
    the VAE or the plan's decode settings are not supported."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    dec = _Decoder(vae, memory)

    def make(original):
        def decode(*args, **kwargs):
            z, return_dict, extra = _bind(vae, args, kwargs)
            out = dec(original, z, extra)
            return DecoderOutput(sample=out) if return_dict else (out,)

        decode.lightcache_decoder = dec
        return decode

    return make
