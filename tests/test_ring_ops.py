"""The ring-buffer ops torch.ops.lightcache.ring_{store,prefetch,fetch,release}: eager use,
torch.compile (nothing dead-code-eliminated, program order kept) and opcheck."""

import pytest
import torch
from conftest import requires_cuda
from torch.library import opcheck

import lightcache.ops  # noqa: F401  (registers the ops)
from lightcache import _ext
from lightcache.ring import RingBuffer, StaleHandleError

pytestmark = pytest.mark.skipif(not _ext.has_cpu_ring(), reason=f"lightcache._C missing: {_ext.import_error()}")

ops = torch.ops.lightcache


@pytest.fixture
def ring(device):
    r = RingBuffer(slot_bytes=1 << 16, num_slots=4, device=device, full_policy="evict_oldest", pinned="prefer")
    yield r
    r.close()


def test_schemas():
    # int arguments are SymInt (custom_op's inference): a key that varies between calls of a
    # compiled function stays symbolic instead of recompiling per key.
    expected = {
        "ring_store": "lightcache::ring_store(Tensor src, SymInt ring, SymInt key) -> ()",
        "ring_prefetch": "lightcache::ring_prefetch(SymInt ring, SymInt key, Tensor(a2!) dst) -> ()",
        "ring_fetch": "lightcache::ring_fetch(SymInt ring, SymInt key, Tensor(a2!) dst) -> ()",
        "ring_release": "lightcache::ring_release(SymInt ring, SymInt key) -> ()",
    }
    for name, schema in expected.items():
        assert str(getattr(ops, name).default._schema) == schema


def test_eager_roundtrip(ring, device):
    x = torch.randn(16, 32, device=device)
    ops.ring_store(x, ring.id, 3)
    dst = torch.empty_like(x)
    ops.ring_prefetch(ring.id, 3, dst)
    ops.ring_fetch(ring.id, 3, dst)
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.equal(dst, x)
    ops.ring_release(ring.id, 3)
    assert 3 not in ring


def test_op_argument_errors(ring, device):
    x = torch.randn(4, device=device)
    # The dispatcher checks argument types first (RuntimeError naming the argument).
    with pytest.raises(RuntimeError, match="for argument 'ring'"):
        ops.ring_store(x, "r", 0)
    with pytest.raises(RuntimeError, match="for argument 'dst'"):
        ops.ring_fetch(ring.id, 0, [1.0])
    with pytest.raises(ValueError, match="ring=987654 is not an open RingBuffer id"):
        ops.ring_store(x, 987654, 0)
    with pytest.raises(ValueError, match=r"src needs 65540 bytes"):
        ops.ring_store(torch.empty(16385, device=device), ring.id, 0)
    with pytest.raises(ValueError, match="key=42 is not stored"):
        ops.ring_fetch(ring.id, 42, x)
    ops.ring_store(x, ring.id, 1)
    with pytest.raises(ValueError, match="dst must be contiguous"):
        ops.ring_fetch(ring.id, 1, torch.empty(4, 2, device=device).t()[0])
    with pytest.raises(TypeError, match="dst has dtype torch.float16"):
        ops.ring_fetch(ring.id, 1, torch.empty(4, dtype=torch.float16, device=device))
    with pytest.raises(ValueError, match="key=9 is not stored"):
        ops.ring_release(ring.id, 9)
    ops.ring_release(ring.id, 1)


def _store_then_fetch(x, rid: int, key: int):
    ops.ring_store(x * 2, rid, key)  # the stored value is a graph intermediate
    out = torch.empty_like(x)
    ops.ring_fetch(rid, key, out)
    ops.ring_release(rid, key)
    return out + 1


