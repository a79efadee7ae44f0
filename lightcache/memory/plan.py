"""MemoryPlan: the ``memory=`` argument of ``lightcache.enable``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

_SWAP = ("off", "on", "auto")
_CACHE_DTYPES = {None: None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn}


@dataclass(frozen=True)
class MemoryPlan:
    """Where cached features live.

    swap: "on" moves every cached feature to a pinned host ring buffer right after it is produced
        and brings it back (prefetched ahead where the policy knows the order) before reuse;
        "off" keeps them on the device; "auto" swaps on CUDA and not on CPU (where host and
        device are one memory). True/False mean "on"/"off".
    device_cache_budget: bytes of cached features allowed on the device at once with swapping
        (prefetched and fetched buffers), or None for no limit. Prefetches that would exceed it are
        not issued (the fetch then waits for its copy).
    cache_dtype: None (the feature's own dtype, exact), "bf16", or "fp8" (e4m3 with per-token
        scales); compressed features are dequantised inside the fused reuse op.
    host_cache_budget: bytes of pinned host memory the swapped cache may take, or None.
    sync_store: with swapping, the compute stream waits for each stored feature's device-to-host
        copy before it goes on. Off (default), the copy overlaps later work and reads the tensor
        the policy handed over while it runs: lightcache's policies store tensors nothing writes
        to afterwards, but a pipeline that modified a cached tensor (a latent, a block output)
        in place right after it was stored would race with the copy on CUDA. On closes that, at
        the cost of the overlap.
    pinned: "prefer" (pageable memory with a warning when page-locked memory is refused),
        "require" (an error instead), or "off".
    chunk_size: Feature chunk (exact; see lightcache.memory.chunk), in rows (tokens) per chunk:
        blocks of the known DiT families (Wan, HunyuanVideo, CogVideoX, LTX-Video, EasyAnimate) run
        their whole token-wise work over sequence pieces of this many tokens (keys/values of
        self-attention computed piece by piece into full-length buffers, queries attending to them
        through the model's own attention call); elsewhere feed-forward layers run over token
        chunks and attention over query chunks (keys/values whole); in video UNets resnets and
        transformer blocks run over whole frames (spatial) or pixels (temporal), as many as fit
        the rows, at least one, never splitting a GroupNorm's statistics. "auto": sized at each
        call from chunk_budget. None: off.
    chunk_budget: with chunk_size="auto", bytes the widest chunked intermediate of each chunked
        operation may take (a FeedForward's hidden rows, a query chunk's attention scores, a UNet
        piece's feature map; for a DiT block a row is the larger of its widest linear row and one
        query row of attention scores); a budget below one row (one frame or pixel for UNet
        modules) raises ValueError naming the minimum.
    decode_slices: decode the latent video in slices of this many (latent) frames, or None. What
        a slice is per VAE, and where it is exact (AutoencoderKL, Wan, CogVideoX, LTX with its
        default overlap) or not (HunyuanVideo, SVD), is in lightcache.memory.decode.
    decode_budget: bytes the decode stage may allocate on the device (activations, causal caches,
        and the output unless decode_to_host moves it): the largest slice, and only if even the
        smallest slice does not fit, the largest spatial tile (the VAE's own tiling) whose dry-run
        byte count fits; decoding raises ValueError naming the minimum when nothing fits. Exclusive
        with decode_slices.
    decode_overlap: latent frames of temporal context per slice for the VAEs that need it:
        HunyuanVideo's tile overlap (default: the VAE's own) and LTX's margin on each side
        (default: the decoder's receptive field, exact); None for the defaults.
    decode_to_host: write decoded frames to host memory as each slice finishes (the pipeline's
        video then comes back on the CPU); needs decode_slices or decode_budget. None (default):
        True with fit_bytes, else False.
    fit_bytes: "fit in N bytes": the working device memory a pipeline call may use beyond what is
        allocated when it starts (weights, inputs). Every budget left unset is derived from it:
        device_cache_budget = N/4, chunk_size="auto" with chunk_budget = N/8, decode_budget = 3N/4
        (the stages run one after another; the cache budget stays reserved) with decode_to_host (the decoded video does not stay on the device). Cached features,
        chunked intermediates and the decoder are then bounded; what no strategy can split (the
        latents, the hidden state and attention's keys/values) must fit in the rest. Where a budget
        is below what one block, feature or frame needs, the error names the minimum; after a
        call whose stage peak exceeded N (CUDA allocator; on CPU with cpu_tracker) a
        ResourceWarning says by how much.
    cpu_tracker: on CPU, meter each stage's peak with the deterministic live-tensor tracker
        (report.peak_bytes); slower, meant for tests and measurements. On CUDA the allocator's
        peaks are always reported.
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

    def __post_init__(self):
        self._derive_from_fit_bytes()
        swap = self.swap
        if isinstance(swap, bool):
            object.__setattr__(self, "swap", "on" if swap else "off")
        elif swap not in _SWAP:
            raise ValueError(f"MemoryPlan.swap must be one of {list(_SWAP)} or a bool, got {swap!r}")
        for name in ("device_cache_budget", "host_cache_budget"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"MemoryPlan.{name} must be None or an int >= 0 (bytes), got {v!r}")
        if self.cache_dtype not in _CACHE_DTYPES:
            raise ValueError(f"MemoryPlan.cache_dtype must be one of None, 'bf16', 'fp8', got {self.cache_dtype!r}")
        c = self.chunk_size
        if c is not None and c != "auto" and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"MemoryPlan.chunk_size must be None, 'auto' or an int >= 1 (rows), got {c!r}")
        b = self.chunk_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"MemoryPlan.chunk_budget must be None or an int >= 1 (bytes), got {b!r}")
        if (c == "auto") != (b is not None):
            raise ValueError(
                "MemoryPlan.chunk_budget goes with chunk_size='auto' (the chunk is sized from the budget) and only "
                f"with it; got chunk_size={c!r}, chunk_budget={b!r}"
            )
        d = self.decode_slices
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(f"MemoryPlan.decode_slices must be None or an int >= 1 (frames), got {d!r}")
        if not isinstance(self.decode_to_host, bool):
            raise TypeError(f"MemoryPlan.decode_to_host must be a bool, got {type(self.decode_to_host).__name__}")
        for name, low, unit in (("decode_budget", 1, "bytes"), ("decode_overlap", 0, "latent frames")):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"MemoryPlan.{name} must be None or an int >= {low} ({unit}), got {v!r}")
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
        if self.pinned not in ("prefer", "require", "off"):
            raise ValueError(f"MemoryPlan.pinned must be 'prefer', 'require' or 'off', got {self.pinned!r}")

    def _derive_from_fit_bytes(self) -> None:
        n = self.fit_bytes
        if n is None:
            if self.decode_to_host is None:
                object.__setattr__(self, "decode_to_host", False)
            return
        if isinstance(n, bool) or not isinstance(n, int) or n < 8:
            raise ValueError(f"MemoryPlan.fit_bytes must be None or an int >= 8 (bytes), got {n!r}")
        derived = {"device_cache_budget": n // 4}
        if self.chunk_size is None and self.chunk_budget is None:
            derived.update(chunk_size="auto", chunk_budget=n // 8)
        if self.decode_slices is None and self.decode_budget is None:
            derived["decode_budget"] = n - n // 4  # the cache budget stays reserved
        if self.decode_to_host is None:
            derived["decode_to_host"] = True
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

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
