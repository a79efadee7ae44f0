"""lightcache::lowfreq_energy: ‖LP(a − b)‖₂ over frames (..., H, W), LP = centred circle of radius
radius_ratio · min(H, W) in each frame's 2-D spectrum.

Naive reference: full torch.fft.fft2 of (a − b) in float64, fftshift, circular mask on the centred
signed frequencies, Parseval normalisation sqrt(Σ|X|² / (H·W)). Tolerance rtol 1e-4 for every dtype
(inputs widen exactly to fp32; the op's fp32 partial DFT of the fp32 difference errs ~1e-6
relative), plus atol 1e-6·‖a − b‖ for the degenerate case of almost no low-frequency content.
"""

import math

import pytest
import torch

import lightcache.ops  # noqa: F401
from conftest import TRITON_DEVICE, requires_cuda, requires_triton

RTOL = 1e-4


def naive_lowfreq(a, b, radius_ratio):
    d = a.cpu().double() - b.cpu().double()
    if d.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    h, w = d.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(d), dim=(-2, -1))
    u = torch.arange(h) - h // 2
    v = torch.arange(w) - w // 2
    r = radius_ratio * min(h, w)
    mask = (u[:, None] ** 2 + v[None, :] ** 2).double() <= r * r
    return torch.sqrt((spec.abs() ** 2 * mask).sum() / (h * w))


def assert_energy(out, a, b, radius_ratio):
    assert out.dtype == torch.float32 and out.shape == () and out.device == a.device
    ref = naive_lowfreq(a, b, radius_ratio)
    atol = 1e-6 * (a.cpu().double() - b.cpu().double()).norm().item()
    torch.testing.assert_close(out.cpu().double(), ref, rtol=RTOL, atol=atol)


def pair(shape, dtype=torch.float32, device="cpu", rel=1e-2):
    """b close to a (as consecutive predictions are): the metric must stay accurate under cancellation."""
    a = torch.randn(shape, device=device)
    b = a + rel * torch.randn(shape, device=device)
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,ratio",
    [((3, 60, 104), 0.2), ((2, 17, 9), 0.2), ((1, 8, 8), 1.0), ((4, 1, 7), 0.5), ((1, 7, 1), 3.0),
     ((2, 3, 16, 16), 0.3), ((1, 1), 0.2), ((0, 8, 8), 0.2), ((2, 0, 5), 0.2), ((2, 5, 0), 0.2)],
)  # fmt: skip
def test_lowfreq_matches_naive(device, dtype, shape, ratio):
    a, b = pair(shape, dtype, device)
    assert_energy(torch.ops.lightcache.lowfreq_energy(a, b, ratio), a, b, ratio)


def test_lowfreq_default_ratio_and_parseval(device):
    a, b = pair((2, 12, 20), device=device, rel=1.0)
    assert_energy(torch.ops.lightcache.lowfreq_energy(a, b), a, b, 0.2)
    # a radius beyond every frequency keeps the whole spectrum: the plain L2 norm (Parseval)
    full = torch.ops.lightcache.lowfreq_energy(a, b, 10.0)
    torch.testing.assert_close(full.double().cpu(), (a.double() - b.double()).norm().cpu(), rtol=RTOL, atol=0)
    # constant offset: all energy at DC, which every radius keeps
    c = torch.ops.lightcache.lowfreq_energy(a + 0.5, a, 1e-6)
    torch.testing.assert_close(c.item(), 0.5 * math.sqrt(a.numel()), rtol=RTOL, atol=0)


def test_lowfreq_noncontiguous(device):
    a, b = pair((4, 30, 24), device=device)
    cases = [
        (a.transpose(-1, -2), b.transpose(-1, -2)),  # transposed frames
        (a.transpose(-1, -2), b.transpose(-1, -2).contiguous()),  # mixed layouts
        (a[:, :, ::2], b[:, :, 1::2]),  # strided columns
        (a.view(2, 2, 30, 24).transpose(0, 1)[:, :, 1:], b.view(2, 2, 30, 24)[:, :, 1:]),  # leading dims not viewable
    ]
    for x, y in cases:
        assert_energy(torch.ops.lightcache.lowfreq_energy(x, y, 0.25), x, y, 0.25)


def test_lowfreq_large_frames_sliced():
    # frames larger than the reference's 2^20-element slice (row tiling) and many frames (frame slicing)
    a, b = pair((1, 1030, 1030))
    assert_energy(torch.ops.lightcache.lowfreq_energy(a, b, 0.05), a, b, 0.05)
    a, b = pair((300, 60, 64))
    assert_energy(torch.ops.lightcache.lowfreq_energy(a, b, 0.2), a, b, 0.2)


def test_opcheck():
    a, b = pair((2, 9, 10))
    torch.library.opcheck(torch.ops.lightcache.lowfreq_energy.default, (a, b, 0.3))
    torch.library.opcheck(torch.ops.lightcache.lowfreq_energy.default, (a.half(), b.half()))


