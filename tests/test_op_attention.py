"""lightcache::chunked_attention against an independent materialised path: torch.nn.RMSNorm over
the whole sequence, diffusers-style interleaved rotary, F.scaled_dot_product_attention; and against
diffusers' own WanAttnProcessor.

Tolerances: the naive reference rounds the normalised and rotated q/k to the input dtype exactly as
the op does, then runs SDPA in fp32, so only accumulation order and the final rounding differ:
fp32 2e-5; fp16 3e-3 and bf16 2e-2 (about two ulps of the O(1) outputs; the Triton kernel also
rounds the softmax weights P to the input dtype before P@V, as flash attention does).
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import TRITON_DEVICE, requires_cuda
from lightcache._live_bytes import LiveBytes

import lightcache.ops  # noqa: F401  (registers torch.ops.lightcache.*)
from lightcache.reference.attention import chunked_attention as ref_chunked_attention

OP = torch.ops.lightcache.chunked_attention
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
EPS = 1e-6


def naive_attention(q, k, v, qw, kw, cos, sin, eps, scale=None):
    """Full-sequence RMSNorm + rotary + SDPA (fp32 softmax), returned in q's dtype."""
    b, lq, h, d = q.shape
    dtype = q.dtype

    def norm(t, w):
        if w is None:
            return t
        rms = torch.nn.RMSNorm(w.numel(), eps=eps, device=t.device, dtype=t.dtype)
        with torch.no_grad():
            rms.weight.copy_(w)
            if w.numel() == h * d:  # Wan: across all heads of a token
                return rms(t.flatten(2)).unflatten(2, (h, d))
            return rms(t)  # HunyuanVideo: per head

    def rope(t):
        if cos is None:
            return t
        x1, x2 = t.unflatten(-1, (-1, 2)).unbind(-1)  # pairs (t[2i], t[2i+1])
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        out = torch.empty_like(t)
        out[..., 0::2] = x1 * c - x2 * s
        out[..., 1::2] = x1 * s + x2 * c
        return out.type_as(t)

    qq, kk = rope(norm(q, qw)), rope(norm(k, kw))
    o = F.scaled_dot_product_attention(
        qq.transpose(1, 2).float(), kk.transpose(1, 2).float(), v.transpose(1, 2).float(), scale=scale
    )
    return o.transpose(1, 2).to(dtype)


