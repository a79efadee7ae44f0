"""Device bytes of a whole pipeline call, phase by phase: :class:`DeviceBytes`.

The same counting as the CPU tracker (:class:`lightcache._live_bytes.LiveBytes`: every fresh,
non-aliasing output storage of an aten op is counted from its creation until its storage is freed)
applied to the whole call instead of the stage windows, and only to the storages on the simulated
device (``"meta"`` in a simulation, ``"cpu"`` when a CPU run is measured for comparison). So it
also sees what the stage windows do not: the latents the pipeline allocates, the scheduler's
outputs, the guidance combination, post-processing.

Phases: each op is attributed to the stage the pipeline is in (the stage of lightcache's session:
``encode`` until the scheduler's ``set_timesteps``, ``denoise`` until the VAE decode starts,
``decode`` after it). Host memory: with ``decode_to_host`` the sliced decode writes the video to
host memory; a simulation allocates it on the meta device inside :func:`host_allocation`, which
marks the storage as host, and every op whose tensor inputs are all host storages (the pipeline's
post-processing of that video) makes host storages too. ``peak_all`` counts device and host
together (what a CPU run, where both are one memory, measures).

Speed (``memo=True``, simulations only): torch computes most meta kernels in Python (its
reference decompositions), about a millisecond an op, and a 40-block denoiser repeats the same
ops with the same shapes block after block and call after call. An op whose outputs are all fresh
storages is a function of its arguments' metadata (shapes, strides, dtypes, offsets; on meta there
are no values), so the outputs' metadata is remembered per (op, arguments' metadata) and later
calls get ``empty_strided`` tensors of exactly that metadata. Ops whose outputs alias an input or
each other, or are not tensors, always run. (The memo's keys and entries are lightcache._live_bytes',
which the sliced decode's dry runs use too.)
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from lightcache._live_bytes import _memo_entry, _memo_key, _schema_info

from lightcache.simulate.values import READS

PHASES = ("encode", "denoise", "decode")

_host = threading.local()


@contextlib.contextmanager
def host_allocation():
    """Storages created inside this block are host memory (see the module doc)."""
    _host.depth = getattr(_host, "depth", 0) + 1
    try:
        yield
    finally:
        _host.depth -= 1


class DeviceBytes(TorchDispatchMode):
    """Live bytes on ``device_type`` over a pipeline call, with per-phase peaks.

    ``phase()`` (a callable) names the current phase; ``cache_bytes()`` the device bytes the
    caching store holds now (sampled at each new phase peak)."""

    def __init__(self, device_type: str, phase=lambda: "encode", cache_bytes=lambda: 0, memo=False, values=None):
        super().__init__()
        # a simulation's known values (lightcache.simulate.values.ValueHints): asked before each value
        # read and told each op's output, here rather than in a mode of its own (a mode costs each op)
        self.values = values
        # memo: True (a fresh one), or a dict shared by several counters (the remembered metadata is
        # a function of the op and its arguments' metadata only, so runs may share it)
        self.memo = memo if isinstance(memo, dict) else ({} if memo else None)
        self.memo_hits = 0
        self.device_type = device_type
        self.phase = phase
        self.cache_bytes = cache_bytes
        self.live = 0  # device
        self.live_host = 0  # host-marked storages on the simulated device
        self.peak = {p: 0 for p in PHASES}
        self.peak_all = {p: 0 for p in PHASES}
        self.cache_at_peak = {p: 0 for p in PHASES}
        self._host_ids = set()
        self.live_at = {}  # phase -> device bytes alive at its first op

    def _free(self, nbytes: int, host: bool, key: int) -> None:
        if host:
            self.live_host -= nbytes
            self._host_ids.discard(key)
        else:
            self.live -= nbytes

    def _is_host(self, t) -> bool:
        return id(t.untyped_storage()) in self._host_ids

    def _call(self, func, args, kwargs):
        if self.memo is None:
            return func(*args, **kwargs)
        key = _memo_key(func, args, kwargs)
        if key is None:
            return func(*args, **kwargs)
        hit = self.memo.get(key)
        if hit is not None:
            self.memo_hits += 1
            made = [torch.empty_strided(size, stride, dtype=dtype, device="meta") for size, stride, dtype in hit[1]]
            return made[0] if hit[0] == "one" else tuple(made)
        out = func(*args, **kwargs)
        entry = _memo_entry(func, out, args, kwargs)
        if entry is not None:
            self.memo[key] = entry
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        values = self.values
        answer = values.read(func, args) if values is not None and func in READS else None
        if answer is not None and answer[0] == "args":
            args, answer = answer[1], None
        try:
            out = answer[1] if answer is not None else self._call(func, args, kwargs)
        except RuntimeError as e:
            if self.device_type != "meta" or "is not on the expected device" not in str(e):
                raise
            # host timesteps (a simulation keeps them on the CPU) meeting a device tensor in the
            # pipeline's own arithmetic (SANA-Video I2V: t.expand(mask.shape) * (1 - mask)): on a GPU
            # the timestep is a device tensor already, so it moves here uncounted, as in the denoiser's
            # pre-hook
            args, kwargs = tree_map(_host_to_meta, (args, kwargs))
            out = self._call(func, args, kwargs)
        if values is not None:
            values.after(func, args, kwargs, out)
        info = _schema_info(func)
        if info[1]:  # fresh outputs: the returns without alias annotation
            outs = out if info[0] > 1 else (out,)
            fresh = []
            for i in info[1]:
                o = outs[i]
                if isinstance(o, torch.Tensor):
                    if o.device.type == self.device_type:
                        fresh.append(o)
                elif isinstance(o, (list, tuple)):
                    fresh += [t for t in o if isinstance(t, torch.Tensor) and t.device.type == self.device_type]
        else:
            fresh = ()
        if fresh:
            host = getattr(_host, "depth", 0) > 0
            if not host and self._host_ids:
                ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                       and t.device.type == self.device_type]
                host = bool(ins) and all(self._is_host(t) for t in ins)
            for t in fresh:
                st = t.untyped_storage()
                n = st.nbytes()
                key = id(st)
                if host:
                    self.live_host += n
                    self._host_ids.add(key)
                else:
                    self.live += n
                weakref.finalize(st, self._free, n, host, key)
        p = self.phase()
        if p not in self.live_at:
            self.live_at[p] = self.live - sum(t.untyped_storage().nbytes() for t in fresh if not self._is_host(t))
        if self.live > self.peak[p]:
            self.peak[p] = self.live
            self.cache_at_peak[p] = self.cache_bytes()
        all_live = self.live + self.live_host
        if all_live > self.peak_all[p]:
            self.peak_all[p] = all_live
        return out


def _host_to_meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) and x.device.type == "cpu" else x
