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


@pytest.fixture(params=BENCH_DEVICES)
def bench_device(request):
    return request.param