def make(b, lq, h, d, dtype, device, norm="across", rope=True, lk=None, k_norm=True):
    g = torch.Generator().manual_seed(2)
    lk = lq if lk is None else lk

    def rnd(*s, mean=0.0, std=1.0):
        return (torch.randn(*s, generator=g) * std + mean).to(dtype=dtype, device=device)

    q, k, v = rnd(b, lq, h, d), rnd(b, lk, h, d), rnd(b, lk, h, d)
    wn = h * d if norm == "across" else d
    qw = rnd(wn, mean=1.0, std=0.3) if norm else None
    kw = rnd(wn, mean=1.0, std=0.3) if norm and k_norm else None
    cos = sin = None
    if rope:
        ang = torch.rand(lq, d // 2, generator=g) * 2 * math.pi
        cos, sin = ang.cos().to(device), ang.sin().to(device)
    return q, k, v, qw, kw, cos, sin


# (B, Lq, H, D, norm kind, rope?, chunk_size, Lk or None, scale)
CASES = [
    (2, 37, 2, 32, "across", True, 16, None, None),  # odd L, chunk not dividing L, Wan norm
    (1, 50, 3, 64, "head", True, 100, None, None),  # chunk > L, HunyuanVideo per-head norm
    (1, 1, 2, 32, "across", True, 8, None, None),  # L = 1
    (2, 45, 2, 128, None, True, 40, None, None),  # rope only, D = 128
    (1, 33, 2, 32, "head", False, 10, None, 0.3),  # norm only, explicit scale
    (2, 20, 2, 32, "across", False, 7, 29, None),  # cross attention, Lk != Lq
]
IDS = [f"B{c[0]}-L{c[1]}-H{c[2]}-D{c[3]}-{c[4]}-{'rope' if c[5] else 'norope'}-c{c[6]}" for c in CASES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_naive(device, dtype, case):
    b, lq, h, d, norm, rope, chunk, lk, scale = case
    q, k, v, qw, kw, cos, sin = make(b, lq, h, d, dtype, device, norm, rope, lk)
    got = OP(q, k, v, qw, kw, cos, sin, EPS, chunk, scale)
    want = naive_attention(q, k, v, qw, kw, cos, sin, EPS, scale)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_q_norm_only(device):
    q, k, v, qw, kw, cos, sin = make(1, 19, 2, 32, torch.float32, device, "across", True, k_norm=False)
    assert kw is None
    got = OP(q, k, v, qw, None, cos, sin, EPS, 8, None)
    torch.testing.assert_close(got, naive_attention(q, k, v, qw, None, cos, sin, EPS), atol=2e-5, rtol=2e-5)


def test_fused_qkv_views(device):
    # q, k, v as views of one fused projection (B, L, 3, H, D): row stride 3·H·D, not contiguous.
    b, length, h, d = 2, 21, 2, 32
    qkv = torch.randn(b, length, 3, h, d, device=device)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    _, _, _, qw, kw, cos, sin = make(b, length, h, d, torch.float32, device)
    got = OP(q, k, v, qw, kw, cos, sin, EPS, 8, None)
    torch.testing.assert_close(got, naive_attention(q, k, v, qw, kw, cos, sin, EPS), atol=2e-5, rtol=2e-5)


def _wan_attention(dtype):
    pytest.importorskip("diffusers")
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, WanRotaryPosEmbed

    heads, head_dim, dim = 2, 32, 48
    attn = WanAttention(dim=dim, heads=heads, dim_head=head_dim, eps=1e-6, processor=WanAttnProcessor()).eval()
    with torch.no_grad():  # non-trivial norm weights (they start at 1)
        attn.norm_q.weight.normal_(1.0, 0.3)
        attn.norm_k.weight.normal_(1.0, 0.3)
    attn.to_out[0] = torch.nn.Identity()  # compare the attention output before the projection
    attn = attn.to(dtype)
    rope = WanRotaryPosEmbed(attention_head_dim=head_dim, patch_size=(1, 2, 2), max_seq_len=32)
    freqs_cos, freqs_sin = rope(torch.zeros(1, 4, 3, 8, 10))  # (1, L, 1, D), L = 3·4·5
    hidden = torch.randn(2, freqs_cos.shape[1], dim).to(dtype)
    with torch.no_grad():
        want = attn(hidden, rotary_emb=(freqs_cos, freqs_sin))
        q, k, v = (p(hidden).unflatten(2, (heads, head_dim)) for p in (attn.to_q, attn.to_k, attn.to_v))
    # Wan stores each pair's angle twice (repeat-interleaved); the op takes one per pair.
    assert torch.equal(freqs_cos[..., 0::2], freqs_cos[..., 1::2])
    cos = freqs_cos[0, :, 0, 0::2].float().contiguous()
    sin = freqs_sin[0, :, 0, 1::2].float().contiguous()
    args = (q, k, v, attn.norm_q.weight.detach(), attn.norm_k.weight.detach(), cos, sin, attn.norm_q.eps)
    return args, want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_diffusers_wan_processor(dtype):
    args, want = _wan_attention(dtype)
    got = OP(*args, 16, None)
    # bf16: diffusers runs SDPA in bf16; one bf16 ulp at |out| < 1 is 0.0039.
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.flatten(2), want, atol=tol, rtol=tol)


def test_opcheck():
    for case in (CASES[0], CASES[5]):
        b, lq, h, d, norm, rope, chunk, lk, scale = case
        q, k, v, qw, kw, cos, sin = make(b, lq, h, d, torch.float32, "cpu", norm, rope, lk)
        torch.library.opcheck(OP, (q, k, v, qw, kw, cos, sin, EPS, chunk, scale))


def test_torch_compile_smoke():
    q, k, v, qw, kw, cos, sin = make(1, 13, 2, 32, torch.float32, "cpu")

    def f(q, k, v):
        return OP(q, k, v, qw, kw, cos, sin, EPS, 4, None) + 1

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v), atol=0, rtol=0)


def test_empty_keys_give_zeros():
    # as F.scaled_dot_product_attention does for Lk = 0
    from lightcache.kernels.attention import chunked_attention as tri_attention

    q, k, v, qw, kw, _, _ = make(1, 5, 2, 32, torch.float32, "cpu", "head", False, lk=0)
    assert torch.equal(OP(q, k, v, qw, kw, None, None, EPS, 4, None), torch.zeros_like(q))
    q, k, v = (t.to(TRITON_DEVICE) for t in (q, k, v))
    assert torch.equal(tri_attention(q, k, v, None, None, None, None, EPS, 4, None), torch.zeros_like(q))


