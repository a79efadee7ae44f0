"""rel_l1 (one fused pass, both sums) vs. the eager two-reduction reference (target on an H200: >= 2x).

extra_info: bytes (a and b read once), GB/s (from the median time).
Run: pytest benchmarks/bench_op_rel_l1.py --benchmark-only -q
"""

import pytest
import torch
from conftest import sync

import lightcache.ops  # noqa: F401

# CPU: a few MB. CUDA: 256 MiB per bf16 tensor.
SHAPES = {"cpu": (1024, 1536), "cuda": (87382, 1536)}
DTYPE = torch.bfloat16


def eager_rel_l1(a, b):
    return torch.stack([(a.float() - b.float()).abs().mean(), b.float().abs().mean()])


@pytest.mark.parametrize("impl", ["lightcache", "eager"])
def test_rel_l1(benchmark, bench_device, impl):
    a = torch.randn(SHAPES[bench_device], device=bench_device, dtype=DTYPE)
    b = torch.randn_like(a)
    fn = (lambda: torch.ops.lightcache.rel_l1(a, b)) if impl == "lightcache" else (lambda: eager_rel_l1(a, b))

    def run():
        fn()
        sync(bench_device)

    benchmark(run)
    nbytes = a.nbytes + b.nbytes
    info = dict(bytes=nbytes, dtype=str(DTYPE))
    if benchmark.stats is not None:
        info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9  # median: robust on shared CPUs
    benchmark.extra_info.update(info)
