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

# Python source for a subprocess that must not get page-locked memory: root ignores RLIMIT_MEMLOCK
# (CAP_IPC_LOCK), so drop that capability for the process, then lower the limit to {limit} bytes.
LOW_MEMLOCK_PREAMBLE = """
import ctypes, resource
libc = ctypes.CDLL(None, use_errno=True)
class _Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
_hdr, _data = _Hdr(0x20080522, 0), (_Data * 2)()
if libc.capget(ctypes.byref(_hdr), _data) == 0:
    _data[0].effective &= ~(1 << 14)
    _data[0].permitted &= ~(1 << 14)
    libc.capset(ctypes.byref(_hdr), _data)
resource.setrlimit(resource.RLIMIT_MEMLOCK, ({limit}, {limit}))
"""

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
