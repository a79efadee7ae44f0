"""lightcache.ring.RingBuffer over the compiled lightcache._C: round trips, the slot protocol,
full-ring policies, pinned-memory fallbacks, argument validation. CPU always; CUDA when present."""

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from conftest import LOW_MEMLOCK_PREAMBLE, HAS_CUDA, requires_cuda

from lightcache import _ext
from lightcache.ring import (
    PinnedMemoryError,
    PinnedMemoryWarning,
    RingBuffer,
    RingError,
    RingFullError,
    StaleHandleError,
    get_ring,
)

pytestmark = pytest.mark.skipif(not _ext.has_cpu_ring(), reason=f"lightcache._C missing: {_ext.import_error()}")


@pytest.fixture
def make_ring():
    rings = []

    def make(*args, **kwargs):
        kwargs.setdefault("pinned", "off")  # keep the tests independent of the memlock limit
        r = RingBuffer(*args, **kwargs)
        rings.append(r)
        return r

    yield make
    for r in rings:
        r.close()


def _bytes_equal(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


def _rand(shape, dtype, device="cpu"):
    if dtype == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    return torch.randint(0, 100, shape, device=device).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip(device, dtype, make_ring):
    r = make_ring(slot_bytes=1 << 16, num_slots=3, device=device)
    x = _rand((7, 33), dtype, device)
    r.store(x, key=3)
    assert 3 in r and len(r) == 1
    out = r.fetch(3)
    assert _bytes_equal(out, x)
    dst = torch.empty_like(x)
    r.prefetch(3, dst)
    assert r.fetch(3, dst) is dst
    assert _bytes_equal(dst, x)
    assert r.release(3) is True
    assert 3 not in r and len(r) == 0


def test_prefetch_into_one_tensor_fetch_into_another(make_ring):
    r = make_ring(slot_bytes=4096, num_slots=2)
    x = torch.randn(100)
    r.store(x, 0)
    a, b = torch.zeros(100), torch.zeros(100)
    r.prefetch(0, a)
    r.fetch(0, b)  # not the prefetched tensor: copies again
    assert torch.equal(b, x)
    r.fetch(0, a)
    assert torch.equal(a, x)
    st = r.stats()
    assert st["prefetches"] == 1 and st["fetches"] == 2 and st["bytes_h2d"] == 2 * 400


def test_non_contiguous_src_is_copied(make_ring):
    r = make_ring(slot_bytes=4096, num_slots=2)
    x = torch.randn(16, 8).t()  # (8, 16), non-contiguous
    r.store(x, 1)
    out = r.fetch(1)
    assert out.is_contiguous() and torch.equal(out, x)


def test_src_kept_alive_until_copied(make_ring):
    # 20 ms per copy: the source is dropped and its memory churned while the copy is pending.
    r = make_ring(slot_bytes=1 << 20, num_slots=2, _copy_delay_us=20000)
    src = torch.arange(200_000, dtype=torch.float32)
    expect = src.clone()
    r.store(src, 0)
    assert r.stats()["pending_sources"] == 1
    assert not r.store_done(0)
    del src
    junk = [torch.full((200_000,), -1.0) for _ in range(8)]  # would reuse freed memory
    assert torch.equal(r.fetch(0), expect)
    del junk
    r.synchronize()
    assert r.store_done(0)
    assert r.stats()["pending_sources"] == 0  # dropped once known complete


def test_copies_of_mixed_sizes_complete_in_issue_order(make_ring):
    """Small copies issued behind a large one complete after it, with the right bytes (the CPU
    engine may run a small copy on the caller's thread when nothing is in flight, never ahead of
    queued ones)."""
    r = make_ring(slot_bytes=4 << 20, num_slots=3)
    big = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB: the worker's
    small = torch.arange(1024, dtype=torch.float32)
    for i in range(6):
        r.store(big + i, 0)
        r.store(small + i, 1)  # queued behind the big store
        dst = torch.empty_like(big)
        r.prefetch(0, dst)
        assert torch.equal(r.fetch(1), small + i)
        assert torch.equal(r.fetch(0, dst), big + i)
        r.store(small[:256] - i, 0)  # replaces the big entry, small: may run inline
        assert torch.equal(r.fetch(0), small[:256] - i)


@pytest.mark.parametrize("slot_bytes", [(1 << 16) + 3, 3 << 20])  # odd: slot 1 starts off any 16-byte line
def test_stores_at_every_alignment_and_size_round_trip(make_ring, slot_bytes):
    """The CPU engine writes stores of 4 KiB and more with non-temporal stores (a 16-byte-aligned
    body, head and tail by memcpy), inline or on the worker (above 1 MiB): every source offset and
    slot alignment, sizes around the 4 KiB threshold and the 64-byte block, come back byte for byte."""
    r = make_ring(slot_bytes=slot_bytes, num_slots=2)
    base = torch.randint(0, 256, (slot_bytes + 64,), dtype=torch.uint8)
    sizes = [1, 4095, 4096, 4097, 4096 + 63, 4096 + 64, 40_001, slot_bytes - 16]
    if slot_bytes > (1 << 20):
        sizes += [(1 << 20) + 1, slot_bytes]
    for n in sizes:
        for offset in (0, 1, 7, 15):
            if offset + n > base.numel():
                continue
            src = base[offset : offset + n]
            for key in (0, 1):  # the two slots: aligned and not
                r.store(src, key)
            for key in (0, 1):
                assert torch.equal(r.fetch(key), src), (n, offset, key)
            r.release(0)
            r.release(1)


def test_stress_random_cycles(make_ring):
    """>= 10,000 random store/prefetch/fetch/release cycles with random sizes and dtypes; every
    byte that comes back is checked, evictions included."""
    rng = random.Random(0)
    slot = 4096
    r = make_ring(slot_bytes=slot, num_slots=6, full_policy="evict_oldest")
    model = {}  # key -> expected tensor
    prefetched = {}  # key -> dst tensor of a pending prefetch
    checked_bytes = 0
    counts = dict(store=0, prefetch=0, fetch=0, release=0)
    evictions = 0
    t0 = time.perf_counter()
    while min(counts["store"], counts["fetch"]) < 10_000:
        op = rng.random()
        key = rng.randrange(12)
        if op < 0.35 or not model:
            dtype = rng.choice([torch.float32, torch.float16, torch.uint8, torch.int64])
            esize = torch.empty((), dtype=dtype).element_size()
            n = rng.randrange(0, slot // esize + 1)
            src = _rand((n,), dtype)
            if n > 3 and rng.random() < 0.2:
                src = torch.stack([src, src]).t()[:, 0]  # a strided view
            model[key] = src.clone()
            prefetched.pop(key, None)
            r.store(src, key)
            counts["store"] += 1
            del src  # only the ring keeps it alive now
            for k in list(model):
                if k not in r:  # evicted by this store
                    with pytest.raises(StaleHandleError, match="evicted"):
                        r.fetch(k)
                    assert r.state(k) == "evicted"
                    assert r.release(k) is False
                    del model[k]
                    prefetched.pop(k, None)
                    evictions += 1
        else:
            key = rng.choice(list(model))
            expect = model[key]
            if op < 0.55:
                dst = torch.empty_like(expect)
                r.prefetch(key, dst)
                prefetched[key] = dst
                counts["prefetch"] += 1
            elif op < 0.85:
                dst = prefetched.pop(key, None)
                if dst is None or rng.random() < 0.3:
                    dst = torch.full_like(expect, 7) if expect.dtype != torch.bool else torch.empty_like(expect)
                got = r.fetch(key, dst)
                assert _bytes_equal(got, expect), f"key {key}: bytes differ"
                checked_bytes += expect.numel() * expect.element_size()
                counts["fetch"] += 1
            else:
                assert r.release(key) is True
                del model[key]
                prefetched.pop(key, None)
                with pytest.raises(ValueError, match=f"key={key} is not stored"):
                    r.release(key)
                counts["release"] += 1
    elapsed = time.perf_counter() - t0
    r.synchronize()
    st = r.stats()
    assert st["keys"] == len(model) and st["slots_in_use"] == len(model)
    assert st["pending_sources"] == 0
    assert st["high_water_bytes"] <= 6 * slot
    assert checked_bytes > 0 and evictions > 0 and counts["prefetch"] > 1000 and counts["release"] > 1000
    assert elapsed < 60, f"stress took {elapsed:.1f}s"


def test_stale_handle_and_double_release(make_ring):
    r = make_ring(slot_bytes=256, num_slots=2)
    r.store(torch.ones(8), 1)
    entry = r._entries[1]
    assert r.release(1) is True
    with pytest.raises(ValueError, match="key=1 is not stored in ring .* already released"):
        r.release(1)
    with pytest.raises(ValueError, match="key=1 is not stored"):
        r.fetch(1)
    # The compiled layer detects stale (slot, generation) handles itself.
    with pytest.raises(StaleHandleError, match="already released"):
        r._core.release(entry.slot, entry.generation)
    dst = torch.empty(8)
    with pytest.raises(StaleHandleError, match="stale handle"):
        r._core.fetch(entry.slot, entry.generation, dst.data_ptr(), 32, 0, False)
    assert issubclass(StaleHandleError, RingError) and issubclass(RingError, RuntimeError)


def test_store_replaces_existing_key(make_ring):
    r = make_ring(slot_bytes=256, num_slots=1)  # one slot: replacing must free it first
    r.store(torch.ones(8), 5)
    r.store(torch.full((4,), 2.0), 5)
    assert torch.equal(r.fetch(5), torch.full((4,), 2.0))
    assert r.stats()["slots_in_use"] == 1


def test_policy_error(make_ring):
    r = make_ring(slot_bytes=64, num_slots=2, full_policy="error")
    r.store(torch.ones(4), 0)
    r.store(torch.ones(4), 1)
    with pytest.raises(RingFullError, match="full_policy='error'"):
        r.store(torch.ones(4), 2)
    assert 2 not in r and r.keys() == [0, 1]


def test_policy_evict_oldest(make_ring):
    r = make_ring(slot_bytes=64, num_slots=2, full_policy="evict_oldest")
    a, b, c = torch.full((4,), 1.0), torch.full((4,), 2.0), torch.full((4,), 3.0)
    r.store(a, 10)
    r.store(b, 11)
    r.store(c, 12)  # evicts key 10, the oldest
    with pytest.raises(StaleHandleError, match="key=10 .* evicted"):
        r.fetch(10)
    with pytest.raises(StaleHandleError, match="evicted"):
        r.prefetch(10, torch.empty(4))
    assert r.state(10) == "evicted"
    assert torch.equal(r.fetch(11), b) and torch.equal(r.fetch(12), c)
    assert r.stats()["evictions"] == 1
    assert r.release(10) is False  # forgetting an evicted key is not an error
    with pytest.raises(ValueError, match="key=10 is not stored"):
        r.release(10)


def test_evict_oldest_waits_for_copies_in_flight(make_ring):
    r = make_ring(slot_bytes=4096, num_slots=2, full_policy="evict_oldest", _copy_delay_us=20000)
    r.store(torch.full((1024,), 1.0), 0)
    r.store(torch.full((1024,), 2.0), 1)
    assert r.state(0) == "copying_out" and not r.store_done(0)
    r.store(torch.full((1024,), 3.0), 2)  # every entry mid-copy: waits for key 0's copy, then evicts it
    assert r.state(0) == "evicted"
    assert torch.equal(r.fetch(1), torch.full((1024,), 2.0))
    assert torch.equal(r.fetch(2), torch.full((1024,), 3.0))
    # An entry being prefetched is not evicted while an idle one exists.
    r.synchronize()
    dst = torch.empty(1024)
    r.prefetch(1, dst)  # key 1 is now the oldest, and mid-copy
    r.store(torch.full((1024,), 4.0), 3)
    assert r.state(2) == "evicted" and 1 in r
    assert torch.equal(r.fetch(1, dst), torch.full((1024,), 2.0))


def test_policy_block_times_out(make_ring):
    r = make_ring(slot_bytes=64, num_slots=1, full_policy="block", timeout=0.2)
    r.store(torch.ones(4), 0)
    t0 = time.perf_counter()
    with pytest.raises(RingFullError, match=r"no slot was released within 0.2 s"):
        r.store(torch.ones(4), 1)
    assert 0.19 <= time.perf_counter() - t0 < 5


def test_policy_block_wakes_on_release_from_another_thread(make_ring):
    r = make_ring(slot_bytes=64, num_slots=1, full_policy="block", timeout=10)
    r.store(torch.ones(4), 0)
    t = threading.Timer(0.05, r.release, args=(0,))
    t.start()
    t0 = time.perf_counter()
    r.store(torch.full((4,), 9.0), 1)  # blocks (GIL released) until the timer thread releases key 0
    t.join()
    assert time.perf_counter() - t0 < 5
    assert torch.equal(r.fetch(1), torch.full((4,), 9.0)) and 0 not in r
    assert r.stats()["full_waits"] == 1


def test_stats_memory_report(make_ring):
    r = make_ring(slot_bytes=1000, num_slots=3)
    r.store(torch.zeros(100), 0)  # 400 bytes
    r.store(torch.zeros(50), 1)  # 200 bytes
    r.release(0)
    st = r.stats()
    assert st["slot_bytes"] == 1000 and st["num_slots"] == 3 and st["slab_bytes"] >= 3000
    assert st["bytes_in_use"] == 200 and st["high_water_bytes"] == 600
    assert st["pinned"] is False and st["pinned_mode"] == "off"
    assert st["device"] == "cpu" and st["ring_id"] == r.id
    assert st["stores"] == 2 and st["releases"] == 1


def test_total_bytes_and_nbytes_of(make_ring):
    r = make_ring(total_bytes=4000, num_slots=4)
    assert r.slot_bytes == 1000
    assert RingBuffer.nbytes_of((3, 5), torch.float16) == 30


def test_registry_and_close():
    r = RingBuffer(slot_bytes=64, num_slots=2, pinned="off")
    assert get_ring(r.id) is r
    r.store(torch.ones(4), 0)
    r.close()
    assert r.closed
    with pytest.raises(ValueError, match=f"ring={r.id} is not an open RingBuffer id"):
        get_ring(r.id)
    with pytest.raises(RingError, match="closed"):
        r.store(torch.ones(4), 1)
    r.close()  # idempotent
    with RingBuffer(slot_bytes=64, num_slots=1, pinned="off") as r2:
        assert get_ring(r2.id) is r2
    assert r2.closed


def test_pinned_prefer_pins_small_slab():
    ok, _ = _ext.C.probe_pinned(1 << 16)
    if not ok:
        pytest.skip("mlock unavailable here")
    with RingBuffer(slot_bytes=4096, num_slots=2, pinned="prefer") as r:
        assert r.pinned and r.stats()["pinned"]


_LOW_MEMLOCK = LOW_MEMLOCK_PREAMBLE.format(limit=64 * 1024) + textwrap.dedent(
    """
    import sys, warnings
    import torch
    from lightcache.ring import RingBuffer, PinnedMemoryError, PinnedMemoryWarning
    from lightcache import _ext
    if _ext.C.probe_pinned(1 << 20)[0]:
        print("SKIP: mlock still succeeds under the lowered limit"); sys.exit(0)
    try:
        RingBuffer(slot_bytes=1 << 20, num_slots=4, pinned="require")
        print("FAIL: require did not raise"); sys.exit(1)
    except PinnedMemoryError as e:
        print("REQUIRE:", e)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = RingBuffer(slot_bytes=1 << 20, num_slots=4, pinned="prefer")
    assert not r.pinned, "prefer should have fallen back"
    assert any(issubclass(x.category, PinnedMemoryWarning) for x in w), [str(x.message) for x in w]
    print("PREFER:", [str(x.message) for x in w if issubclass(x.category, PinnedMemoryWarning)][0])
    x = torch.randn(1 << 18)
    r.store(x, 0)
    assert torch.equal(r.fetch(0), x)
    r.close()
    print("OK")
    """
)


def test_pinned_refused_require_raises_prefer_falls_back():
    proc = subprocess.run([sys.executable, "-c", _LOW_MEMLOCK], capture_output=True, text=True, timeout=120, cwd=os.path.dirname(__file__))
    out = proc.stdout + proc.stderr
    if "SKIP:" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, out
    assert "REQUIRE: lightcache._C: could not page-lock 4.0 MiB" in out and "RLIMIT_MEMLOCK is 64 KiB" in out
    assert "pinned='prefer'" in out  # the error says how to fall back
    assert "PREFER: lightcache.RingBuffer: pinned memory unavailable, using pageable host memory" in out
    assert out.rstrip().endswith("OK")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-device error")
def test_cuda_ring_without_device_raises_clearly():
    if _ext.has_cuda_ring():
        match = r"lightcache._C: no CUDA device \(cudaGetDeviceCount: "
    else:
        match = "built without CUDA"
    with pytest.raises(RuntimeError, match=match):
        RingBuffer(slot_bytes=1024, num_slots=2, device="cuda")


# ---- argument validation: every error names the argument -----------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(slot_bytes=0), ValueError, "slot_bytes must be >= 1"),
        (dict(slot_bytes=1.5), TypeError, "slot_bytes must be an int"),
        (dict(slot_bytes=64, num_slots=0), ValueError, "num_slots must be >= 1"),
        (dict(slot_bytes=64, total_bytes=128), ValueError, "exactly one of slot_bytes and total_bytes"),
        (dict(), ValueError, "exactly one of slot_bytes and total_bytes"),
        (dict(total_bytes=2, num_slots=4), ValueError, "total_bytes"),
        (dict(slot_bytes=64, device="mps"), ValueError, "device must be"),
        (dict(slot_bytes=64, device="nonsense"), ValueError, "device must be"),
        (dict(slot_bytes=64, full_policy="drop"), ValueError, "full_policy must be one of"),
        (dict(slot_bytes=64, pinned="yes"), ValueError, "pinned must be one of"),
        (dict(slot_bytes=64, timeout=-1.0), ValueError, "timeout must be >= 0"),
        (dict(slot_bytes=64, timeout=float("inf")), TypeError, "timeout must be a finite"),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RingBuffer(**kwargs)


def test_call_validation(make_ring):
    r = make_ring(slot_bytes=64, num_slots=2)
    with pytest.raises(TypeError, match="key must be an int, got str"):
        r.store(torch.ones(4), "a")
    with pytest.raises(TypeError, match="key must be an int, got bool"):
        r.store(torch.ones(4), True)
    with pytest.raises(TypeError, match="src must be a torch.Tensor, got list"):
        r.store([1.0], 0)
    with pytest.raises(ValueError, match="src is on meta but ring .* is on cpu"):
        r.store(torch.ones(4, device="meta"), 0)
    with pytest.raises(TypeError, match="src must be a dense"):
        r.store(torch.ones(4).to_sparse(), 0)
    with pytest.raises(ValueError, match=r"src needs 68 bytes .* slot_bytes of ring .* is 64"):
        r.store(torch.ones(17), 0)
    with pytest.raises(ValueError, match="stream must be None for a cpu ring"):
        r.store(torch.ones(4), 0, stream=1)
    r.store(torch.ones(4), 0)
    with pytest.raises(TypeError, match="dst has dtype torch.float16 but key=0 was stored as torch.float32"):
        r.fetch(0, torch.empty(4, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"dst has shape \(2, 2\) but key=0 was stored with shape \(4,\)"):
        r.prefetch(0, torch.empty(2, 2))
    with pytest.raises(ValueError, match="dst must be contiguous"):
        r.store(torch.ones(2, 2), 1)
        r.fetch(1, torch.empty(2, 2).t())
    with pytest.raises(TypeError, match="dst must be a torch.Tensor"):
        r.fetch(0, "dst")
    with pytest.raises(ValueError, match="key=99 is not stored in ring"):
        r.fetch(99)
    with pytest.raises(ValueError, match="key=99 is not stored in ring"):
        r.prefetch(99, torch.empty(4))
    with pytest.raises(TypeError, match="ring must be an int"):
        get_ring("0")


# ---- CUDA ---------------------------------------------------------------------------------


@requires_cuda
def test_cuda_roundtrip_no_host_sync():
    """Store/fetch in a loop on a side compute stream, never synchronising the host inside the
    loop; the outputs (checked at the end) prove the stream-ordering is right."""
    torch.cuda.synchronize()
    compute = torch.cuda.Stream()
    n_iter = 50
    with RingBuffer(slot_bytes=4 << 20, num_slots=4, device="cuda", full_policy="block") as r:
        outs, expects = [], []
        with torch.cuda.stream(compute):
            for i in range(n_iter):
                x = torch.randn(1 << 20, device="cuda") * i  # produced on `compute`
                expects.append(x.sum())
                r.store(x, i % 3)
                dst = torch.empty_like(x)
                r.prefetch(i % 3, dst)
                # Some unrelated compute while the copy runs.
                y = torch.randn(512, 512, device="cuda") @ torch.randn(512, 512, device="cuda")
                r.fetch(i % 3, dst)
                outs.append(dst.sum() + 0 * y.sum())
                r.release(i % 3)
        torch.cuda.synchronize()
        for o, e in zip(outs, expects):
            torch.testing.assert_close(o, e)
        st = r.stats()
        assert st["stores"] == n_iter and st["fetches"] == n_iter and st["device"] == "cuda"


@requires_cuda
def test_cuda_ring_calls_do_not_wait_for_the_gpu():
    # A ~0.2 s kernel sits on the compute stream; store/prefetch/fetch must return long before it
    # ends (they queue stream waits instead of synchronising the host).
    with RingBuffer(slot_bytes=4 << 20, num_slots=2, device="cuda", pinned="require") as r:
        compute = torch.cuda.Stream()
        x = torch.randn(1 << 20, device="cuda")
        dst = torch.empty_like(x)
        torch.cuda.synchronize()
        with torch.cuda.stream(compute):
            t0 = time.perf_counter()
            torch.cuda._sleep(400_000_000)
            r.store(x, 0)
            r.prefetch(0, dst)
            r.fetch(0, dst)
            issued = time.perf_counter() - t0
            out = dst.clone()
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        assert issued < 0.5 * total, (issued, total)
        assert torch.equal(out, x)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_cuda_bytes_roundtrip(dtype):
    with RingBuffer(slot_bytes=1 << 20, num_slots=2, device="cuda") as r:
        assert r.pinned or r.stats()["pinned_note"]
        x = _rand((123, 77), dtype, "cuda")
        r.store(x, 0)
        out = r.fetch(0)
        torch.cuda.synchronize()
        assert _bytes_equal(out.cpu(), x.cpu())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
