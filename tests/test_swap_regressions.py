"""Regressions of tracker issue 10: the device budget with fp8 scales (defect 7), a prefetch
destination shared by two keys (defect 9), fork() with rings open (defect 10), the FeatureStore
base and SwapStore ring reuse across calls."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lightcache
import lightcache.ops  # noqa: F401  (registers the ops)
from lightcache import MemoryPlan, _ext
from lightcache.memory import DeviceStore, FeatureStore, SwapStore
from lightcache.ring import DstInUseError, RingBuffer, RingError, get_ring

from tiny_pipelines import build, output_of

pytestmark = pytest.mark.skipif(not _ext.has_cpu_ring(), reason=f"lightcache._C missing: {_ext.import_error()}")

CPU = torch.device("cpu")
ops = torch.ops.lightcache

# fp8 features of shape (8, 16): 128 stored bytes, 8 fp32 per-token scales = 32 bytes on the device
N, S = 128, 32


def _feat(i):
    return torch.randn(8, 16) + i


def _fp8_store(budget):
    return SwapStore(MemoryPlan(swap="on", cache_dtype="fp8", device_cache_budget=budget), CPU)


# ---- defect 7: fp8 scales count against MemoryPlan.device_cache_budget ----------------------------


def test_put_refuses_a_budget_below_live_scales_plus_one_fetch():
    # three live features need 3 * 32 B of scales on the device plus room to fetch one (128 B)
    store = _fp8_store(3 * S + N - 1)
    store.put("a", _feat(0))
    store.put("b", _feat(1))
    with pytest.raises(ValueError, match=rf"MemoryPlan\.device_cache_budget \(223 bytes\).*minimum.* {3 * S + N} bytes"):
        store.put("c", _feat(2))
    assert "c" not in store and store.device_bytes == 2 * S  # the refused put changed nothing
    store.clear()

    store = _fp8_store(3 * S + N)
    feats = {k: _feat(i) for i, k in enumerate("abc")}
    for k, v in feats.items():
        store.put(k, v)
    assert store.min_device_budget == 3 * S + N
    for k in "abc":
        store.prefetch(k)  # no room for a prefetch next to the one fetch the budget keeps
    assert store.device_bytes == 3 * S
    ref = DeviceStore(storage_dtype=torch.float8_e4m3fn)
    for k, v in feats.items():
        ref.put(k, v)
        assert torch.equal(store.load(k), ref.load(k))
    assert store.device_peak == 3 * S + N
    store.clear()


def test_replacing_a_feature_counts_its_scale_once():
    store = _fp8_store(S + N)  # one live feature at a time
    for i in range(3):
        store.put("a", _feat(i))
    assert store.device_bytes == S and store.min_device_budget == S + N
    store.clear()


def test_scales_growing_under_a_prefetch_shed_it_instead_of_exceeding():
    budget = 400
    store = _fp8_store(budget)
    feats = {k: _feat(i) for i, k in enumerate("abcde")}
    store.put("a", feats["a"])
    store.put("b", feats["b"])
    store.prefetch("a")  # 2 scales + a + room for one fetch = 320 <= 400
    assert store.device_bytes == 2 * S + N
    for k in "cde":  # after e: 5 scales + prefetched a + one fetch = 416 > 400
        store.put(k, feats[k])
        assert store.device_bytes + N <= budget
    assert store.device_bytes == 5 * S  # a's prefetch was shed
    ref = DeviceStore(storage_dtype=torch.float8_e4m3fn)
    for k in "bacde":
        ref.put(k, feats[k])
        assert torch.equal(store.load(k), ref.load(k))
        assert store.device_peak <= budget
    assert store.device_bytes == 5 * S and store.device_peak == 5 * S + N
    store.clear()
    assert store.device_bytes == 0


def _run(pipe, kwargs, policy, memory):
    lightcache.enable(pipe, policy=policy, memory=memory)
    try:
        out = output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(0)))
        return out, lightcache.report(pipe)
    finally:
        lightcache.disable(pipe)


@pytest.fixture(scope="module")
def wan():
    pipe, kwargs = build("wan")
    return pipe, dict(kwargs, num_inference_steps=10, output_type="latent")


def _min_budget(monkeypatch, pipe, kwargs, policy):
    """The unbudgeted fp8 swap run: (output, report, SwapStore.min_device_budget)."""
    stores = []
    make = MemoryPlan.make_store

    def spy(plan, session):
        stores.append(make(plan, session))
        return stores[-1]

    monkeypatch.setattr(MemoryPlan, "make_store", spy)
    out, rep = _run(pipe, kwargs, policy, MemoryPlan(swap="on", cache_dtype="fp8"))
    monkeypatch.undo()
    return out, rep, max(s.min_device_budget for s in stores)


@pytest.mark.parametrize(
    "make_policy",
    [lambda: lightcache.EasyCache(threshold=0.2, warmup_steps=1), lambda: lightcache.PreciseCache(mode="flash")],
    ids=["easycache", "precise_flash"],
)
def test_pipeline_fp8_device_cache_stays_within_budget(wan, monkeypatch, make_policy):
    pipe, kwargs = wan
    ref, ref_rep, need = _min_budget(monkeypatch, pipe, kwargs, make_policy())
    assert ref_rep.reuse_ratio > 0
    assert ref_rep.cache_bytes["min_device_budget"] == need  # what the report tells the user to ask for
    largest = ref_rep.cache_bytes["largest_feature"]
    assert need > largest  # the scales of the live features come on top of one fetch
    for budget in (need, need + largest // 2, need + largest, need + 3 * largest):
        out, rep = _run(pipe, kwargs, make_policy(), MemoryPlan(swap="on", cache_dtype="fp8", device_cache_budget=budget))
        assert torch.equal(out, ref)  # skipped or shed prefetches change where bytes wait, not the bytes
        assert need <= rep.cache_bytes["device"] <= budget
    # one byte short: refused at the put that needs it, naming the whole run's minimum
    with pytest.raises(ValueError, match=rf"device_cache_budget \({need - 1} bytes\).*minimum.* {need} bytes"):
        _run(pipe, kwargs, make_policy(), MemoryPlan(swap="on", cache_dtype="fp8", device_cache_budget=need - 1))


# ---- defect 9: one dst, two prefetches ----------------------------------------------------------


@pytest.fixture
def ring():
    r = RingBuffer(slot_bytes=4096, num_slots=4, pinned="off")
    yield r
    r.close()


def test_prefetching_a_second_key_into_a_pending_dst_raises(ring):
    a, b = torch.randn(64), torch.randn(64)
    ring.store(a, 0)
    ring.store(b, 1)
    dst = torch.empty(64)
    ring.prefetch(0, dst)
    with pytest.raises(DstInUseError, match=r"key=0 .*ring %d.*key=1" % ring.id):
        ring.prefetch(1, dst)
    assert torch.equal(ring.fetch(0, dst), a)  # key 0's bytes, never key 1's
    ring.prefetch(1, dst)  # fetched: dst is the caller's again
    assert torch.equal(ring.fetch(1, dst), b)


def test_fetching_another_key_into_a_pending_dst_raises(ring):
    a, b = torch.randn(64), torch.randn(64)
    ring.store(a, 0)
    ring.store(b, 1)
    dst = torch.empty(64)
    ring.prefetch(0, dst)
    with pytest.raises(DstInUseError, match="key=0"):
        ring.fetch(1, dst)
    with pytest.raises(DstInUseError, match="key=0"):
        ring.store(dst, 2)  # reading memory a copy is writing
    assert torch.equal(ring.fetch(0, dst), a)


def test_overlapping_views_conflict_disjoint_ones_do_not(ring):
    a, b = torch.randn(64), torch.randn(64)
    ring.store(a, 0)
    ring.store(b, 1)
    buf = torch.empty(192)
    ring.prefetch(0, buf[:64])
    with pytest.raises(DstInUseError, match="key=0"):
        ring.prefetch(1, buf[32:96])
    ring.prefetch(1, buf[64:128])
    ring.prefetch(0, buf[128:])  # re-prefetching key 0 hands buf[:64] back
    ring.prefetch(1, buf[:64])  # and key 1 moves there, freeing buf[64:128]
    with pytest.raises(DstInUseError, match="key=0"):
        ring.fetch(1, buf[127:191])
    assert torch.equal(ring.fetch(0, buf[128:]), a) and torch.equal(ring.fetch(1, buf[:64]), b)
    assert torch.equal(ring.fetch(1, buf[64:128]), b)


def test_a_strided_src_spanning_a_pending_dst_conflicts(ring):
    a = torch.randn(64)
    ring.store(a, 0)
    m = torch.zeros(4, 64)
    ring.prefetch(0, m[2])
    with pytest.raises(DstInUseError, match="store: src overlaps .* key=0"):
        ring.store(m[:, 0], 1)  # column 0 of every row: its elements are in row 2 too
    ring.store(m[:2, 0], 1)  # rows 0 and 1 only
    assert torch.equal(ring.fetch(0, m[2]), a) and torch.equal(ring.fetch(1), torch.zeros(2))


def test_release_and_reprefetch_free_the_dst(ring):
    a, b = torch.randn(64), torch.randn(64)
    ring.store(a, 0)
    ring.store(b, 1)
    dst, other = torch.empty(64), torch.empty(64)
    ring.prefetch(0, dst)
    ring.prefetch(0, other)  # key 0 moved to `other`
    ring.prefetch(1, dst)
    assert torch.equal(ring.fetch(1, dst), b)
    ring.release(0)  # its pending prefetch into `other` ends with it
    ring.prefetch(1, other)
    assert torch.equal(ring.fetch(1, other), b)


def test_dst_conflicts_across_rings_and_through_the_ops(ring):
    with RingBuffer(slot_bytes=4096, num_slots=2, pinned="off") as other:
        a, b = torch.randn(64), torch.randn(64)
        ops.ring_store(a, ring.id, 0)
        ops.ring_store(b, other.id, 0)
        dst = torch.empty(64)
        ops.ring_prefetch(ring.id, 0, dst)
        with pytest.raises(DstInUseError, match=rf"key=0 of ring {ring.id}"):
            ops.ring_prefetch(other.id, 0, dst)
        with pytest.raises(DstInUseError, match=rf"key=0 of ring {ring.id}"):
            ops.ring_fetch(other.id, 0, dst)
        ops.ring_fetch(ring.id, 0, dst)
        assert torch.equal(dst, a)
        ops.ring_prefetch(other.id, 0, dst)
        ops.ring_fetch(other.id, 0, dst)
        assert torch.equal(dst, b)
    assert issubclass(DstInUseError, RingError) and issubclass(DstInUseError, ValueError)


# ---- defect 10: fork() with rings open ----------------------------------------------------------

_FORK = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import lightcache.ops
    from lightcache.ring import RingBuffer, RingError, get_ring, open_rings
    ops = torch.ops.lightcache
    x = torch.arange(64.0)
    old = RingBuffer(slot_bytes=4096, num_slots=2, pinned="off", _copy_delay_us=2000)
    old.store(x, 0)
    old.prefetch(0, torch.empty(64))  # a copy in flight while forking
    busy = RingBuffer(slot_bytes=4096, num_slots=2, pinned="off")  # never used in the child
    busy.store(x, 5)

    def child():
        assert open_rings() == [], open_rings()
        errors = []
        for use in (lambda: old.fetch(0), lambda: old.store(x, 1), lambda: old.stats(),
                    lambda: ops.ring_fetch(old.id, 0, torch.empty(64)), lambda: get_ring(old.id)):
            try:
                use()
            except RingError as e:
                errors.append(str(e))
        assert len(errors) == 5 and all("parent process" in e for e in errors), errors
        with RingBuffer(slot_bytes=4096, num_slots=2, pinned="off") as new:
            new.store(x * 2, 0)
            assert torch.equal(new.fetch(0), x * 2)
        fresh = RingBuffer(slot_bytes=4096, num_slots=2, pinned="off")  # left open: atexit closes it
        fresh.store(x, 3)
        old.close()  # allowed: frees nothing the parent owns
        print("CHILD OK", flush=True)

    def fork_and_wait(mode):
        if mode == "multiprocessing":
            import multiprocessing as mp
            p = mp.get_context("fork").Process(target=child)
            p.start()
            p.join(40)
            return p.exitcode
        pid = os.fork()
        if pid == 0:
            try:
                child()
            except BaseException as e:
                print("CHILD FAILED", repr(e), flush=True)
                os._exit(3)
            if mode == "os_exit":
                os._exit(0)
            sys.exit(0)  # normal exit: atexit and garbage collection run in the child
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    for mode in sys.argv[1:]:
        code = fork_and_wait(mode)
        assert code == 0, (mode, code)
        # the parent's rings are untouched by the child
        assert torch.equal(old.fetch(0), x) and torch.equal(busy.fetch(5), x)
        old.prefetch(0, torch.empty(64))  # in flight again for the next fork
        print("PARENT OK", mode, flush=True)
    """
)


