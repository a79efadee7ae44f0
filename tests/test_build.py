"""The compiled module lightcache._C as built by `pip install .`: it imports (without torch), has the
CUDA engine when nvcc was available, fails clearly without a GPU, and lightcache.info reports it."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import HAS_CUDA

from lightcache import _ext

# subprocesses run from tests/, so `python -c` imports the installed lightcache, not the source
# tree's (which has no compiled _C) from the current directory
HERE = os.path.dirname(os.path.abspath(__file__))


def _nvcc_available():
    """The same search setup.py does at build time."""
    if os.environ.get("LIGHTCACHE_CUDA", "").strip().lower() in ("0", "off", "false", "no"):
        return False
    cands = [os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    cands += [os.path.join(os.environ[v], "bin", "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    return any(c and os.path.isfile(c) and os.access(c, os.X_OK) for c in cands)


def _run(code, **kw):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=HERE, **kw)


def test_compiled_module_imports():
    assert _ext.C is not None, f"lightcache._C did not import: {_ext.import_error()}"
    assert _ext.import_error() is None
    assert _ext.has_cpu_ring()
    assert isinstance(_ext.C.cuda_compiled, bool)


def test_cuda_compiled_when_nvcc_was_found():
    if not _nvcc_available():
        pytest.skip("no nvcc here: the CPU-only module is expected")
    assert _ext.C.cuda_compiled, f"nvcc is available but _C was built without CUDA ({_ext.C.build_note!r})"
    assert _ext.has_cuda_ring()


def test_module_loads_without_torch():
    # No libtorch link, no torch import: the same build serves any torch version.
    proc = _run("import sys; import lightcache._C as C; assert 'torch' not in sys.modules; print(C.cuda_compiled)")
    assert proc.returncode == 0, proc.stderr
    readelf = shutil.which("readelf")
    if readelf:
        dyn = subprocess.run([readelf, "-d", _ext.C.__file__], capture_output=True, text=True).stdout
        needed = [line for line in dyn.splitlines() if "(NEEDED)" in line]
        assert needed, dyn
        for lib in ("libtorch", "libc10", "libcudart", "libcuda.so"):
            assert not any(lib in line for line in needed), f"_C links {lib}: {needed}"


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-device path")
def test_cuda_without_device_is_a_clear_error():
    status = _ext.cuda_device_status()
    if not _ext.has_cuda_ring():
        assert status.startswith("not compiled")
        pytest.skip("CPU-only build")
    assert status.startswith("no CUDA device (cudaGetDeviceCount: "), status
    count, err = _ext.C.cuda_device_count()
    assert count == 0 and err
    with pytest.raises(RuntimeError, match=r"^lightcache._C: no CUDA device \(cudaGetDeviceCount: .+\)$"):
        _ext.C.Ring("cuda", 1024, 2)
    with pytest.raises(_ext.C.CudaUnavailableError):
        _ext.C.Ring("cuda", 1024, 2, "error", 1.0, "prefer", 0)


def test_tolerant_loading_when_C_is_missing():
    code = (
        "import sys; sys.modules['lightcache._C'] = None\n"
        "from lightcache import _ext\n"
        "assert _ext.C is None and not _ext.has_cpu_ring() and not _ext.has_cuda_ring()\n"
        "assert 'ImportError' in _ext.import_error() or 'ModuleNotFoundError' in _ext.import_error()\n"
        "print(_ext.cuda_device_status())\n"
        "from lightcache.ring import RingBuffer, RingFullError\n"
        "try:\n"
        "    RingBuffer(slot_bytes=64)\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("unavailable: lightcache._C did not import")
    assert "RAISED lightcache.ring.RingBuffer needs the compiled module lightcache._C" in proc.stdout


def test_info_command():
    proc = subprocess.run([sys.executable, "-m", "lightcache.info"], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in (
        "lightcache:",
        "python:",
        f"torch:              {torch.__version__}",
        "gpu:",
        "triton:",
        "ring buffer (CPU):  yes (lightcache._C)",
        "ring buffer (CUDA): ",
        "cuda device:",
        "pinned memory:",
        "memlock limit",
    ):
        assert line in out, f"{line!r} missing from:\n{out}"
    if _ext.has_cuda_ring():
        assert "ring buffer (CUDA): compiled" in out
    if not HAS_CUDA:
        assert "gpu:                no" in out


def test_cli_info(capsys):
    from lightcache import cli

    assert cli.main(["info"]) == 0
    assert "ring buffer (CPU):" in capsys.readouterr().out
    assert cli.main([]) == 2  # no subcommand: help, non-zero
