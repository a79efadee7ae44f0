"""What this lightcache installation can do: ``python -m lightcache.info`` (or ``lightcache info``).

Prints one ``name: value`` line per fact: versions, the compiled ring buffer (CPU/CUDA), Triton,
the GPU (``gpu: no GPU ...`` where torch sees none), and whether pinned host memory works under
the current memlock limit.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import resource
import sys

__all__ = ["collect", "format_info", "main"]

_PROBE_BYTES = 1 << 20


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memlock() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"


def collect() -> dict[str, str]:
    """The facts as an ordered dict of strings (what :func:`main` prints)."""
    import lightcache
    from lightcache import _ext

    info: dict[str, str] = {}
    info["lightcache"] = lightcache.__version__
    info["python"] = f"{platform.python_version()} ({sys.executable})"
    try:
        import torch

        cuda = torch.version.cuda or "none"
        info["torch"] = f"{torch.__version__} (CUDA build: {cuda})"
        gpu = torch.cuda.is_available()
        if gpu:
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            info["gpu"] = f"yes: {names}"
        elif torch.version.cuda is None:
            info["gpu"] = "no GPU (this torch is a CPU-only build): lightcache runs its CPU reference kernels"
        else:
            info["gpu"] = "no GPU (torch.cuda.is_available() is False): lightcache runs its CPU reference kernels"
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        info["torch"] = f"not importable ({exc})"
        info["gpu"] = "unknown (torch missing)"
    tv = _version("triton")
    if tv is not None and importlib.util.find_spec("triton") is not None:
        info["triton"] = f"yes, {tv}"
    else:
        info["triton"] = "no (CUDA kernels of lightcache.ops need it; CPU uses the torch reference)"
    if _ext.C is None:
        info["ring buffer (CPU)"] = f"no: lightcache._C did not import ({_ext.import_error()})"
        info["ring buffer (CUDA)"] = "no: lightcache._C did not import"
    else:
        info["ring buffer (CPU)"] = "yes (lightcache._C)"
        if _ext.has_cuda_ring():
            info["ring buffer (CUDA)"] = "compiled"
        else:
            note = _ext.build_note()
            info["ring buffer (CUDA)"] = "not compiled" + (f" ({note})" if note else "")
    info["cuda device"] = _ext.cuda_device_status()
    if _ext.C is None:
        info["pinned memory"] = f"unknown (lightcache._C missing); memlock limit {_memlock()}"
    else:
        ok, note = _ext.C.probe_pinned(_PROBE_BYTES)
        verdict = "works (mlock of 1 MiB)" if ok else f"NOT available: {note}"
        info["pinned memory"] = f"{verdict}; memlock limit {_memlock()}"
    return info


def format_info(info: dict[str, str] | None = None) -> str:
    """The facts as aligned ``name: value`` lines (``info``: from :func:`collect` by default)."""
    info = collect() if info is None else info
    width = max(len(k) for k in info)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in info.items())


def main(argv: list[str] | None = None) -> int:
    """``lightcache info``: print the facts (command output, hence print)."""
    print(format_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
