"""chunked_attention vs. the eager path (RMSNorm + rotary materialised, then SDPA), and on CUDA vs.
plain SDPA on already-prepared q/k (the flash-attention speed the fused kernel is measured against).

extra_info: flops (4·B·H·L²·D), tflops, peak_extra_bytes (CUDA allocator peak above the inputs;
on CPU the live-tensor tracker on the op's CPU kernel / on the eager path).
Run: pytest benchmarks/bench_op_attention.py --benchmark-only -q
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import peak_extra_bytes, sync

import lightcache.ops  # noqa: F401
from lightcache.reference.attention import chunked_attention as ref_chunked_attention

# CPU: moderate. CUDA: one Wan2.1-1.3B self-attention at 480p (12 heads x 128, L = 32760);
# chunk_size >= L is a single launch on CUDA (memory does not depend on it there).
SIZES = {
    "cpu": dict(b=1, length=1024, h=4, d=64, chunk=256, dtype=torch.float32),
    "cuda": dict(b=1, length=32760, h=12, d=128, chunk=32760, dtype=torch.bfloat16),
}
EPS = 1e-6


def _rope(t, cos, sin):
    x1, x2 = t.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.empty_like(t)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(t)


def eager_attention(q, k, v, qw, kw, cos, sin):
    """What diffusers' Wan processor does: norm over H·D, rotary, SDPA in the input dtype."""
    hd = q.shape[2] * q.shape[3]
    qn = F.rms_norm(q.flatten(2), (hd,), qw, EPS).unflatten(2, q.shape[2:])
    kn = F.rms_norm(k.flatten(2), (hd,), kw, EPS).unflatten(2, k.shape[2:])
    qn, kn = _rope(qn, cos, sin), _rope(kn, cos, sin)
    o = F.scaled_dot_product_attention(qn.transpose(1, 2), kn.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


def _inputs(device):
    s = SIZES[device]
    dt, b, length, h, d = s["dtype"], s["b"], s["length"], s["h"], s["d"]
    q, k, v = (torch.randn(b, length, h, d, device=device, dtype=dt) for _ in range(3))
    qw, kw = (1 + 0.1 * torch.randn(h * d, device=device, dtype=dt) for _ in range(2))
    ang = torch.rand(length, d // 2, device=device) * 2 * math.pi
    return s, (q, k, v, qw, kw, ang.cos(), ang.sin())


@pytest.mark.parametrize("impl", ["chunked_op", "eager", "sdpa_only"])
def test_bench_attention(benchmark, bench_device, impl):
    if impl == "sdpa_only" and bench_device != "cuda":
        pytest.skip("the SDPA-flash comparison is a CUDA measurement")
    s, (q, k, v, qw, kw, cos, sin) = _inputs(bench_device)
    args = (q, k, v, qw, kw, cos, sin, EPS, s["chunk"], None)
    if impl == "chunked_op":
        fn = lambda: torch.ops.lightcache.chunked_attention(*args)  # noqa: E731
        cpu_fn = lambda: ref_chunked_attention(*args)  # noqa: E731
    elif impl == "eager":
        fn = cpu_fn = lambda: eager_attention(q, k, v, qw, kw, cos, sin)  # noqa: E731
    else:
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        fn = cpu_fn = lambda: F.scaled_dot_product_attention(qt, kt, vt)  # noqa: E731
    peak = peak_extra_bytes(bench_device, fn, cpu_fn)

    def run():
        fn()
        sync(bench_device)

    benchmark(run)
    flops = 4 * s["b"] * s["h"] * s["length"] ** 2 * s["d"]
    info = dict(flops=flops, peak_extra_bytes=int(peak), chunk=s["chunk"], dtype=str(s["dtype"]),
                qkv_bytes=3 * q.numel() * q.element_size())
    if benchmark.stats is not None:
        info["tflops"] = flops / benchmark.stats.stats.mean / 1e12
    benchmark.extra_info.update(info)