# ---------------------------------------------------------------------------------------------
# Triton launcher, called directly (interpreter on CPU tensors here, real kernels on CUDA)
# ---------------------------------------------------------------------------------------------

TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if TRITON_DEVICE == "cuda" else [])
TRITON_CASES = [CASES[0], CASES[1], CASES[2], CASES[3], CASES[5]]


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", TRITON_CASES, ids=[IDS[CASES.index(c)] for c in TRITON_CASES])
def test_triton_launcher(dtype, case):
    from lightcache.kernels.attention import chunked_attention as tri_attention

    b, lq, h, d, norm, rope, chunk, lk, scale = case
    q, k, v, qw, kw, cos, sin = make(b, lq, h, d, dtype, TRITON_DEVICE, norm, rope, lk)
    got = tri_attention(q, k, v, qw, kw, cos, sin, EPS, chunk, scale)
    want = naive_attention(q, k, v, qw, kw, cos, sin, EPS, scale)
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_triton_launcher_fused_qkv_and_q_norm_only():
    from lightcache.kernels.attention import chunked_attention as tri_attention

    b, length, h, d = 1, 27, 2, 64
    q, k, v = torch.randn(b, length, 3, h, d, device=TRITON_DEVICE).unbind(2)
    _, _, _, qw, _, cos, sin = make(b, length, h, d, torch.float32, TRITON_DEVICE, "head")
    got = tri_attention(q, k, v, qw, None, cos, sin, EPS, 5, None)
    torch.testing.assert_close(got, naive_attention(q, k, v, qw, None, cos, sin, EPS), atol=2e-5, rtol=2e-5)