def test_compile_smoke():
    def f(a, b):
        return torch.ops.lightcache.lowfreq_energy(a, b, 0.2) * 2

    a, b = pair((3, 12, 16))
    assert torch.equal(torch.compile(f, backend="aot_eager", fullgraph=True)(a, b), f(a, b))


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)])
@pytest.mark.parametrize(
    "shape,ratio,blocks",
    [((3, 20, 24), 0.2, {}), ((2, 60, 104), 0.2, {}), ((1, 35, 70), 0.3, dict(block_h=32, block_w=64)),
     ((1, 70, 70), 1.0, {}), ((2, 1, 9), 0.5, {}), ((1, 1), 0.2, {})],
)  # fmt: skip
def test_triton_lowfreq(dtype, shape, ratio, blocks):
    from lightcache.kernels.lowfreq import lowfreq_energy

    a, b = pair(shape, dtype, TRITON_DEVICE)
    assert_energy(lowfreq_energy(a, b, ratio, **blocks), a, b, ratio)


@requires_triton
def test_triton_lowfreq_strided_and_empty():
    from lightcache.kernels.lowfreq import lowfreq_energy

    a, b = pair((3, 24, 20), device=TRITON_DEVICE)
    at, bs = a.transpose(-1, -2), b.transpose(-1, -2).contiguous()
    assert_energy(lowfreq_energy(at, bs, 0.25), at, bs, 0.25)
    a4, b4 = a.view(3, 1, 24, 20).transpose(0, 1)[..., ::2], b.view(1, 3, 24, 20)[..., 1::2]
    assert_energy(lowfreq_energy(a4, b4, 0.25), a4, b4, 0.25)
    assert lowfreq_energy(a[:0], b[:0]).item() == 0.0
    assert torch.equal(lowfreq_energy(a, b), lowfreq_energy(a, b))  # deterministic



@requires_triton
def test_triton_lowfreq_large_row_stride():
    # Frames whose rows lie 2**30 elements apart (a frame view of a much wider tensor): row 2 starts
    # past 2**31, where 32-bit in-frame offsets wrapped around into a wild read. The 4 GiB buffer
    # is reserved, not touched: on CPU only the pages of the six rows written here are committed.
    from lightcache.kernels.lowfreq import lowfreq_energy

    h, w, stride = 3, 16, 2**30
    n = (h - 1) * stride + 2 * w
    try:
        buf = torch.empty(n, dtype=torch.float16, device=TRITON_DEVICE)
    except (RuntimeError, MemoryError) as exc:  # a machine that refuses to reserve 4 GiB
        pytest.skip(f"cannot reserve a {n}-element buffer: {exc}")
    a = buf.as_strided((1, h, w), (n, stride, 1))
    b = buf.as_strided((1, h, w), (n, stride, 1), w)
    g = torch.Generator().manual_seed(3)
    for t in (a, b):
        t.copy_(torch.randn(1, h, w, generator=g).half())
    assert_energy(lowfreq_energy(a, b, 0.5), a.contiguous(), b.contiguous(), 0.5)


@requires_triton
def test_triton_lowfreq_basis_cache_is_bounded_and_freed(monkeypatch):
    from lightcache.kernels import lowfreq as lf

    lf.clear_basis_cache()
    assert lf.basis_cache_bytes() == 0
    monkeypatch.setattr(lf, "MAX_CACHED_BASES", 3)
    sizes = [(8, 8), (8, 12), (12, 8), (16, 16), (9, 10)]
    for h, w in sizes:
        a, b = pair((1, h, w), device=TRITON_DEVICE)
        assert_energy(lf.lowfreq_energy(a, b, 0.3), a, b, 0.3)
    assert len(lf._BASES) == 3  # the three most recently used sizes
    assert [k[:2] for k in lf._BASES] == sizes[-3:]
    assert lf.basis_cache_bytes() > 0
    # a byte bound keeps only what fits, but never drops the bases just built
    monkeypatch.setattr(lf, "MAX_CACHED_BYTES", 1)
    a, b = pair((1, 20, 20), device=TRITON_DEVICE)
    assert_energy(lf.lowfreq_energy(a, b, 0.3), a, b, 0.3)
    assert [k[:2] for k in lf._BASES] == [(20, 20)]
    # freed per device type / index, or all at once
    lf.clear_basis_cache("meta")
    assert len(lf._BASES) == 1
    lf.clear_basis_cache(TRITON_DEVICE)
    assert len(lf._BASES) == 0 and lf.basis_cache_bytes() == 0
    lf.lowfreq_energy(a, b, 0.3)
    lf.clear_basis_cache()
    assert lf.basis_cache_bytes() == 0


@requires_cuda
def test_opcheck_cuda():
    a, b = pair((2, 9, 10), device="cuda")
    torch.library.opcheck(torch.ops.lightcache.lowfreq_energy.default, (a, b, 0.3))
    torch.library.opcheck(torch.ops.lightcache.lowfreq_energy.default, (a.bfloat16(), b.bfloat16()))

def test_bad_inputs():
    a = torch.randn(2, 8, 8)
    op = torch.ops.lightcache
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="radius_ratio must be > 0"):
            op.lowfreq_energy(a, a, bad)
    with pytest.raises(ValueError, match="radius_ratio must be finite"):
        op.lowfreq_energy(a, a, math.nan)
    with pytest.raises(ValueError, match="a must have at least 2 dimensions"):
        op.lowfreq_energy(torch.randn(8), torch.randn(8))
    with pytest.raises(ValueError, match="b must have the shape"):
        op.lowfreq_energy(a, torch.randn(2, 8, 9))
    with pytest.raises(TypeError, match="a must have dtype"):
        op.lowfreq_energy(a.double(), a)
    with pytest.raises(TypeError, match="b must have dtype"):
        op.lowfreq_energy(a, a.long())
    with pytest.raises(ValueError, match="b is on meta"):
        op.lowfreq_energy(a, a.to("meta"))
