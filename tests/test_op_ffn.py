"""lightcache::chunked_ffn against the unchunked eager FFN (F.linear -> GELU(tanh) -> F.linear).

Tolerances: the CPU kernel does the eager FFN's own ops (addmm, gelu, mul, add) in x's dtype on
row slices, so it matches to GEMM-blocking noise (fp32 1e-5; fp16/bf16 one or two ulps). The Triton
path rounds GEMM1 before adding b1 and computes the epilogue in fp32 with a single final rounding
(eager rounds after each op), so 16-bit results differ by a few ulps of the O(1–10) outputs:
fp16 1e-2, bf16 6e-2 (abs and rel).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import TRITON_DEVICE, requires_cuda
from lightcache._live_bytes import LiveBytes

import lightcache.ops  # noqa: F401  (registers torch.ops.lightcache.*)
from lightcache.reference.ffn import chunked_ffn as ref_chunked_ffn

OP = torch.ops.lightcache.chunked_ffn
D, HID, OUT = 32, 64, 24
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
TOL_TRITON = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def eager_ffn(x, w1, b1, w2, b2, gate=None, residual=None):
    y = F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)
    if gate is not None:
        y = gate * y
    if residual is not None:
        y = residual + y
    return y


def make(shape, gate_shape, residual, bias, dtype, device, d=D, hid=HID, out=OUT):
    g = torch.Generator().manual_seed(1)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype=dtype, device=device)

    x = rnd(*shape)
    w1, w2 = rnd(hid, d, scale=d**-0.5), rnd(out, hid, scale=hid**-0.5)
    b1 = rnd(hid) if bias else None
    b2 = rnd(out) if bias else None
    gate = rnd(*gate_shape) if gate_shape is not None else None
    res = rnd(*(tuple(shape[:-1]) + (out,))) if residual else None
    return x, w1, b1, w2, b2, gate, res


# (x shape, chunk_size, gate shape, residual?, biases?)
CASES = [
    ((2, 37, D), 16, (2, 1, OUT), True, True),  # odd L, chunk not dividing L, per-sample gate
    ((45, D), 100, None, False, False),  # 2-D x, chunk > L, no bias
    ((1, 1, D), 4, None, True, True),  # L = 1, residual only
    ((3, 20, D), 7, (3, 20, OUT), False, True),  # full-shape gate, gate only
    ((2, 19, D), 19, (OUT,), True, False),  # chunk == L, channel gate
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"x{c[0]}-c{c[1]}")
def test_matches_eager(device, dtype, case):
    shape, chunk, gshape, res, bias = case
    x, w1, b1, w2, b2, gate, r = make(shape, gshape, res, bias, dtype, device)
    got = OP(x, w1, b1, w2, b2, chunk, gate, r)
    want = eager_ffn(x, w1, b1, w2, b2, gate, r)
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    tol = (TOL if device == "cpu" else TOL_TRITON)[dtype]
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_non_contiguous_inputs(device):
    # x is a column slice of a fused projection, w1 a transposed view, gate a stride-0 expansion,
    # residual a transposed view: all read through their strides.
    fused = torch.randn(2, 23, 2 * D, device=device)
    x = fused[..., :D]
    w1 = torch.randn(D, HID, device=device).t() * D**-0.5
    w2 = torch.randn(OUT, HID, device=device) * HID**-0.5
    b1, b2 = torch.randn(HID, device=device), torch.randn(OUT, device=device)
    gate = torch.randn(2, 1, OUT, device=device).expand(2, 23, OUT)
    residual = torch.randn(2, OUT, 23, device=device).transpose(1, 2)
    got = OP(x, w1, b1, w2, b2, 5, gate, residual)
    torch.testing.assert_close(got, eager_ffn(x, w1, b1, w2, b2, gate, residual), atol=2e-5, rtol=2e-5)


def test_opcheck():
    for args in (
        make((2, 9, D), (2, 1, OUT), True, True, torch.float32, "cpu"),
        make((7, D), None, False, False, torch.float32, "cpu"),
    ):
        x, w1, b1, w2, b2, gate, r = args
        torch.library.opcheck(OP, (x, w1, b1, w2, b2, 4, gate, r))


def test_torch_compile_smoke():
    x, w1, b1, w2, b2, gate, r = make((2, 11, D), (2, 1, OUT), True, True, torch.float32, "cpu")

    def f(x, gate, r):
        return OP(x, w1, b1, w2, b2, 4, gate, r) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, gate, r), f(x, gate, r), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Triton launcher, called directly (interpreter on CPU tensors here, real kernels on CUDA)
# ---------------------------------------------------------------------------------------------

TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if TRITON_DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: f"x{c[0]}-c{c[1]}")
def test_triton_launcher(dtype, case):
    from lightcache.kernels.ffn import chunked_ffn as tri_chunked_ffn

    shape, chunk, gshape, res, bias = case
    x, w1, b1, w2, b2, gate, r = make(shape, gshape, res, bias, dtype, TRITON_DEVICE)
    got = tri_chunked_ffn(x, w1, b1, w2, b2, chunk, gate, r)
    want = eager_ffn(*(t.float() if t is not None else None for t in (x, w1, b1, w2, b2, gate, r)))
    tol = TOL_TRITON[dtype]
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_triton_launcher_per_batch_segments():
    # x cannot be flattened to (B·L, D) as a view, so the launcher walks batch by batch and the
    # epilogue must still find the right gate/residual rows.
    from lightcache.kernels.ffn import chunked_ffn as tri_chunked_ffn

    dev = TRITON_DEVICE
    x = torch.randn(3, 13, 2 * D, device=dev)[..., :D]
    _, w1, b1, w2, b2, gate, r = make((3, 13, D), (3, 13, OUT), True, True, torch.float32, dev)
    got = tri_chunked_ffn(x, w1, b1, w2, b2, 5, gate, r)
    torch.testing.assert_close(got, eager_ffn(x, w1, b1, w2, b2, gate, r), atol=2e-5, rtol=2e-5)


# ---------------------------------------------------------------------------------------------
# memory: the chunk bounds the widest intermediate
# ---------------------------------------------------------------------------------------------



def test_triton_launcher_strided_biases():
    # b1 a strided view (every other element of a wider vector), b2 a stride-0 expansion of one
    # value: the kernels read biases through their strides, not as if contiguous.
    from lightcache.kernels.ffn import chunked_ffn as tri_chunked_ffn

    dev = TRITON_DEVICE
    x, w1, _, w2, _, gate, r = make((2, 21, D), (2, 1, OUT), True, False, torch.float32, dev)
    b1 = torch.randn(2 * HID, device=dev)[::2]
    b2 = torch.randn(1, device=dev).expand(OUT)
    assert b1.stride() == (2,) and b2.stride() == (0,)
    got = tri_chunked_ffn(x, w1, b1, w2, b2, 8, gate, r)
    torch.testing.assert_close(got, eager_ffn(x, w1, b1, w2, b2, gate, r), atol=2e-5, rtol=2e-5)
    # and through the op (CPU reference here, the Triton kernel on CUDA)
    torch.testing.assert_close(OP(x, w1, b1, w2, b2, 8, gate, r), eager_ffn(x, w1, b1, w2, b2, gate, r),
                               atol=2e-5, rtol=2e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cuda(dtype):
    for args in (
        make((2, 9, D), (2, 1, OUT), True, True, dtype, "cuda"),
        make((7, D), None, False, False, dtype, "cuda"),
    ):
        x, w1, b1, w2, b2, gate, r = args
        torch.library.opcheck(OP, (x, w1, b1, w2, b2, 4, gate, r))

def test_memory_bounded_by_chunk_cpu():
    b, length, d, hid, chunk = 2, 512, 64, 256, 32
    x, w1, b1, w2, b2, gate, r = make((b, length, d), (b, 1, d), True, True, torch.float32, "cpu", d, hid, d)
    with LiveBytes() as ours:
        y = ref_chunked_ffn(x, w1, b1, w2, b2, chunk, gate, r)
    with LiveBytes() as eager:
        y_eager = eager_ffn(x, w1, b1, w2, b2, gate, r)
    torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
    out_bytes = y.numel() * y.element_size()
    hidden_chunk = chunk * hid * 4
    assert ours.peak <= out_bytes + hidden_chunk + 4096, (ours.peak, out_bytes, hidden_chunk)
    assert ours.largest <= out_bytes  # nothing wider than the output itself
    full_hidden = b * length * hid * 4
    assert eager.largest >= full_hidden  # eager holds the whole (L, hidden) activation
    assert ours.peak < full_hidden / 2


@pytest.mark.parametrize("bias", [True, False])
def test_one_chunk_of_rows_equals_the_loop_and_its_peak(bias):
    """2-D rows that fit one chunk (the chunk hook's unsplit call) take the loop-free path: bit for
    bit the loop's result (the same kernels: the (1, L, D) view of the same rows goes through the
    loop) and the same peak, rows x (hidden + out)."""
    rows, d, hid, out = 40, 32, 128, 24
    x, w1, b1, w2, b2, _, _ = make((rows, d), None, False, bias, torch.float32, "cpu", d, hid, out)
    with LiveBytes() as fast:
        y = ref_chunked_ffn(x, w1, b1, w2, b2, rows)
    with LiveBytes() as loop:
        y_loop = ref_chunked_ffn(x.unsqueeze(0), w1, b1, w2, b2, rows)
    assert torch.equal(y, y_loop.squeeze(0))
    torch.testing.assert_close(y, eager_ffn(x, w1, b1, w2, b2), atol=1e-5, rtol=1e-5)
    assert fast.peak == loop.peak == rows * (hid + out) * 4, (fast.peak, loop.peak)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_memory_bounded_by_chunk_cuda(dtype):
    b, length, d, hid, chunk = 2, 4096, 256, 1024, 512
    x, w1, b1, w2, b2, gate, r = make((b, length, d), (b, 1, d), True, True, dtype, "cuda", d, hid, d)
    OP(x, w1, b1, w2, b2, chunk, gate, r)  # warm-up: cuBLAS workspace, Triton compile
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = OP(x, w1, b1, w2, b2, chunk, gate, r)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    out_bytes = y.numel() * y.element_size()
    assert extra <= out_bytes + chunk * hid * x.element_size() + (1 << 20), extra
    assert extra < b * length * hid * x.element_size()


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _good():
    return make((2, 5, D), (2, 1, OUT), True, True, torch.float32, "cpu")


@pytest.mark.parametrize(
    "mutate, exc, name",
    [
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size"),
        # a float for an int argument is rejected by the dispatcher's schema check (RuntimeError)
        (lambda a: a.update(chunk_size=2.5), (TypeError, RuntimeError), "chunk_size"),
        (lambda a: a.update(x=a["x"][0, 0]), ValueError, "x"),
        (lambda a: a.update(x=a["x"].long()), TypeError, "x"),
        (lambda a: a.update(w1=a["w1"][:, :-1]), ValueError, "w1"),
        (lambda a: a.update(w2=a["w2"][:, :-1]), ValueError, "w2"),
        (lambda a: a.update(b1=a["b1"].half()), TypeError, "b1"),
        (lambda a: a.update(b2=a["b2"][:-1]), ValueError, "b2"),
        (lambda a: a.update(gate=torch.randn(3, 1, OUT)), ValueError, "gate"),
        (lambda a: a.update(residual=torch.randn(2, 5, OUT + 1)), ValueError, "residual"),
    ],
)
def test_bad_input(mutate, exc, name):
    x, w1, b1, w2, b2, gate, r = _good()
    a = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, chunk_size=4, gate=gate, residual=r)
    mutate(a)
    with pytest.raises(exc, match=name):
        OP(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], a["chunk_size"], a["gate"], a["residual"])
