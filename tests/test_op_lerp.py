"""lightcache::lerp: start + weight * (end - start) in fp32, returned in start.dtype.

Naive reference: the same formula in float64, rounded once to the dtype. The op rounds three times
in fp32 before the final rounding, so fp32 gets rtol/atol 2e-6 on O(1) data (|weight| <= 2.5);
fp16/bf16 differ by at most one ulp of the dtype (rtol = its eps).
"""

import math

import pytest
import torch

import lightcache.ops  # noqa: F401
from conftest import TRITON_DEVICE, requires_cuda, requires_triton

TOL = {
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}


def naive_lerp(start, end, weight):
    s = start.double()
    return (s + weight * (end.double() - s)).to(start.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 17), (1,), (4, 1, 5), (0, 3), ()])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0, 2.5, -0.5])
def test_lerp_matches_naive(device, dtype, shape, weight):
    start = torch.randn(shape, device=device).to(dtype)
    end = torch.randn(shape, device=device).to(dtype)
    out = torch.ops.lightcache.lerp(start, end, weight)
    assert out.dtype == dtype and out.shape == start.shape and out.device == start.device
    torch.testing.assert_close(out, naive_lerp(start, end, weight), **TOL[dtype])


def test_lerp_endpoints_exact(device):
    start, end = torch.randn(50, device=device), torch.randn(50, device=device)
    assert torch.equal(torch.ops.lightcache.lerp(start, end, 0.0), start)
    # weight 1: s + (e - s) is within one rounding of e, not always bit-equal (the formula is fixed)
    torch.testing.assert_close(torch.ops.lightcache.lerp(start, end, 1.0), end, rtol=0, atol=1e-6)


def test_lerp_int_weight_and_noncontiguous(device):
    start = torch.randn(8, 12, device=device).t()
    end = torch.randn(12, 16, device=device)[:, ::2]
    torch.testing.assert_close(torch.ops.lightcache.lerp(start, end, 2), naive_lerp(start, end, 2), **TOL[torch.float32])


def test_lerp_many_slices():
    start, end = torch.randn(1100, 1000).half(), torch.randn(1000, 1100).half().t()
    torch.testing.assert_close(torch.ops.lightcache.lerp(start, end, 0.6), naive_lerp(start, end, 0.6), **TOL[torch.float16])

def test_opcheck():
    torch.library.opcheck(torch.ops.lightcache.lerp.default, (torch.randn(3, 7), torch.randn(3, 7), 1.5))
    torch.library.opcheck(torch.ops.lightcache.lerp.default, (torch.randn(5).half(), torch.randn(5).half(), 0.25))


def test_compile_smoke():
    def f(a, b):
        return torch.ops.lightcache.lerp(a, b, 1.75) * 2

    a, b = torch.randn(4, 9), torch.randn(4, 9)
    assert torch.equal(torch.compile(f, backend="aot_eager", fullgraph=True)(a, b), f(a, b))


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)])
def test_triton_lerp(dtype):
    from lightcache.kernels.lerp import lerp

    start = torch.randn(3, 1000, device=TRITON_DEVICE).to(dtype)  # 3000: not a multiple of the block
    end = torch.randn(3, 1000, device=TRITON_DEVICE).to(dtype)
    for w in (0.0, 0.4, 2.0):
        torch.testing.assert_close(lerp(start, end, w), naive_lerp(start, end, w), **TOL[dtype])
    st, en = start.t(), end[:, ::1].t()
    torch.testing.assert_close(lerp(st, en, 0.7), naive_lerp(st, en, 0.7), **TOL[dtype])
    assert lerp(start[:0], end[:0], 0.5).shape == (0, 1000)


def test_bad_inputs():
    a = torch.randn(3, 4)
    op = torch.ops.lightcache
    with pytest.raises(TypeError, match="start must have dtype"):
        op.lerp(a.long(), a, 0.5)
    with pytest.raises(TypeError, match="end must have the dtype of start"):
        op.lerp(a, a.half(), 0.5)
    with pytest.raises(ValueError, match="end must have the shape"):
        op.lerp(a, torch.randn(4, 3), 0.5)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="weight must be finite"):
            op.lerp(a, a, bad)
    with pytest.raises(ValueError, match="end is on meta"):
        op.lerp(a, a.to("meta"), 0.5)


@requires_cuda
def test_opcheck_cuda():
    s, e = torch.randn(3, 7, device="cuda"), torch.randn(3, 7, device="cuda")
    torch.library.opcheck(torch.ops.lightcache.lerp.default, (s, e, 1.5))
    torch.library.opcheck(torch.ops.lightcache.lerp.default, (s.bfloat16(), e.bfloat16(), 0.25))


@requires_cuda
def test_cuda_large_tensor_past_2_31_elements():
    # 64-bit offsets: elements past 2**31 are written (and written right)
    n = 2**31 + 4097
    start = torch.zeros(n, dtype=torch.float16, device="cuda")
    end = torch.zeros(n, dtype=torch.float16, device="cuda")
    end[-4097:] = 4.0
    out = torch.ops.lightcache.lerp(start, end, 0.25)
    assert out.shape == (n,)
    assert torch.equal(out[-4097:], torch.ones(4097, dtype=torch.float16, device="cuda"))
    assert torch.equal(out[:4096], torch.zeros(4096, dtype=torch.float16, device="cuda"))
