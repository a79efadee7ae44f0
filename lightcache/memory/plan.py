"""MemoryPlan: the ``memory=`` argument of ``lightcache.enable``."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch

_SWAP = ("off", "on", "auto")
# ints reach torch ops (chunk sizes) and the C++ ring (byte counts) as int64
_INT64_MAX = 2**63 - 1
_CACHE_DTYPES = {None: None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn}


def _show(value) -> str:
    """``repr(value)`` for an error message, short even for a huge int (whose repr can itself fail)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _opt_int(name: str, value, lo: int, unit: str, what: Optional[str] = None) -> Optional[int]:
    """None, or ``value`` as a plain int in [lo, 2**63 - 1]: numpy integers are accepted (and
    converted, so the plan stays equal to one written with literals); bool, floats (even 2.0, NaN,
    inf), strings and lists are a ValueError naming the field and the range (``what``, if given)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= _INT64_MAX:
        raise ValueError(what or f"MemoryPlan.{name} must be None or an int >= {lo} ({unit}) below 2**63, got {_show(value)}")
    return int(value)


@dataclass(frozen=True)
class MemoryPlan:
    """Where cached features live, how blocks are chunked and how the latents are decoded: the
    three strategies of docs/design.md §4. Every field is checked here (a ValueError or TypeError
    naming the field and what is allowed) and stored normalised, so equal plans compare equal.

    Args:
        swap (str or bool, defaults to "auto"): "on" moves every cached feature to a pinned host
            ring buffer right after it is produced and brings it back (prefetched ahead where the
            policy knows the order) before reuse; "off" keeps them on the device; "auto" swaps on
            CUDA and not on CPU (where host and device are one memory). True/False mean "on"/"off".
        device_cache_budget (int, optional, defaults to None): bytes of cached features allowed on
            the device at once with swapping (prefetched and fetched buffers), or None for no
            limit. Prefetches that would exceed it are not issued (the fetch then waits for its
            copy).
        cache_dtype (str, optional, defaults to None): None (the feature's own dtype, exact),
            "bf16", or "fp8" (e4m3 with per-token scales); compressed features are dequantised
            inside the fused reuse op.
        host_cache_budget (int, optional, defaults to None): bytes of pinned host memory the
            swapped cache may take, or None for no limit.
        sync_store (bool, defaults to False): with swapping, the compute stream waits for each
            stored feature's device-to-host copy before it goes on. Off, the copy overlaps later
            work and reads the tensor the policy handed over while it runs: lightcache's policies
            store tensors nothing writes to afterwards, but a pipeline that modified a cached
            tensor (a latent, a block output) in place right after it was stored would race with
            the copy on CUDA. On closes that, at the cost of the overlap.
        pinned (str, defaults to "prefer"): "prefer" (pageable memory with a warning when
            page-locked memory is refused), "require" (an error instead), or "off".
        chunk_size (int or str, optional, defaults to None): Feature chunk (exact; see
            lightcache.memory.chunk), in rows (tokens) per chunk: blocks of the known DiT families
            (Wan, HunyuanVideo, CogVideoX, LTX-Video, EasyAnimate) run their whole token-wise work
            over sequence pieces of this many tokens (keys/values of self-attention computed piece
            by piece into full-length buffers, queries attending to them through the model's own
            attention call); elsewhere feed-forward layers run over token chunks and attention
            over query chunks (keys/values whole); in video UNets resnets and transformer blocks
            run over whole frames (spatial) or pixels (temporal), as many as fit the rows, at
            least one, never splitting a GroupNorm's statistics. "auto": sized at each call from
            chunk_budget. None: off.
        chunk_budget (int, optional, defaults to None): with chunk_size="auto" (and only then),
            bytes the widest chunked intermediate of each chunked operation may take (a
            FeedForward's hidden rows, a query chunk's attention scores, a UNet piece's feature
            map; for a DiT block a row is the larger of its widest linear row and one query row of
            attention scores); a budget below one row (one frame or pixel for UNet modules) raises
            ValueError naming the minimum.
        decode_slices (int, optional, defaults to None): decode the latent video in slices of this
            many (latent) frames, or None. What a slice is per VAE, and where it is exact
            (AutoencoderKL, Wan, CogVideoX, LTX with its default overlap) or not (HunyuanVideo,
            SVD), is in lightcache.memory.decode.
        decode_budget (int, optional, defaults to None): bytes the decode stage may allocate on
            the device (activations, causal caches, and the output unless decode_to_host moves
            it): the largest slice, and only if even the smallest slice does not fit, the largest
            spatial tile (the VAE's own tiling) whose dry-run byte count fits; decoding raises
            ValueError naming the minimum when nothing fits. Exclusive with decode_slices.
        decode_overlap (int, optional, defaults to None): latent frames of temporal context per
            slice for the VAEs that need it: HunyuanVideo's tile overlap (default: the VAE's own)
            and LTX's margin on each side (default: the decoder's receptive field, exact); None for
            the defaults. Needs decode_slices or decode_budget.
        decode_to_host (bool, optional, defaults to None): write decoded frames to host memory as
            each slice finishes (the pipeline's video then comes back on the CPU); needs
            decode_slices or decode_budget. None: True with fit_bytes, else False.
        cpu_tracker (bool, defaults to False): on CPU, meter each stage's peak with the
            deterministic live-tensor tracker (report.peak_bytes); slower, meant for tests and
            measurements.
        fit_bytes (int, optional, defaults to None): "fit in N bytes": the working device memory
            a pipeline call may use beyond what is allocated when it starts (weights, inputs),
            N >= 8. Every budget left unset is derived from it: device_cache_budget = N/4,
            chunk_size="auto" with chunk_budget = N/8, decode_budget = 3N/4 (the stages run one
            after another; the cache budget stays reserved) with decode_to_host (the decoded video
            does not stay on the device). Cached features, chunked intermediates and the decoder
            are then bounded; what no strategy can split (the latents, the hidden state and
            attention's keys/values) must fit in the rest. Where a budget is below what one block,
            feature or frame needs, the error names the minimum; after a call whose stage peak
            exceeded N (CUDA allocator; on CPU with cpu_tracker) a ResourceWarning says by how
            much.
        cuda_peaks (bool, optional, defaults to None): on CUDA, meter each stage invocation's
            allocator peak (report.peak_bytes): a measurement mode that synchronises the device
            and resets the allocator's peak counter (``torch.cuda.reset_peak_memory_stats``, so
            the caller's own ``max_memory_allocated()`` around the pipeline call no longer covers
            the whole call) at every stage invocation. Off, nothing waits for the device and the
            user's counters are untouched; stage times come from CUDA events and peak_bytes stays
            None. None: on with fit_bytes (its warning needs the peaks), else off.
    """

    swap: Union[str, bool] = "auto"
    device_cache_budget: Optional[int] = None
    cache_dtype: Optional[str] = None
    host_cache_budget: Optional[int] = None
    sync_store: bool = False
    pinned: str = "prefer"
    chunk_size: Optional[Union[int, str]] = None
    chunk_budget: Optional[int] = None
    decode_slices: Optional[int] = None
    decode_budget: Optional[int] = None
    decode_overlap: Optional[int] = None
    decode_to_host: Optional[bool] = None
    cpu_tracker: bool = False
    fit_bytes: Optional[int] = None
    cuda_peaks: Optional[bool] = None

    def __post_init__(self):
        def put(name, value):  # frozen: fields are stored normalised (plain str/int)
            object.__setattr__(self, name, value)

        self._derive_from_fit_bytes()
        swap = self.swap
        if isinstance(swap, bool):
            put("swap", "on" if swap else "off")
        elif isinstance(swap, str) and swap in _SWAP:
            put("swap", str(swap))
        else:
            raise ValueError(f"MemoryPlan.swap must be one of {list(_SWAP)} or a bool, got {_show(swap)}")
        for name in ("device_cache_budget", "host_cache_budget"):
            put(name, _opt_int(name, getattr(self, name), 0, "bytes"))
        dt = self.cache_dtype
        if not (dt is None or (isinstance(dt, str) and dt in _CACHE_DTYPES)):  # a list would not even hash
            raise ValueError(f"MemoryPlan.cache_dtype must be one of None, 'bf16', 'fp8', got {_show(dt)}")
        c = self.chunk_size
        auto = isinstance(c, str) and c == "auto"
        if not auto:
            what = f"MemoryPlan.chunk_size must be None, 'auto' or an int >= 1 (rows) below 2**63, got {_show(c)}"
            put("chunk_size", _opt_int("chunk_size", c, 1, "rows", what))
        b = _opt_int("chunk_budget", self.chunk_budget, 1, "bytes")
        put("chunk_budget", b)
        if auto != (b is not None):
            raise ValueError(
                "MemoryPlan.chunk_budget goes with chunk_size='auto' (the chunk is sized from the budget) and only "
                f"with it; got chunk_size={_show(c)}, chunk_budget={_show(b)}"
            )
        d = _opt_int("decode_slices", self.decode_slices, 1, "frames")
        put("decode_slices", d)
        if not isinstance(self.decode_to_host, bool):
            raise TypeError(f"MemoryPlan.decode_to_host must be a bool, got {type(self.decode_to_host).__name__}")
        for name, low, unit in (("decode_budget", 1, "bytes"), ("decode_overlap", 0, "latent frames")):
            put(name, _opt_int(name, getattr(self, name), low, unit))
        if d is not None and self.decode_budget is not None:
            raise ValueError("MemoryPlan: give decode_slices or decode_budget, not both")
        if self.decode_to_host and d is None and self.decode_budget is None:
            raise ValueError("MemoryPlan.decode_to_host needs decode_slices or decode_budget (frames leave per slice)")
        if self.decode_overlap is not None and d is None and self.decode_budget is None:
            raise ValueError("MemoryPlan.decode_overlap needs decode_slices or decode_budget")
        if not isinstance(self.sync_store, bool):
            raise ValueError(f"MemoryPlan.sync_store must be a bool, got {type(self.sync_store).__name__}")
        if not isinstance(self.cpu_tracker, bool):
            raise TypeError(f"MemoryPlan.cpu_tracker must be a bool, got {type(self.cpu_tracker).__name__}")
        if not isinstance(self.cuda_peaks, bool):
            raise TypeError(f"MemoryPlan.cuda_peaks must be None or a bool, got {type(self.cuda_peaks).__name__}")
        if not (isinstance(self.pinned, str) and self.pinned in ("prefer", "require", "off")):
            raise ValueError(f"MemoryPlan.pinned must be 'prefer', 'require' or 'off', got {_show(self.pinned)}")

    def _derive_from_fit_bytes(self) -> None:
        n = self.fit_bytes
        if n is None:
            if self.decode_to_host is None:
                object.__setattr__(self, "decode_to_host", False)
            if self.cuda_peaks is None:
                object.__setattr__(self, "cuda_peaks", False)
            return
        n = _opt_int("fit_bytes", n, 8, "bytes")
        object.__setattr__(self, "fit_bytes", n)
        derived = {"device_cache_budget": n // 4}
        if self.chunk_size is None and self.chunk_budget is None:
            derived.update(chunk_size="auto", chunk_budget=n // 8)
        if self.decode_slices is None and self.decode_budget is None:
            derived["decode_budget"] = n - n // 4  # the cache budget stays reserved
        if self.decode_to_host is None:
            derived["decode_to_host"] = True
        if self.cuda_peaks is None:
            derived["cuda_peaks"] = True  # the over-budget warning needs the allocator's peaks
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def check_model(self, adapter, model, pipe=None) -> None:
        """Refuse (ValueError) what this plan cannot do for ``model`` (and ``pipe``'s VAE), before
        ``lightcache.enable`` changes anything."""
        if self.decode_slices is not None or self.decode_budget is not None:
            what = "decode_slices" if self.decode_slices is not None else "decode_budget"
            if pipe is None:
                raise ValueError(
                    f"MemoryPlan.{what} slices the VAE decode of a pipeline: pass the pipeline to "
                    "lightcache.enable(), not its denoiser"
                )
            from lightcache.memory.decode import check_decode_slicing

            check_decode_slicing(getattr(pipe, "vae", None), self)

    def swaps_on(self, device: torch.device) -> bool:
        return self.swap == "on" or (self.swap == "auto" and device.type == "cuda")

    @property
    def storage_dtype(self) -> Optional[torch.dtype]:
        return _CACHE_DTYPES[self.cache_dtype]

    def make_store(self, session):
        from lightcache.memory.store import DeviceStore
        from lightcache.memory.swap import SwapStore

        device = next(session.denoiser.parameters()).device
        if self.swaps_on(device):
            return SwapStore(self, device)
        return DeviceStore(storage_dtype=self.storage_dtype)