def test_compiled_store_fetch_roundtrip(ring, device):
    """aot_eager: a store whose result nobody uses must survive (ORDERED effect), and stay
    before the fetch; the release runs too."""
    torch._dynamo.reset()
    fn = torch.compile(_store_then_fetch, backend="aot_eager", fullgraph=True)
    for key in range(3):  # the key becomes dynamic after a recompile; still correct
        x = torch.randn(8, 8, device=device)
        assert torch.equal(fn(x, ring.id, key), x * 2 + 1)
        assert key not in ring
    assert ring.stats()["stores"] == 3 and ring.stats()["releases"] == 3


def test_compiled_prefetch_into_graph_input(ring, device):
    # Functionalization prefetches into a clone of dst; fetch then copies again (dst identity
    # differs), so the result stays exact.
    torch._dynamo.reset()

    def f(x, dst, rid: int):
        ops.ring_store(x, rid, 5)
        ops.ring_prefetch(rid, 5, dst)
        ops.ring_fetch(rid, 5, dst)
        return dst * 1

    fn = torch.compile(f, backend="aot_eager", fullgraph=True)
    x = torch.randn(64, device=device)
    dst = torch.zeros(64, device=device)
    out = fn(x, dst, ring.id)
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.equal(out, x) and torch.equal(dst, x)


def test_compiled_eviction_is_seen(device):
    with RingBuffer(slot_bytes=1024, num_slots=1, device=device, full_policy="evict_oldest", pinned="off") as r:
        torch._dynamo.reset()

        def f(a, b, rid: int):
            ops.ring_store(a, rid, 0)
            ops.ring_store(b, rid, 1)  # evicts key 0
            return a + 1

        ones = torch.ones(4, device=device)
        torch.compile(f, backend="aot_eager", fullgraph=True)(ones, ones * 2, r.id)
        with pytest.raises(StaleHandleError, match="evicted"):
            ops.ring_fetch(r.id, 0, torch.empty(4, device=device))


# ---- opcheck ------------------------------------------------------------------------------

ALL_UTILS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)


def test_opcheck_ring_store(ring, device):
    opcheck(ops.ring_store.default, (torch.randn(8, 16, device=device), ring.id, 1), test_utils=ALL_UTILS)
    assert 1 in ring  # repeated calls replace the key


def test_opcheck_ring_fetch(ring, device):
    x = torch.randn(8, 16, device=device)
    ops.ring_store(x, ring.id, 2)
    # opcheck runs the op on copies of dst and compares eager vs. compiled mutations.
    opcheck(ops.ring_fetch.default, (ring.id, 2, torch.zeros(8, 16, device=device)), test_utils=ALL_UTILS)


def test_opcheck_ring_prefetch(ring, device):
    x = torch.randn(8, 16, device=device)
    ops.ring_store(x, ring.id, 3)
    # A prefetch completes asynchronously by design, so opcheck's comparison of dst right after the
    # call would race with the copy; dst starts out holding the stored bytes, so every point in
    # time of the copy compares equal and the checks stay deterministic.
    opcheck(ops.ring_prefetch.default, (ring.id, 3, x.clone()), test_utils=ALL_UTILS)
    ring.synchronize()


@pytest.mark.parametrize("util", ALL_UTILS)
def test_opcheck_ring_release(ring, device, util):
    if util.startswith("test_aot_dispatch"):
        pytest.skip(
            "inapplicable: test_aot_dispatch_* runs the op twice (eager, then compiled) on the same key, and "
            "releasing a key twice is an error by design (no double release)"
        )
    ops.ring_store(torch.randn(4, device=device), ring.id, 4)
    opcheck(ops.ring_release.default, (ring.id, 4), test_utils=(util,))


@requires_cuda
def test_cuda_ops_follow_the_current_stream():
    with RingBuffer(slot_bytes=1 << 22, num_slots=2, device="cuda") as r:
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            x = torch.randn(1 << 20, device="cuda")
            ops.ring_store(x, r.id, 0)
            dst = torch.empty_like(x)
            ops.ring_prefetch(r.id, 0, dst)
            ops.ring_fetch(r.id, 0, dst)
            y = dst * 2
        torch.cuda.synchronize()
        assert torch.equal(y, x * 2)