def test_fork_child_gets_clear_errors_new_rings_and_exits():
    modes = ["sys_exit", "os_exit", "multiprocessing"]  # one interpreter for all: importing torch is slow
    # the child imports the lightcache this test imported (source tree or installed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(lightcache.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    # a session of its own: a hung forked child is killed with its parent
    proc = subprocess.Popen([sys.executable, "-c", _FORK, *modes], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"fork with rings open hung: {out!r} {err!r}")
    assert proc.returncode == 0, out + err
    assert out.splitlines() == [line for m in modes for line in ("CHILD OK", f"PARENT OK {m}")], out + err


# ---- FeatureStore base ----------------------------------------------------------------------------


def test_feature_store_is_the_common_base():
    assert issubclass(DeviceStore, FeatureStore) and issubclass(SwapStore, FeatureStore)
    with pytest.raises(TypeError):
        FeatureStore()
    assert lightcache.memory.FeatureStore is FeatureStore
    x = torch.randn(4, 8)
    for store in (DeviceStore(), SwapStore(MemoryPlan(swap="on"), CPU)):
        store.put("k", x)
        assert "k" in store and store.max_feature_bytes == x.nbytes
        own = store.load("k", copy=True)
        own.add_(1)  # the caller's own tensor
        assert torch.equal(store.load("k"), x)
        with pytest.raises(KeyError, match="never stored"):
            store.get("missing")
        store.clear()
        assert "k" not in store and store.device_bytes == 0 and store.host_bytes == 0


