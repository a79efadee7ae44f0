"""lightcache::reuse (x + dequant(delta)) and lightcache::quantize_fp8.

Reference formulas here are independent of lightcache.reference: float64 arithmetic and, for fp8,
a nearest-code search over the table of e4m3fn values.

Tolerances: the op computes in fp32 and rounds once to x.dtype, the naive reference computes in
float64 and rounds once, so they differ by at most one ulp of the output dtype (rtol = eps of the
dtype; for fp32 a few fp32 roundings, rtol/atol 1e-6 on O(1) data).
"""

import pytest
import torch

import lightcache.ops  # noqa: F401
from conftest import TRITON_DEVICE, requires_cuda, requires_triton

FP8 = torch.float8_e4m3fn
TOL = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}
# e4m3fn codes 0..126 are the non-negative finite values in increasing order (127 is NaN)
E4M3_GRID = torch.arange(127, dtype=torch.uint8).view(FP8).double()


def naive_reuse(x, delta, scale=None):
    d = delta.double() if scale is None else delta.double() * scale.double().unsqueeze(-1)
    return (x.double() + d).to(x.dtype)


def naive_e4m3_codes(v):
    """uint8 codes of round-to-nearest-even of float64 ``v`` (|v| <= 448) onto the e4m3fn grid."""
    a = v.abs().contiguous()
    hi = torch.searchsorted(E4M3_GRID, a).clamp(max=126)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - E4M3_GRID[lo], E4M3_GRID[hi] - a
    pick = torch.where(d_lo < d_hi, lo, torch.where(d_hi < d_lo, hi, torch.where(lo % 2 == 0, lo, hi)))
    return (pick | (torch.signbit(v).long() << 7)).to(torch.uint8)


def naive_quantize(x):
    xd = x.double()
    amax = xd.abs().amax(-1) if x.shape[-1] else torch.zeros(x.shape[:-1], dtype=torch.float64)
    # fp64 quotient rounded to fp32 is the correctly rounded fp32 quotient (53 >= 2*24 + 2)
    scale = torch.where(amax == 0, 1.0, amax / 448).float()
    v = (xd / scale.double().unsqueeze(-1)).float().double().clamp(-448, 448)
    return naive_e4m3_codes(v), scale


def fp8_bound(x, scale):
    """|x - q*scale| for RNE e4m3fn: half an ulp, 2^-4 |x| in the normal range (3 mantissa bits),
    2^-10 scale in the subnormal range (spacing 2^-9 below 2^-6); the extra 2^-22 |x| covers the
    fp32 rounding of x/scale and of q*scale."""
    return torch.maximum(2**-4 * x.abs(), 2**-10 * scale.unsqueeze(-1)) + 2**-22 * x.abs()


SHAPES = [(2, 3, 17), (1,), (5, 1, 8), (0, 4), (3, 0), ()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ddtype", [None, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_reuse_matches_naive(device, dtype, ddtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    delta = torch.randn(shape, device=device).to(ddtype or dtype)
    out = torch.ops.lightcache.reuse(x, delta)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    torch.testing.assert_close(out, naive_reuse(x, delta), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 40), (1,), (4, 1), (0, 8), (3, 0)])
def test_reuse_fp8_matches_naive(device, dtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    q = (torch.randn(shape, device=device) * 100).to(FP8)
    scale = torch.rand(shape[:-1], device=device) + 0.01
    out = torch.ops.lightcache.reuse(x, q, scale)
    torch.testing.assert_close(out, naive_reuse(x, q, scale), **TOL[dtype])


def test_reuse_noncontiguous(device):
    x = torch.randn(16, 9, device=device).t()  # transposed
    delta = torch.randn(9, 32, device=device)[:, ::2].half()  # strided slice
    torch.testing.assert_close(torch.ops.lightcache.reuse(x, delta), naive_reuse(x, delta), **TOL[torch.float32])
    q = (torch.randn(16, 9, device=device) * 10).to(FP8)
    scale = torch.rand(18, device=device)[::2] + 0.1  # non-contiguous scale, shape x.shape[:-1] = (9,)
    out = torch.ops.lightcache.reuse(x, q.t(), scale)
    torch.testing.assert_close(out, naive_reuse(x, q.t(), scale), **TOL[torch.float32])


def test_reuse_quantize_many_slices():
    # more elements than one reference slice (2^20), contiguous and non-flattenable views
    x = torch.randn(1100, 1000)
    d = torch.randn(1000, 1100).t()
    torch.testing.assert_close(torch.ops.lightcache.reuse(x, d), naive_reuse(x, d), **TOL[torch.float32])
    q, s = torch.ops.lightcache.quantize_fp8(d)
    codes, ref_s = naive_quantize(d)
    assert torch.equal(s, ref_s) and torch.equal(q.view(torch.uint8), codes)
    xt = torch.randn(1000, 1100).t()
    torch.testing.assert_close(torch.ops.lightcache.reuse(xt, q, s), naive_reuse(xt, q, s), **TOL[torch.float32])

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 33), (1, 1), (7,), (0, 6), (4, 0)])
def test_quantize_matches_naive(device, dtype, shape):
    x = (torch.randn(shape, device=device) * torch.logspace(-3, 2, shape[-1], device=device)).to(dtype)
    if x.numel():
        x.view(-1, shape[-1])[0] = 0  # an all-zero row gets scale 1
    q, scale = torch.ops.lightcache.quantize_fp8(x)
    assert q.dtype == FP8 and q.shape == x.shape and scale.dtype == torch.float32 and scale.shape == x.shape[:-1]
    codes, ref_scale = naive_quantize(x.cpu())
    assert torch.equal(scale.cpu(), ref_scale)
    assert torch.equal(q.cpu().view(torch.uint8), codes)


