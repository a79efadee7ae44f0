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
    pinned: "prefer" (pageable memory with a warning when page-locked memory is refused),
        "require" (an error instead), or "off".
    chunk_size: rows per chunk for the token-wise feed-forward layers (exact; see
        lightcache.memory.chunk), or None for no chunking.
    decode_slices: decode the latent video this many frames at a time (exact for per-frame VAEs;
        see lightcache.memory.decode), or None.
    decode_to_host: write decoded frames to host memory as each slice finishes (the pipeline's
        video then comes back on the CPU).
    cpu_tracker: on CPU, meter each stage's peak with the deterministic live-tensor tracker
        (report.peak_bytes); slower, meant for tests and measurements. On CUDA the allocator's
        peaks are always reported.
    """

    swap: Union[str, bool] = "auto"
    device_cache_budget: Optional[int] = None
    cache_dtype: Optional[str] = None
    host_cache_budget: Optional[int] = None
    pinned: str = "prefer"
    chunk_size: Optional[int] = None
    decode_slices: Optional[int] = None
    decode_to_host: bool = False
    cpu_tracker: bool = False

    def __post_init__(self):
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
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"MemoryPlan.chunk_size must be None or an int >= 1 (rows), got {c!r}")
        d = self.decode_slices
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(f"MemoryPlan.decode_slices must be None or an int >= 1 (frames), got {d!r}")
        if not isinstance(self.decode_to_host, bool):
            raise TypeError(f"MemoryPlan.decode_to_host must be a bool, got {type(self.decode_to_host).__name__}")
        if self.decode_to_host and d is None:
            raise ValueError("MemoryPlan.decode_to_host needs decode_slices (the frames leave per slice)")
        if not isinstance(self.cpu_tracker, bool):
            raise TypeError(f"MemoryPlan.cpu_tracker must be a bool, got {type(self.cpu_tracker).__name__}")
        if self.pinned not in ("prefer", "require", "off"):
            raise ValueError(f"MemoryPlan.pinned must be 'prefer', 'require' or 'off', got {self.pinned!r}")

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
