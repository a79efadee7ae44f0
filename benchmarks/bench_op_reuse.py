"""reuse (x + dequant(delta)) and quantize_fp8 vs. their eager torch references, with a plain
copy of x as the bandwidth ceiling (target on an H200: reuse >= 85% of copy GB/s at >= 256 MB).

extra_info: bytes (minimum traffic: every input read once, every output written once), GB/s (from the median time).
Run: pytest benchmarks/bench_op_reuse.py --benchmark-only -q
"""

import pytest
import torch
from conftest import sync

import lightcache.ops  # noqa: F401

# CPU: a few MB. CUDA: x of 256 MiB in bf16 (Wan2.1-1.3B width).
SHAPES = {"cpu": (1024, 1536), "cuda": (87382, 1536)}
DTYPE = torch.bfloat16


def _record(benchmark, nbytes, **extra):
    info = dict(bytes=int(nbytes), **extra)
    if benchmark.stats is not None:
        info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9  # median: robust on shared CPUs
    benchmark.extra_info.update(info)


def _run(benchmark, device, fn):
    def run():
        fn()
        sync(device)

    benchmark(run)


@pytest.mark.parametrize("delta_dtype", ["bf16", "fp8"])
@pytest.mark.parametrize("impl", ["lightcache", "eager"])
def test_reuse(benchmark, bench_device, impl, delta_dtype):
    x = torch.randn(SHAPES[bench_device], device=bench_device, dtype=DTYPE)
    delta = torch.randn_like(x)
    scale = None
    if delta_dtype == "fp8":
        delta, scale = torch.ops.lightcache.quantize_fp8(delta)
    if impl == "lightcache":
        fn = lambda: torch.ops.lightcache.reuse(x, delta, scale)  # noqa: E731
    elif scale is None:
        fn = lambda: (x.float() + delta.float()).to(x.dtype)  # noqa: E731
    else:
        fn = lambda: (x.float() + delta.float() * scale[:, None]).to(x.dtype)  # noqa: E731
    _run(benchmark, bench_device, fn)
    nbytes = 2 * x.nbytes + delta.nbytes + (scale.nbytes if scale is not None else 0)
    _record(benchmark, nbytes, delta_dtype=delta_dtype, x_dtype=str(DTYPE))


def test_copy_baseline(benchmark, bench_device):
    x = torch.randn(SHAPES[bench_device], device=bench_device, dtype=DTYPE)
    out = torch.empty_like(x)
    _run(benchmark, bench_device, lambda: out.copy_(x))
    _record(benchmark, 2 * x.nbytes)


def eager_quantize(x):
    amax = x.abs().amax(-1).float()
    scale = torch.where(amax == 0, 1.0, amax / 448)
    return (x.float() / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), scale


@pytest.mark.parametrize("impl", ["lightcache", "eager"])
def test_quantize_fp8(benchmark, bench_device, impl):
    x = torch.randn(SHAPES[bench_device], device=bench_device, dtype=DTYPE)
    fn = (lambda: torch.ops.lightcache.quantize_fp8(x)) if impl == "lightcache" else (lambda: eager_quantize(x))
    _run(benchmark, bench_device, fn)
    _record(benchmark, x.nbytes + x.numel() + 4 * x.shape[0])
