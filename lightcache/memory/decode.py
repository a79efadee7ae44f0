"""Sliced latent decode (docs/design.md §4.3): the generic machinery.

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

What a slice is, per VAE, is a :class:`_Slicer` subclass: the per-frame one for image VAEs
(:class:`PerFrameSlicer`, ``AutoencoderKL``: TextToVideoSD, AnimateDiff) is here, the video VAEs'
are in their families' folders (``lightcache/models/<family>/decode.py``: Wan, CogVideoX,
HunyuanVideo, LTX-Video, SVD's temporal decoder), each documenting what is exact, and each is
registered for its VAE classes by its family's registry entry (lightcache.models); a VAE's slicer is
found by its class MRO. A spatial tiling the user switched on with ``vae.enable_tiling()`` is kept.

Exactness: a slicer says whether it is ``exact`` for the plan's settings -- the sliced decode gives
the VAE's own decode, to convolution blocking (<= 1e-5) -- and when not, its ``inexact_note``:
:func:`check_decode_slicing` (run by ``lightcache.enable`` through ``MemoryPlan.check_model``) then
warns once with an :class:`InexactDecodeWarning` saying by how much the output may differ. Spatial
tiles chosen by a budget warn separately, when the plan for a latent shape is made (they blend tile
borders). ``s`` in the slicers' docs = ``decode_slices``.

Budget (``decode_budget``, bytes): the bytes the decode may allocate on the device on top of what
exists when it starts -- decoder activations, causal caches, and the output unless it goes to the
host (on CPU, host and device are one memory, so the output always counts). Slices are sized by a
dry run of the sliced decode with the VAE's weights and the latents on the meta device (shapes
only), counting every tensor it allocates the way the CPU tracker does, over its first slices (they
include every distinct slice shape; later ones repeat or shrink; a slicer that runs tile after tile,
Wan's, runs the first slices of every tile): the largest slice whose count fits
is used; when even the smallest slice does not fit, the largest spatial tile (the VAE's own tiling;
square tiles, at most 16 per frame) that fits at the smallest slice; when nothing fits,
``ValueError`` naming the minimum -- raised when the pipeline reaches its decode, since the latent
shape is known only then (:func:`plan_decode` checks ahead). On CPU the count is what the tracker
reports; on CUDA the allocator's block rounding and library workspaces come on top. The plan is made
once per latent shape; the dry run swaps the VAE's parameters for meta tensors while it runs, so
the VAE must not be used from another thread meanwhile. Speed (the same counts, tested against the
plain dry run in tests/test_decode_dry_run.py): the dry runs of one decoder share a memo of meta
ops' output metadata (lightcache._live_bytes), and on meta tensors diffusers' tile blends run one
row of their extent (:func:`_meta_blends`; also in a simulated decode, lightcache.simulate).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch


class InexactDecodeWarning(UserWarning):
    """The sliced decode set by a MemoryPlan does not give the VAE's own decode (warned once when
    lightcache is enabled, with how much the output may differ)."""


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
        self.size = None  # (height, width) of the video when slices write spatial regions of it

    def shape_for(self, part: torch.Tensor) -> list:
        """The video's shape, from one written part's."""
        shape = list(part.shape)
        shape[self.frame_dim] = self.frames
        if self.frame_dim != 0:
            shape[0] = self.batch
        if self.size is not None:
            shape[-2:] = self.size
        return shape

    def _host_empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        """Host memory of ``like``'s dtype (page-locked per ``pinned``) for the video or a slicer's
        scratch."""
        pin = self.pinned != "off"
        try:
            return torch.empty(shape, dtype=like.dtype, device="cpu", pin_memory=pin)
        except RuntimeError as e:  # page-locked memory refused (memlock limit)
            if self.pinned == "require":
                raise RuntimeError(f"lightcache decode_to_host: page-locked host memory refused ({e})") from e
            warnings.warn(f"lightcache decode_to_host: page-locked memory unavailable, using pageable memory ({e})")
            return torch.empty(shape, dtype=like.dtype, device="cpu")

    def _allocate(self, part: torch.Tensor) -> None:
        shape = self.shape_for(part)
        if not self.to_host or part.device.type == "cpu":
            self.out = torch.empty(shape, dtype=part.dtype, device=part.device)
            return
        self.out = self._host_empty(shape, part)
        self.async_copies = self.out.is_pinned()

    # -- scratch: finished pixels a slicer keeps for a while (Wan's tile-blending strips) ----------
    def apart(self, like: torch.Tensor) -> bool:
        """Whether scratch lives in host memory, apart from ``like``'s device: with decode_to_host
        (as the video does), unless that device is the CPU."""
        return (self.to_host or self.discard) and like.device.type != "cpu"

    def scratch(self, shape, like: torch.Tensor) -> torch.Tensor:
        """A buffer of ``like``'s dtype: in host memory when :meth:`apart` (a dry run's is not
        counted, as its output is not), else on ``like``'s device."""
        if not self.apart(like):
            return like.new_empty(shape)
        if self.discard:
            from torch.utils._python_dispatch import _disable_current_modes

            with _disable_current_modes():
                return torch.empty(shape, dtype=like.dtype, device=like.device)
        return self._host_empty(shape, like)

    def fetch(self, region: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A region of scratch on ``like``'s device (a device copy when :meth:`apart`)."""
        if not self.apart(like):
            return region
        out = torch.empty(region.shape, dtype=region.dtype, device=like.device)
        out.copy_(region, non_blocking=region.is_pinned())
        return out

    def write(self, b0: int, f0: int, part: torch.Tensor, y0: int = 0, x0: int = 0) -> None:
        """Write ``part`` at batch ``b0``, frame ``f0`` and (with :attr:`size` set) pixel row ``y0``,
        column ``x0``."""
        if self.discard:
            return
        whole = (f0 == 0 and part.shape[self.frame_dim] == self.frames
                 and (self.frame_dim == 0 or part.shape[0] == self.batch)
                 and (self.size is None or tuple(part.shape[-2:]) == tuple(self.size)))
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
        if self.size is not None:
            region = region.narrow(-2, y0, part.shape[-2]).narrow(-1, x0, part.shape[-1])
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


_BLENDS = ("blend_v", "blend_h", "blend_t")


@contextlib.contextmanager
def _meta_blends(vae):
    """On meta tensors (the budget's dry runs, lightcache.simulate), the VAE's own blends (diffusers'
    ``blend_v``/``blend_h``/``blend_t``, called by our slicers and by the VAEs' tiled decodes) run
    one row of the blend extent instead of every row: nothing is computed on meta, and each row
    allocates the same temporaries (two scaled rows and their sum, of one shape whatever the row)
    and frees them before the next, so the bytes counted are the same -- and a blend of 88 rows
    was most of a tiled dry run's ops (tests/test_decode_dry_run.py checks the counts per VAE).
    Only diffusers' own methods: a subclass's blend, or one patched on the instance, runs whole."""
    patched = []
    for name in _BLENDS:
        fn = getattr(type(vae), name, None)
        if fn is None or name in vae.__dict__ or not getattr(fn, "__module__", "").startswith("diffusers."):
            continue

        def one_row(a, b, blend_extent, fn=fn):
            if a.device.type == "meta" and b.device.type == "meta":
                blend_extent = min(blend_extent, 1)
            return fn(vae, a, b, blend_extent)

        vae.__dict__[name] = one_row
        patched.append(name)
    try:
        yield
    finally:
        for name in patched:
            del vae.__dict__[name]


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
# the slicer base and the generic slicers
# ------------------------------------------------------------------------------------------------


class _Slicer:
    """One VAE family: how to slice, how to run one slice, and the VAE's spatial tiling."""

    frame_dim = 2  # video VAEs: (batch, channels, frames, height, width)
    takes_overlap = False  # MemoryPlan.decode_overlap applies (temporal context per slice)

    def __init__(self, vae, memory):
        self.vae = vae
        self.memory = memory

    # -- overridden per family -----------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """Whether the sliced decode with this plan's settings gives the VAE's own decode (to
        convolution blocking, <= 1e-5 max abs)."""
        return True

    @property
    def inexact_note(self) -> str:
        """When not :attr:`exact`: why, and by how much the output may differ."""
        return ""

    def check(self) -> None:
        if self.memory.decode_overlap is not None and not self.takes_overlap:
            from lightcache.models import slicers_taking_overlap

            names = slicers_taking_overlap()
            listed = " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]
            raise ValueError(f"MemoryPlan.decode_overlap applies to {listed}, not {type(self.vae).__name__}")

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
        """Slices a dry run needs to meet every distinct slice shape (later ones repeat or shrink);
        per tile where the slicer runs tile after tile."""
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


class OwnBatchesSlicer(_Slicer):
    """VAEs whose GroupNorms normalise over the frames of one decoder call and that decode in
    their own batches of ``num_latent_frames_batch_size`` latent frames (CogVideoX, Magvit): only
    those batches give the VAE's output, so ``decode_slices`` must equal the batch size and a
    budget can change nothing but spatial tiles (where the VAE has them)."""

    def check(self):
        super().check()
        b = self.vae.num_latent_frames_batch_size
        s = self.memory.decode_slices
        if s is not None and s != b:
            raise ValueError(
                f"MemoryPlan.decode_slices: {type(self.vae).__name__} decodes in its own batches of {b} latent "
                "frames (its GroupNorms normalise over a whole batch, so another split changes the output); "
                f"use decode_slices={b} or decode_budget, got {s}"
            )

    def slice_options(self, z, extra):
        return [self.vae.num_latent_frames_batch_size]

    def clamp(self, s, z, extra):
        return self.vae.num_latent_frames_batch_size


class PerFrameSlicer(_Slicer):
    """Image VAEs applied to frames (``AutoencoderKL``: TextToVideoSD, AnimateDiff): s frames per
    call of the VAE's own decode. Frames are decoded independently, so this is exact (up to
    convolution blocking over a smaller batch, <= 1e-5)."""

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



class TemporalWindowSlicer(_Slicer):
    """Video VAEs decoded over temporal windows with ``decode_overlap`` latent frames of context
    (HunyuanVideo, LTX-Video): the first latent frame decodes to one frame, every later one to
    ``temporal_compression_ratio`` frames; spatial tiles are the VAE's own at its stride ratio.
    Subclasses define the default overlap, one window's decode and the slice loop."""

    takes_overlap = True

    def __init__(self, vae, memory):
        super().__init__(vae, memory)
        self.rt = vae.temporal_compression_ratio
        self.spatial_ratio = vae.spatial_compression_ratio

    def check(self):
        o = self.memory.decode_overlap
        if o is not None and o < 0:
            raise ValueError(f"MemoryPlan.decode_overlap must be >= 0 latent frames, got {o}")

    def default_overlap(self) -> int:
        raise NotImplementedError

    def overlap(self) -> int:
        o = self.memory.decode_overlap
        return self.default_overlap() if o is None else o

    def frames_out(self, z, extra):
        return (z.shape[2] - 1) * self.rt + 1

    def tile_stride(self, tile):
        return self._ratio_stride(tile, self.vae.tile_sample_stride_height / self.vae.tile_sample_min_height)

    def tile_attrs(self, tile):
        return square_tiles(tile, self.tile_stride(tile), self.spatial_ratio)


