"""chunked_ffn vs. the unchunked eager FFN (F.linear -> GELU(tanh) -> F.linear, gated residual).

extra_info: flops, tflops (from the mean time), peak_extra_bytes (CUDA: allocator peak above the
inputs; CPU: live-tensor tracker on the op's CPU kernel), hidden_bytes_unchunked for scale.
Run: pytest benchmarks/bench_op_ffn.py --benchmark-only -q
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import peak_extra_bytes, sync

import lightcache.ops  # noqa: F401
from lightcache.reference.ffn import chunked_ffn as ref_chunked_ffn

# CPU: moderate. CUDA: one Wan2.1-1.3B block at 480p (L = 21·30·52 tokens, dim 1536, ffn 8960).
SIZES = {
    "cpu": dict(b=1, length=2048, d=256, hid=1024, chunk=512, dtype=torch.float32),
    "cuda": dict(b=1, length=32760, d=1536, hid=8960, chunk=8192, dtype=torch.bfloat16),
}


def eager_ffn(x, w1, b1, w2, b2, gate, residual):
    return residual + gate * F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


def _inputs(device):
    s = SIZES[device]
    dt, d, hid = s["dtype"], s["d"], s["hid"]
    x = torch.randn(s["b"], s["length"], d, device=device, dtype=dt)
    w1 = torch.randn(hid, d, device=device, dtype=dt) * d**-0.5
    w2 = torch.randn(d, hid, device=device, dtype=dt) * hid**-0.5
    b1, b2 = torch.randn(hid, device=device, dtype=dt), torch.randn(d, device=device, dtype=dt)
    gate = torch.randn(s["b"], 1, d, device=device, dtype=dt)
    residual = torch.randn_like(x)
    return s, (x, w1, b1, w2, b2, gate, residual)


@pytest.mark.parametrize("impl", ["chunked_op", "eager"])
def test_bench_ffn(benchmark, bench_device, impl):
    s, (x, w1, b1, w2, b2, gate, residual) = _inputs(bench_device)
    if impl == "chunked_op":
        fn = lambda: torch.ops.lightcache.chunked_ffn(x, w1, b1, w2, b2, s["chunk"], gate, residual)  # noqa: E731
        cpu_fn = lambda: ref_chunked_ffn(x, w1, b1, w2, b2, s["chunk"], gate, residual)  # noqa: E731
    else:
        fn = cpu_fn = lambda: eager_ffn(x, w1, b1, w2, b2, gate, residual)  # noqa: E731
    peak = peak_extra_bytes(bench_device, fn, cpu_fn)

    def run():
        fn()
        sync(bench_device)

    benchmark(run)
    tokens = s["b"] * s["length"]
    flops = 2 * tokens * s["d"] * s["hid"] * 2
    info = dict(flops=flops, peak_extra_bytes=int(peak), chunk=s["chunk"], dtype=str(s["dtype"]),
                hidden_bytes_unchunked=tokens * s["hid"] * x.element_size())
    if benchmark.stats is not None:
        info["tflops"] = flops / benchmark.stats.stats.mean / 1e12
    benchmark.extra_info.update(info)
