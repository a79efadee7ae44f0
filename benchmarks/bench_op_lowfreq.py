"""lowfreq_energy (partial DFT of the kept frequencies, difference never materialised) vs. an eager
rfft2-based reference (target on an H200: >= 5x).

extra_info: bytes (a and b read once), GB/s (from the median time).
Run: pytest benchmarks/bench_op_lowfreq.py --benchmark-only -q
"""

import pytest
import torch
from conftest import sync

import lightcache.ops  # noqa: F401

RATIO = 0.2
# (frames..., H, W): Wan2.1 latents (16 channels x 21 frames) at 480p and 720p; CPU: a few frames.
SHAPES = {
    "cpu": {"480p": (4, 8, 60, 104), "720p": (2, 4, 90, 160)},
    "cuda": {"480p": (16, 21, 60, 104), "720p": (16, 21, 90, 160)},
}
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}


def rfft2_weights(h, w, ratio, device):
    """Circle mask on the rfft2 half-spectrum, with conjugate-symmetry multiplicity 2 for 0 < v < W/2."""
    u = torch.fft.fftfreq(h, 1.0 / h, device=device)
    v = torch.fft.rfftfreq(w, 1.0 / w, device=device)
    r = ratio * min(h, w)
    mult = torch.full_like(v, 2.0)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    return ((u[:, None] ** 2 + v[None, :] ** 2) <= r * r).float() * mult


def eager_lowfreq(a, b, weights):
    h, w = a.shape[-2:]
    spec = torch.fft.rfft2((a - b).float())
    return torch.sqrt((spec.real.square() + spec.imag.square()).mul_(weights).sum() / (h * w))


@pytest.mark.parametrize("size", ["480p", "720p"])
@pytest.mark.parametrize("impl", ["lightcache", "eager"])
def test_lowfreq(benchmark, bench_device, impl, size):
    shape = SHAPES[bench_device][size]
    a = torch.randn(shape, device=bench_device, dtype=DTYPE[bench_device])
    b = (a.float() + 0.05 * torch.randn_like(a, dtype=torch.float32)).to(a.dtype)
    if impl == "lightcache":
        fn = lambda: torch.ops.lightcache.lowfreq_energy(a, b, RATIO)  # noqa: E731
    else:
        weights = rfft2_weights(shape[-2], shape[-1], RATIO, bench_device)
        fn = lambda: eager_lowfreq(a, b, weights)  # noqa: E731

    def run():
        fn()
        sync(bench_device)

    benchmark(run)
    nbytes = a.nbytes + b.nbytes
    info = dict(bytes=nbytes, shape=str(shape), impl=impl, dtype=str(a.dtype))
    if benchmark.stats is not None:
        info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9  # median: robust on shared CPUs
    benchmark.extra_info.update(info)
