"""lerp vs. eager torch.lerp, with a plain copy as the bandwidth ceiling (target on an H200: >= 85%
of copy GB/s at >= 256 MB).

extra_info: bytes (start and end read once, out written once), GB/s (from the median time).
Run: pytest benchmarks/bench_op_lerp.py --benchmark-only -q
"""

import pytest
import torch
from conftest import sync

import lightcache.ops  # noqa: F401

# CPU: a few MB. CUDA: 256 MiB per bf16 tensor.
SHAPES = {"cpu": (1024, 1536), "cuda": (87382, 1536)}
DTYPE = torch.bfloat16
WEIGHT = 1.5  # extrapolation, the caching use


def _record(benchmark, nbytes, **extra):
    info = dict(bytes=int(nbytes), **extra)
    if benchmark.stats is not None:
        info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9  # median: robust on shared CPUs
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("impl", ["lightcache", "eager", "copy"])
def test_lerp(benchmark, bench_device, impl):
    start = torch.randn(SHAPES[bench_device], device=bench_device, dtype=DTYPE)
    end = torch.randn_like(start)
    if impl == "lightcache":
        fn = lambda: torch.ops.lightcache.lerp(start, end, WEIGHT)  # noqa: E731
        nbytes = 3 * start.nbytes
    elif impl == "eager":
        fn = lambda: torch.lerp(start, end, WEIGHT)  # noqa: E731
        nbytes = 3 * start.nbytes
    else:
        out = torch.empty_like(start)
        fn = lambda: out.copy_(start)  # noqa: E731
        nbytes = 2 * start.nbytes

    def run():
        fn()
        sync(bench_device)

    benchmark(run)
    _record(benchmark, nbytes, dtype=str(DTYPE))