def test_quantize_noncontiguous_and_ties(device):
    # exact midpoints between e4m3 values must round to the even code
    scale = 0.5
    mids = (E4M3_GRID[1:] + E4M3_GRID[:-1]) / 2
    row = torch.cat([mids, -mids, torch.tensor([448.0])]).float() * scale
    x = torch.stack([row, row.flip(0)], 1).to(device).t()  # non-contiguous view, rows = `row`
    q, s = torch.ops.lightcache.quantize_fp8(x)
    assert torch.equal(s.cpu(), torch.full((2,), 448 * scale / 448))
    assert torch.equal(q.cpu().view(torch.uint8), naive_e4m3_codes((x.cpu().double() / scale)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_round_trip_bound(device, dtype):
    x = torch.randn(6, 256, device=device) * torch.logspace(-4, 1, 256, device=device)
    delta = (torch.randn(6, 256, device=device) * torch.logspace(-6, 0, 256, device=device)).to(dtype).float()
    q, scale = torch.ops.lightcache.quantize_fp8(delta)
    deq = q.float() * scale.unsqueeze(-1)
    err = (deq - delta).abs()
    assert (err <= fp8_bound(delta, scale)).all()
    # coarser, row-level form: largest binade [256, 448] has half-ulp 16, so err <= 16 * scale = amax / 28
    assert (err <= delta.abs().amax(-1, keepdim=True) / 28 * (1 + 2**-20)).all()
    out = torch.ops.lightcache.reuse(x, q, scale)
    exact = x.double() + delta.double()
    assert ((out.double() - exact).abs() <= fp8_bound(delta, scale) + 2**-23 * exact.abs()).all()


def test_bf16_round_trip_bound(device):
    x = torch.randn(4, 128, device=device)
    delta = torch.randn(4, 128, device=device) * torch.logspace(-5, 3, 128, device=device)
    out = torch.ops.lightcache.reuse(x, delta.to(torch.bfloat16))
    exact = x.double() + delta.double()
    # bf16 keeps 7 mantissa bits: storage error <= 2^-8 |delta|; then one fp32 rounding of the sum
    assert ((out.double() - exact).abs() <= 2**-8 * delta.abs() + 2**-24 * exact.abs()).all()


def test_opcheck():
    x = torch.randn(4, 33)
    torch.library.opcheck(torch.ops.lightcache.reuse.default, (x, torch.randn(4, 33).half(), None))
    torch.library.opcheck(torch.ops.lightcache.quantize_fp8.default, (x.bfloat16(),))
    q, s = torch.ops.lightcache.quantize_fp8(x)
    # test_schema compares inputs with torch.allclose, which has no fp8 kernel: skip it for fp8 inputs
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.lightcache.reuse.default, (x, q, s), test_utils=utils)


def test_compile_smoke():
    def f(x, d):
        q, s = torch.ops.lightcache.quantize_fp8(d)
        return torch.ops.lightcache.reuse(x, q, s), torch.ops.lightcache.reuse(x, d.bfloat16())

    x, d = torch.randn(3, 20), torch.randn(3, 20)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, d)
    for g, e in zip(got, f(x, d)):
        assert torch.equal(g, e)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)])
def test_triton_reuse(dtype):
    from lightcache.kernels.reuse import reuse

    x = torch.randn(5, 37, device=TRITON_DEVICE).to(dtype)
    for delta in (torch.randn(5, 37, device=TRITON_DEVICE).to(dtype), torch.randn(5, 37, device=TRITON_DEVICE).half()):
        torch.testing.assert_close(reuse(x, delta), naive_reuse(x, delta), **TOL[dtype])
    xt = torch.randn(37, 5, device=TRITON_DEVICE).to(dtype).t()  # non-contiguous
    torch.testing.assert_close(reuse(xt, delta), naive_reuse(xt, delta), **TOL[dtype])
    for shape in ((5, 37), (7, 1), (2, 1100)):  # one tile, one channel, several channel tiles
        xs = torch.randn(shape, device=TRITON_DEVICE).to(dtype)
        q = (torch.randn(shape, device=TRITON_DEVICE) * 50).to(FP8)
        scale = torch.rand(shape[0], device=TRITON_DEVICE) + 0.1
        torch.testing.assert_close(reuse(xs, q, scale), naive_reuse(xs, q, scale), **TOL[dtype])
    assert reuse(x[:0], delta[:0]).shape == (0, 37)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)])