def test_triton_launcher_matches_diffusers_wan():
    from lightcache.kernels.attention import chunked_attention as tri_attention

    args, want = _wan_attention(torch.float32)
    args = tuple(a.to(TRITON_DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    got = tri_attention(*args, 64, None)
    torch.testing.assert_close(got.flatten(2).cpu(), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("d", [16, 48, 256])
def test_triton_launcher_rejects_head_dim(d):
    from lightcache.kernels.attention import chunked_attention as tri_attention

    q = torch.randn(1, 4, 1, d, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        tri_attention(q, q, q, None, None, None, None, EPS, 4, None)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cuda(dtype):
    for case in (CASES[0], CASES[5]):
        b, lq, h, d, norm, rope, chunk, lk, scale = case
        q, k, v, qw, kw, cos, sin = make(b, lq, h, d, dtype, "cuda", norm, rope, lk)
        torch.library.opcheck(OP, (q, k, v, qw, kw, cos, sin, EPS, chunk, scale))


# ---------------------------------------------------------------------------------------------
# tile sizes from the device's shared memory (pure function; no GPU needed)
# ---------------------------------------------------------------------------------------------

SMEM_LIMITS = {"164KB": 164 * 1024, "99KB": 99 * 1024, "48KB": 48 * 1024}


@pytest.mark.parametrize("limit", list(SMEM_LIMITS), ids=list(SMEM_LIMITS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hd", [32, 64, 128])
def test_tile_config_fits_the_shared_memory(hd, dtype, limit):
    from lightcache.kernels.attention import smem_estimate, tile_config

    smem = SMEM_LIMITS[limit]
    bm, bn, warps, stages = tile_config(hd, dtype, smem)
    assert smem_estimate(hd, dtype, bm, bn, stages) <= smem
    assert bm >= 16 and bn >= 16 and bm & (bm - 1) == 0 and bn & (bn - 1) == 0  # tl.dot: powers of two >= 16
    assert warps in (4, 8) and stages >= 1
    assert tile_config(hd, dtype, smem) == (bm, bn, warps, stages)  # a pure function of its arguments
    if dtype == torch.float32 and hd == 128:
        assert bm <= 32  # the 64-row fp32 tile spills registers at D = 128
    # more shared memory never gives a smaller tile
    bigger = tile_config(hd, dtype, 2 * smem)
    assert bigger[0] * bigger[1] * bigger[3] >= bm * bn * stages


def test_tile_config_choices():
    from lightcache.kernels.attention import tile_config

    bf16 = torch.bfloat16
    assert tile_config(128, bf16, 164 * 1024) == (128, 64, 8, 3)  # Hopper / A100 class: 3 stages
    assert tile_config(128, bf16, 227 * 1024) == (128, 64, 8, 3)  # H100/H200 opt-in limit
    assert tile_config(128, bf16, 99 * 1024) == (128, 64, 8, 2)  # RTX 4090 / A6000 class: 2 stages
    assert tile_config(128, torch.float16, 99 * 1024) == (128, 64, 8, 2)
    assert tile_config(64, bf16, 164 * 1024) == (128, 64, 4, 3)
    small = tile_config(128, bf16, 48 * 1024)
    assert small[0] * small[1] < 128 * 64
    assert tile_config(128, torch.float32, 164 * 1024) == (32, 32, 8, 1)
    assert tile_config(64, torch.float32, 164 * 1024) == (64, 32, 8, 2)
    assert tile_config(128, bf16, 1024) == (16, 16, 4, 1)  # nothing fits: the smallest tile
    with pytest.raises(ValueError, match="head_dim"):
        tile_config(96, bf16, 164 * 1024)


def test_tile_config_used_by_the_launcher(monkeypatch):
    # on CUDA the launcher takes the tile for the tensor's own device limit; under the interpreter
    # a fixed moderate tile
    from lightcache.kernels import attention as A

    q = torch.empty(1, 4, 1, 128, dtype=torch.bfloat16)
    assert A._config(128, torch.bfloat16, q) == A.INTERPRETER_TILE
    if torch.cuda.is_available():
        qc = q.cuda()
        monkeypatch.setattr(A, "_interpreted", lambda: False)
        limit = A.device_smem_bytes(qc.device.index)
        assert A._config(128, torch.bfloat16, qc) == A.tile_config(128, torch.bfloat16, limit)


# Compiles _attn_fwd_kernel ahead of time for a GPU target (no GPU needed) and prints the shared
# memory Triton assigns it; "SKIP: ..." where this Triton lacks the ahead-of-time API.
_AOT_SCRIPT = """
import sys
import torch
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from lightcache.kernels.attention import _attn_fwd_kernel as fn
except ImportError as exc:
    print("SKIP: no ahead-of-time compile API:", exc); sys.exit(0)
hd, dtype, bm, bn, warps, stages, cap = HD, getattr(torch, DTYPE), BM, BN, WARPS, STAGES, CAP
ty = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dtype]
consts = dict(HAS_QN=True, HAS_KN=True, HAS_ROPE=True, HALF=hd // 2, BLOCK_M=bm, BLOCK_N=bn,
              DOT_PREC="ieee" if dtype == torch.float32 else "tf32")
sig = {}
for name in fn.arg_names:
    if name in consts:
        sig[name] = "constexpr"
    elif name in ("Q", "K", "V", "O", "QW", "KW"):
        sig[name] = ty
    elif name in ("QINV", "KINV", "COS", "SIN"):
        sig[name] = "*fp32"
    else:
        sig[name] = "fp32" if name == "qk_scale" else "i32"
try:
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=dict(num_warps=warps, num_stages=stages))
except (TypeError, AttributeError, ImportError) as exc:
    print("SKIP: ahead-of-time compile unavailable:", type(exc).__name__, exc); sys.exit(0)
print("SHARED", kernel.metadata.shared)
"""


def _aot_shared_bytes(hd, dtype, tile, capability):
    """Shared memory Triton itself assigns the kernel for ``tile`` on ``capability``. Under the
    interpreter (CPU tests) ``@triton.jit`` is replaced, so it compiles in a subprocess without it."""
    import subprocess
    import sys

    bm, bn, warps, stages = tile
    code = _AOT_SCRIPT
    for key, value in dict(HD=hd, DTYPE=repr(str(dtype).split(".")[1]), BM=bm, BN=bn, WARPS=warps, STAGES=stages,
                           CAP=capability).items():
        code = code.replace(key, str(value))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout.strip().splitlines()
    if run.returncode != 0 or not out:
        raise AssertionError(f"ahead-of-time compile failed (rc {run.returncode}): {run.stderr[-2000:]}")
    if out[-1].startswith("SKIP"):
        pytest.skip(out[-1])
    return int(out[-1].split()[1])


def test_triton_tile_for_99kb_parts_fits_by_the_compilers_count():
    # The RTX 4090 / A6000 class (sm_86/sm_89) allows 99 KB per block: the bf16 D = 128 tile chosen
    # for it must fit by Triton's own count (compiled ahead of time for sm_86; no GPU needed), which
    # the Hopper tile (115,200 bytes with triton 3.9) does not.
    pytest.importorskip("triton")
    from lightcache.kernels.attention import smem_estimate, tile_config

    tile = tile_config(128, torch.bfloat16, 99 * 1024)
    shared = _aot_shared_bytes(128, torch.bfloat16, tile, 86)
    assert shared <= 99 * 1024 and shared <= smem_estimate(128, torch.bfloat16, tile[0], tile[1], tile[3])

# ---------------------------------------------------------------------------------------------
# memory: no (L, L) scores, no full-length normalised/rotated q or k
# ---------------------------------------------------------------------------------------------


def test_memory_bounded_by_chunk_cpu():
    b, length, h, d, chunk = 1, 256, 2, 32, 32
    q, k, v, qw, kw, cos, sin = make(b, length, h, d, torch.float32, "cpu")
    with LiveBytes() as ours:
        out = ref_chunked_attention(q, k, v, qw, kw, cos, sin, EPS, chunk, None)
    with LiveBytes() as eager:
        want = naive_attention(q, k, v, qw, kw, cos, sin, EPS)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    out_bytes = out.numel() * 4
    k_stats = b * length * 4  # (B, L, 1) fp32 inverse RMS of k
    score_tile = b * h * chunk * chunk * 4
    qk_tile = b * chunk * h * d * 4
    tile = max(score_tile, qk_tile)
    # Every intermediate is a tile; only the output and k's statistics are full length.
    assert sorted(ours.sizes)[-2] <= max(tile, k_stats), sorted(ours.sizes)[-3:]
    assert ours.peak <= out_bytes + k_stats + 12 * tile, (ours.peak, out_bytes, tile)
    full_scores = b * h * length * length * 4
    full_q = b * length * h * d * 4
    assert ours.peak - out_bytes < min(full_scores, 2 * full_q)
    assert eager.peak > ours.peak


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_long_sequence_and_memory(dtype):
    b, length, h, d = 1, 4099, 4, 128
    q, k, v, qw, kw, cos, sin = make(b, length, h, d, dtype, "cuda")
    OP(q, k, v, qw, kw, cos, sin, EPS, 1024, None)  # compile
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = OP(q, k, v, qw, kw, cos, sin, EPS, 1024, None)
    torch.cuda.synchronize()
    ours = torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    want = naive_attention(q, k, v, qw, kw, cos, sin, EPS)
    torch.cuda.synchronize()
    eager = torch.cuda.max_memory_allocated() - base
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])
    # output + per-token statistics only (plus allocator rounding)
    assert ours <= got.numel() * got.element_size() + 2 * b * length * h * 4 + (2 << 20), ours
    assert ours < eager


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, exc, name",
    [
        (lambda a: a.update(q=a["q"][0]), ValueError, "q"),
        (lambda a: a.update(k=a["k"].half()), TypeError, "k"),
        (lambda a: a.update(v=a["v"][:, :-1]), ValueError, "v"),
        (lambda a: a.update(q_norm_weight=a["q_norm_weight"][:-1]), ValueError, "q_norm_weight"),
        (lambda a: a.update(k_norm_weight=a["k_norm_weight"].long()), TypeError, "k_norm_weight"),
        (lambda a: a.update(rope_sin=None), ValueError, "rope_cos"),
        (lambda a: a.update(rope_cos=a["rope_cos"][:-1]), ValueError, "rope_cos"),
        (lambda a: a.update(rope_sin=a["rope_sin"].half()), TypeError, "rope_sin"),
        (lambda a: a.update(eps=0.0), ValueError, "eps"),
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size"),
        (lambda a: a.update(scale=-1.0), ValueError, "scale"),
    ],
)
def test_bad_input(mutate, exc, name):
    q, k, v, qw, kw, cos, sin = make(1, 6, 2, 32, torch.float32, "cpu")
    a = dict(q=q, k=k, v=v, q_norm_weight=qw, k_norm_weight=kw, rope_cos=cos, rope_sin=sin, eps=EPS,
             chunk_size=4, scale=None)
    mutate(a)
    with pytest.raises(exc, match=name):
        OP(**a)