def test_device_store_accounting_through_the_base():
    store = DeviceStore(storage_dtype=torch.float8_e4m3fn)
    store.put("a", _feat(0))
    store.put("b", _feat(1))
    store.put("a", _feat(2))
    assert store.device_bytes == store.device_peak == 2 * (N + S) and store.max_feature_bytes == N
    store.clear()
    assert store.device_bytes == 0 and store.device_peak == 2 * (N + S)
    store.reset_peaks()
    assert store.device_peak == 0


# ---- SwapStore rings kept across calls -----------------------------------------------------------


def test_swap_store_keeps_its_rings_across_clears_until_closed():
    store = SwapStore(MemoryPlan(swap="on"), CPU)
    x = torch.randn(4, 8)
    store.put("k", x)
    rings = [r for rs in store._rings.values() for r in rs]
    store.clear(keep_rings=True)
    assert all(not r.closed and len(r) == 0 for r in rings) and store.host_bytes == 0
    store.reset_peaks()
    assert store.host_peak == 0
    store.put("k", x * 2)  # the same ring again: no new pinned slab
    assert [r for rs in store._rings.values() for r in rs] == rings
    assert torch.equal(store.load("k"), x * 2)
    store.close()
    assert all(r.closed for r in rings) and store._rings == {}
    with pytest.raises(ValueError, match="not an open RingBuffer"):
        get_ring(rings[0].id)
    store.close()  # idempotent
