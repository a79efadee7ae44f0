"""Microbenchmarks: each op against its eager torch reference, on CPU here and on CUDA when present.

Run: pytest benchmarks/ --benchmark-only  (add --benchmark-json=FILE to keep the numbers).
Each benchmark stores bytes moved (or FLOPs) in benchmark.extra_info so GB/s (TFLOP/s) can be read
from the JSON next to the timings.
"""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
BENCH_DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_extra_bytes(device, fn, cpu_fn):
    """Peak bytes a call allocates beyond what was live before it: the CUDA allocator's peak after
    a warm-up call, or on CPU the live-tensor tracker around ``cpu_fn`` (the op's CPU kernel called
    directly, since a custom op is opaque to the tracker)."""
    if device == "cuda":
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from lightcache._live_bytes import LiveBytes

    with LiveBytes() as m:
        cpu_fn()
    return m.peak


@pytest.fixture(params=BENCH_DEVICES)
def bench_device(request):
    return request.param
