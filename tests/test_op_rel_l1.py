"""lightcache::rel_l1: fp32 [mean|a - b|, mean|b|] on a's device.

Naive reference: two separate float64 means. Inputs of every dtype are widened exactly to fp32 and
the sums are of non-negative terms (no cancellation), so one tolerance, rtol 1e-5, fits all dtypes
(fp32 accumulation over these sizes errs by ~1e-7 relative).
"""

import pytest
import torch

import lightcache.ops  # noqa: F401
from conftest import TRITON_DEVICE, requires_cuda, requires_triton

RTOL = 1e-5


def naive_rel_l1(a, b):
    a64, b64 = a.double(), b.double()
    return torch.stack([(a64 - b64).abs().mean(), b64.abs().mean()]).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 17), (1,), (4, 1, 5), (), (300, 70)])
def test_rel_l1_matches_naive(device, dtype, shape):
    a = torch.randn(shape, device=device).to(dtype)
    b = (a.float() + 0.05 * torch.randn(shape, device=device)).to(dtype)
    out = torch.ops.lightcache.rel_l1(a, b)
    assert out.dtype == torch.float32 and out.shape == (2,) and out.device == a.device
    torch.testing.assert_close(out, naive_rel_l1(a, b), rtol=RTOL, atol=0)


def test_rel_l1_empty_gives_nan(device):
    out = torch.ops.lightcache.rel_l1(torch.randn(0, 3, device=device), torch.randn(0, 3, device=device))
    assert out.shape == (2,) and out.isnan().all()


def test_rel_l1_noncontiguous(device):
    base_a, base_b = torch.randn(40, 30, device=device), torch.randn(30, 40, device=device)
    cases = [
        (base_a.t(), base_b),  # different layouts
        (base_a.t(), base_b.t().t()),
        (base_a[::2, 1:], base_b.t()[::2, 1:]),  # sliced, strided
        (base_a.t(), base_b.t().contiguous().t()),  # same transposed dense layout
    ]
    for a, b in cases:
        torch.testing.assert_close(torch.ops.lightcache.rel_l1(a, b), naive_rel_l1(a, b), rtol=RTOL, atol=0)


def test_rel_l1_many_slices():
    # larger than one reference slice (2^20 elements), viewable and non-viewable
    a, b = torch.randn(1100, 1000), torch.randn(1100, 1000)
    torch.testing.assert_close(torch.ops.lightcache.rel_l1(a, b), naive_rel_l1(a, b), rtol=RTOL, atol=0)
    at, bt = a.t()[:, ::2], b.t()[:, ::2]
    torch.testing.assert_close(torch.ops.lightcache.rel_l1(at, bt), naive_rel_l1(at, bt), rtol=RTOL, atol=0)


def test_opcheck():
    torch.library.opcheck(torch.ops.lightcache.rel_l1.default, (torch.randn(3, 7), torch.randn(3, 7)))
    torch.library.opcheck(torch.ops.lightcache.rel_l1.default, (torch.randn(9).bfloat16(), torch.randn(9).bfloat16()))


def test_compile_smoke():
    def f(a, b):
        m = torch.ops.lightcache.rel_l1(a, b)
        return m[0] / m[1]

    a, b = torch.randn(4, 9), torch.randn(4, 9)
    assert torch.equal(torch.compile(f, backend="aot_eager", fullgraph=True)(a, b), f(a, b))


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)])
def test_triton_rel_l1(dtype):
    from lightcache.kernels.rel_l1 import rel_l1

    a = torch.randn(8, 3001, device=TRITON_DEVICE).to(dtype)
    b = torch.randn(8, 3001, device=TRITON_DEVICE).to(dtype)
    for kw in ({}, {"max_programs": 2}, {"max_programs": 1}):  # several chunks per program, one program
        torch.testing.assert_close(rel_l1(a, b, **kw), naive_rel_l1(a, b), rtol=RTOL, atol=0)
    torch.testing.assert_close(rel_l1(a.t(), b.t()), naive_rel_l1(a, b), rtol=RTOL, atol=0)  # same dense layout
    torch.testing.assert_close(rel_l1(a[::2, 1::3], b[1::2, 1::3]), naive_rel_l1(a[::2, 1::3], b[1::2, 1::3]), rtol=RTOL, atol=0)
    one = rel_l1(a[:1, :1], b[:1, :1])
    torch.testing.assert_close(one, naive_rel_l1(a[:1, :1], b[:1, :1]), rtol=RTOL, atol=0)
    assert rel_l1(a[:0], b[:0]).isnan().all()
    assert torch.equal(rel_l1(a, b), rel_l1(a, b))  # deterministic


def test_bad_inputs():
    a = torch.randn(3, 4)
    op = torch.ops.lightcache
    with pytest.raises(TypeError, match="a must have dtype"):
        op.rel_l1(a.double(), a)
    with pytest.raises(TypeError, match="b must have dtype"):
        op.rel_l1(a, a.int())
    with pytest.raises(ValueError, match="b must have the shape"):
        op.rel_l1(a, torch.randn(3, 5))
    with pytest.raises(ValueError, match="b is on meta"):
        op.rel_l1(a, a.to("meta"))


@requires_cuda
def test_opcheck_cuda():
    a = torch.randn(3, 7, device="cuda")
    torch.library.opcheck(torch.ops.lightcache.rel_l1.default, (a, torch.randn(3, 7, device="cuda")))
    torch.library.opcheck(torch.ops.lightcache.rel_l1.default, (a.bfloat16(), torch.randn(3, 7, device="cuda").bfloat16()))


@requires_cuda
def test_cuda_large_tensor_past_2_31_elements():
    # 64-bit offsets: 2**31 + 4097 fp16 elements (4 GiB each); the tail beyond 2**31 must count
    n = 2**31 + 4097
    a = torch.zeros(n, dtype=torch.float16, device="cuda")
    b = torch.zeros(n, dtype=torch.float16, device="cuda")
    a[-4097:] = 2.0  # only elements past 2**31 differ
    b[-4097:] = 1.0
    out = torch.ops.lightcache.rel_l1(a, b).cpu().double()
    want = torch.tensor([4097 / n, 4097 / n], dtype=torch.float64)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=0)