def square_tiles(tile: int, stride: int, ratio: int) -> dict:
    """The VAE tiling attributes for square latent tiles of ``tile`` pixels every ``stride``."""
    return dict(
        use_tiling=True,
        tile_sample_min_height=tile * ratio,
        tile_sample_min_width=tile * ratio,
        tile_sample_stride_height=stride * ratio,
        tile_sample_stride_width=stride * ratio,
    )


def __getattr__(name):
    if name == "SUPPORTED":  # the VAE class names with a slicer (the registry's, when asked)
        from lightcache.models import supported_vaes

        return tuple(supported_vaes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _slicer(vae, memory) -> _Slicer:
    from lightcache.models import slicer_for, supported_vaes

    cls = slicer_for(vae)
    if cls is None:
        field = "decode_slices" if memory.decode_slices is not None else "decode_budget"
        raise ValueError(
            f"MemoryPlan.{field}: sliced decode supports {', '.join(supported_vaes())} (and their subclasses); "
            f"the pipeline's VAE is {type(vae).__name__ if vae is not None else 'missing'}"
        )
    slicer = cls(vae, memory)
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
        self.memo = {}  # the dry runs' meta-op memo (lightcache._live_bytes), shared by every estimate

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
        count = LiveBytes(memo=self.memo)
        # the caller's modes (the CPU stage tracker) must not see the dry run
        with _disable_current_modes(), torch.no_grad():
            meta = {k: torch.empty_like(v, device="meta") for k, v in
                    list(self.vae.named_parameters()) + list(self.vae.named_buffers())}
            mz = z.to("meta")
            mextra = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
            with _reparametrize_module(self.vae, meta), self._tiling(tile), _meta_blends(self.vae), count:
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
        with _meta_blends(self.vae) if z.device.type == "meta" else contextlib.nullcontext():
            return self._decode(original, z, extra)

    def _decode(self, original, z, extra) -> torch.Tensor:
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
    """ValueError when ``memory``'s decode settings cannot apply to ``vae``; an
    :class:`InexactDecodeWarning` (one per call: ``lightcache.enable`` makes one per denoiser) when
    they apply but do not give the VAE's own decode, saying by how much the output may differ."""
    slicer = _slicer(vae, memory)
    if not slicer.exact:
        field = "decode_slices" if memory.decode_slices is not None else "decode_budget"
        warnings.warn(
            f"lightcache: MemoryPlan.{field}={getattr(memory, field)}: the sliced decode of {type(vae).__name__} "
            f"is not exact, its output may differ from the VAE's own decode: {slicer.inexact_note}",
            InexactDecodeWarning,
            stacklevel=4,  # the caller of lightcache.enable (through MemoryPlan.check_model)
        )


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