@pytest.mark.parametrize("max_block_d", [8192, 16])  # one-read path and the two-pass path for wide rows
def test_triton_quantize(dtype, max_block_d):
    from lightcache.kernels.quantize import quantize_fp8

    x = (torch.randn(6, 70, device=TRITON_DEVICE) * torch.logspace(-4, 2, 70, device=TRITON_DEVICE)).to(dtype)
    x[1] = 0
    q, scale = quantize_fp8(x, max_block_d=max_block_d)
    codes, ref_scale = naive_quantize(x.cpu())
    assert torch.equal(scale.cpu(), ref_scale)
    assert torch.equal(q.cpu().view(torch.uint8), codes)
    q0, s0 = quantize_fp8(x[:, :0])
    assert q0.shape == (6, 0) and torch.equal(s0.cpu(), torch.ones(6))


@requires_triton
def test_triton_quantize_rounding_exhaustive():
    """Every e4m3fn value, every midpoint between neighbours and the fp32 values just beside each
    midpoint, both signs; rows end in 448 so scale is exactly 1 and q = RNE(x)."""
    from lightcache.kernels.quantize import quantize_fp8

    grid = E4M3_GRID.float()
    mids = (grid[1:] + grid[:-1]) / 2
    up, down = torch.nextafter(mids, torch.tensor(1e9)), torch.nextafter(mids, torch.tensor(-1e9))
    vals = torch.cat([grid, mids, up, down, torch.rand(300) * 2**-6, torch.tensor([1e-30, 1e-45])])
    vals = torch.cat([vals, -vals])
    rows = torch.cat([vals, torch.zeros(-vals.numel() % 63)]).view(-1, 63)
    x = torch.cat([rows, torch.full((rows.shape[0], 1), 448.0)], 1)
    q, scale = quantize_fp8(x.to(TRITON_DEVICE))
    assert torch.equal(scale.cpu(), torch.ones(x.shape[0]))
    assert torch.equal(q.cpu().view(torch.uint8), naive_e4m3_codes(x.double()))


def test_bad_inputs():
    x = torch.randn(4, 8)
    op = torch.ops.lightcache
    with pytest.raises(TypeError, match="x must have dtype"):
        op.reuse(x.long(), x)
    with pytest.raises(TypeError, match="delta must have dtype"):
        op.reuse(x, x.int())
    with pytest.raises(ValueError, match="delta must have the shape"):
        op.reuse(x, torch.randn(4, 9))
    q, s = op.quantize_fp8(x)
    with pytest.raises(ValueError, match="scale is required"):
        op.reuse(x, q)
    with pytest.raises(ValueError, match="scale must be None"):
        op.reuse(x, x.half(), s)
    with pytest.raises(ValueError, match="scale must have shape"):
        op.reuse(x, q, s[:2])
    with pytest.raises(TypeError, match="scale must have dtype"):
        op.reuse(x, q, s.half())
    with pytest.raises(ValueError, match="delta is on meta"):
        op.reuse(x, x.to("meta"))
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        op.quantize_fp8(torch.tensor(1.0))
    with pytest.raises(TypeError, match="x must have dtype"):
        op.quantize_fp8(x.to(torch.float64))


@requires_cuda
def test_opcheck_cuda():
    x = torch.randn(4, 33, device="cuda")
    torch.library.opcheck(torch.ops.lightcache.reuse.default, (x, torch.randn(4, 33, device="cuda").bfloat16(), None))
    torch.library.opcheck(torch.ops.lightcache.quantize_fp8.default, (x.bfloat16(),))
    q, s = torch.ops.lightcache.quantize_fp8(x)
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")  # no fp8 allclose
    torch.library.opcheck(torch.ops.lightcache.reuse.default, (x, q, s), test_utils=utils)


@requires_cuda
def test_cuda_large_tensor_past_2_31_elements():
    # 64-bit offsets, plain and fp8 paths: rows of 1024 channels, 2**21 + 5 rows (> 2**31 elements)
    rows, cols = 2**21 + 5, 1024
    x = torch.zeros(rows, cols, dtype=torch.float16, device="cuda")
    d = torch.zeros(rows, cols, dtype=torch.float16, device="cuda")
    d[-5:] = 3.0
    out = torch.ops.lightcache.reuse(x, d)
    assert torch.equal(out[-5:], torch.full((5, cols), 3.0, dtype=torch.float16, device="cuda"))
    assert torch.equal(out[:5], torch.zeros(5, cols, dtype=torch.float16, device="cuda"))
    del out
    q, s = torch.ops.lightcache.quantize_fp8(d)
    torch.testing.assert_close(s[-5:].cpu(), torch.full((5,), 3.0 / 448.0), rtol=1e-6, atol=0)
    out = torch.ops.lightcache.reuse(x, q, s)
    torch.testing.assert_close(out[-5:].float(), torch.full((5, cols), 3.0, device="cuda"), rtol=2**-3, atol=0)
    assert torch.equal(out[:5], torch.zeros(5, cols, dtype=torch.float16, device="cuda"))
