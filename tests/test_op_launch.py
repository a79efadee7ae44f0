"""Every Triton launcher launches under its tensor's device guard (``_launch.on_device``).

Triton launches on the *current* CUDA device, not the tensors' one: with several GPUs, a launcher
that forgets the guard runs its kernel on the wrong device. Here (no GPU) each launcher runs under
the interpreter with ``on_device`` replaced by a recording guard and every launched kernel of its
module (``*_kernel``) wrapped, and the test asserts that each launch happened inside the guard,
opened for the op's input. With two or more GPUs the ops also run for real on the second one.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from conftest import HAS_CUDA, TRITON_DEVICE, requires_triton

import lightcache.ops  # noqa: F401

pytestmark = requires_triton


def _inputs(name, device):
    g = torch.Generator().manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g).to(device)

    if name == "reuse":
        x = rnd(4, 40)
        return (x, rnd(4, 40).half() if device == "cpu" else rnd(4, 40).bfloat16(), None), x
    if name == "reuse_fp8":
        from lightcache.kernels.quantize import quantize_fp8

        x = rnd(4, 40)
        q, s = quantize_fp8(rnd(4, 40))
        return (x, q, s), x
    if name == "quantize_fp8":
        x = rnd(5, 33)
        return (x,), x
    if name == "lerp":
        s = rnd(3, 50)
        return (s, rnd(3, 50), 0.25), s
    if name == "rel_l1":
        a = rnd(7, 30)
        return (a, rnd(7, 30)), a
    if name == "lowfreq":
        a = rnd(2, 12, 10)
        return (a, a + 0.1 * rnd(2, 12, 10), 0.3), a
    if name == "ffn":
        x = rnd(2, 9, 16)
        return (x, 0.25 * rnd(32, 16), rnd(32), 0.2 * rnd(8, 32), rnd(8), 4, rnd(2, 1, 8), rnd(2, 9, 8)), x
    if name == "attention":
        q = rnd(1, 11, 2, 32)
        ang = torch.rand(11, 16, generator=g).to(device) * 2 * math.pi
        return (q, rnd(1, 11, 2, 32), rnd(1, 11, 2, 32), 1 + 0.1 * rnd(64), 1 + 0.1 * rnd(64), ang.cos(), ang.sin(),
                1e-6, 4, None), q
    raise AssertionError(name)


# launcher name -> (module, function)
LAUNCHERS = {
    "reuse": ("reuse", "reuse"),
    "reuse_fp8": ("reuse", "reuse"),
    "quantize_fp8": ("quantize", "quantize_fp8"),
    "lerp": ("lerp", "lerp"),
    "rel_l1": ("rel_l1", "rel_l1"),
    "lowfreq": ("lowfreq", "lowfreq_energy"),
    "ffn": ("ffn", "chunked_ffn"),
    "attention": ("attention", "chunked_attention"),
}


class _Recorder:
    def __init__(self):
        self.depth = 0
        self.guarded = []  # tensors each guard was opened for
        self.launches = []  # (kernel name, inside a guard?)

    def on_device(self, t):
        @contextlib.contextmanager
        def guard():
            self.guarded.append(t)
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1

        return guard()


class _Kernel:
    """Stands in for a module-level JITFunction: records whether ``kernel[grid](...)`` runs under a guard."""

    def __init__(self, name, real, rec):
        self.name, self.real, self.rec = name, real, rec

    def __getitem__(self, grid):
        launch = self.real[grid]

        def run(*args, **kwargs):
            self.rec.launches.append((self.name, self.rec.depth > 0))
            return launch(*args, **kwargs)

        return run


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_triton_launch_inside_device_guard(name, monkeypatch):
    import importlib

    from triton.runtime.jit import KernelInterface

    module_name, fn_name = LAUNCHERS[name]
    mod = importlib.import_module(f"lightcache.kernels.{module_name}")
    rec = _Recorder()
    assert hasattr(mod, "on_device"), f"lightcache.kernels.{module_name} does not use the device guard"
    monkeypatch.setattr(mod, "on_device", rec.on_device)
    for attr, value in list(vars(mod).items()):
        # launched kernels are named *_kernel; @triton.jit helpers they call stay as they are
        if isinstance(value, KernelInterface) and attr.endswith("_kernel"):
            monkeypatch.setattr(mod, attr, _Kernel(attr, value, rec))
    args, anchor = _inputs(name, TRITON_DEVICE)
    getattr(mod, fn_name)(*args)
    assert rec.launches, f"{name}: no Triton launch recorded"
    outside = [k for k, inside in rec.launches if not inside]
    assert not outside, f"{name}: launched outside the device guard: {outside}"
    assert any(t is anchor for t in rec.guarded), f"{name}: the guard was not opened for the op's input"


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_ops_run_on_the_tensors_device_not_the_current_one():
    from lightcache import reference as ref

    torch.cuda.set_device(0)
    checks = {
        "reuse": lambda a: (torch.ops.lightcache.reuse(*a), ref.reuse(*(t.cpu() if t is not None else None for t in a))),
        "lerp": lambda a: (torch.ops.lightcache.lerp(*a), ref.lerp(a[0].cpu(), a[1].cpu(), a[2])),
        "rel_l1": lambda a: (torch.ops.lightcache.rel_l1(*a), ref.rel_l1(a[0].cpu(), a[1].cpu())),
        "lowfreq": lambda a: (torch.ops.lightcache.lowfreq_energy(*a), ref.lowfreq_energy(a[0].cpu(), a[1].cpu(), a[2])),
        "ffn": lambda a: (torch.ops.lightcache.chunked_ffn(*a),
                          ref.chunked_ffn(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in a))),
        "attention": lambda a: (torch.ops.lightcache.chunked_attention(*a),
                                ref.chunked_attention(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in a))),
    }
    for name, check in checks.items():
        args, _ = _inputs(name, "cuda:1")
        got, want = check(args)
        assert got.device == torch.device("cuda:1"), name
        torch.testing.assert_close(got.cpu().float(), want.float(), atol=2e-2, rtol=2e-2, msg=name)
