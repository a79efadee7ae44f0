"""Ring-buffer round trip (store + fetch of one tensor) vs. a plain copy through a host buffer.

* lightcache: ``ring.store(x, k)`` then ``ring.fetch(k, dst)`` (D2H into a pinned slot, H2D back;
  on CPU a memcpy each way, on the ring's worker thread above 1 MiB, on the caller's at most 1 MiB;
  storing the same key again frees its slot first).
* reference: the same two copies with torch: ``host.copy_(x, non_blocking=True)`` then
  ``dst.copy_(host, non_blocking=True)`` through a preallocated (pinned on CUDA) host tensor.

extra_info: bytes (both directions), GB/s, and for the ring whether its slab is pinned.
On CPU the ring copies on one worker thread while torch's copy_ uses its intra-op threads: on an
oversubscribed machine (2 shared cores here) the reference is slowed by thread contention, so read
the CPU numbers as a protocol-overhead check, not a bandwidth claim.
Run: pytest benchmarks/bench_ring.py --benchmark-only -q
"""

import pytest
import torch
from conftest import BENCH_DEVICES, sync

from lightcache import _ext
from lightcache.ring import RingBuffer

pytestmark = pytest.mark.skipif(not _ext.has_cpu_ring(), reason=f"lightcache._C missing: {_ext.import_error()}")

# CPU: sizes that stay quick on 2 shared cores. CUDA: up to a 256 MiB feature map.
SIZES = {"cpu": [1 << 20, 16 << 20], "cuda": [16 << 20, 256 << 20]}


def _params():
    return [(d, n) for d in BENCH_DEVICES for n in SIZES[d]]


def _record(benchmark, nbytes, **extra):
    info = dict(bytes=int(nbytes), **extra)
    if benchmark.stats is not None:
        info["GB/s"] = nbytes / benchmark.stats.stats.mean / 1e9
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("device, nbytes", _params())
def test_ring_roundtrip(benchmark, device, nbytes):
    x = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(x)
    # "prefer": a too-small memlock limit shows up as pinned=False in extra_info, not a failure.
    with RingBuffer(slot_bytes=nbytes, num_slots=2, device=device, pinned="prefer") as ring:
        ring.store(x, 0)
        ring.fetch(0, dst)
        sync(device)
        assert torch.equal(dst, x)

        def run():
            ring.store(x, 0)
            ring.fetch(0, dst)
            sync(device)

        benchmark(run)
        _record(benchmark, 2 * nbytes, impl="lightcache", pinned=ring.pinned)


@pytest.mark.parametrize("device, nbytes", _params())
def test_copy_reference(benchmark, device, nbytes):
    x = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(x)
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=(device == "cuda"))

    def run():
        host.copy_(x, non_blocking=True)
        dst.copy_(host, non_blocking=True)
        sync(device)

    run()
    assert torch.equal(dst, x)
    benchmark(run)
    _record(benchmark, 2 * nbytes, impl="torch copy_", pinned=host.is_pinned() if device == "cuda" else False)
