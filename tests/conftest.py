"""Shared test set-up.

Without a GPU, Triton kernels run under the Triton interpreter on CPU tensors: TRITON_INTERPRET
must be set before triton is first imported, so it is set here, before any test module imports
lightcache.kernels. With a GPU the kernels run for real on CUDA tensors.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# One intra-op thread: the tests use small tensors, where extra threads only add contention on
# shared 2-core machines (measured: tiny video pipelines ran ~50x slower with 2 busy threads).
torch.set_num_threads(1)
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is a test dependency
    HAS_TRITON = False

# Device on which Triton launchers are exercised directly: CUDA when present, else CPU tensors under
# the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"))]

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
