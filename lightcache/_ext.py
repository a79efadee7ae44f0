"""Tolerant, explicit loading of the compiled module ``lightcache._C``.

Importing lightcache never fails because ``_C`` is missing or broken: this module records the
import error, and the features that need ``_C`` raise a RuntimeError quoting it (nothing falls
back silently). Use :func:`has_cpu_ring`, :func:`has_cuda_ring` and :func:`cuda_device_status`
to ask what is available.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

__all__ = [
    "C",
    "_C",
    "import_error",
    "has_cpu_ring",
    "has_cuda_ring",
    "cuda_device_status",
    "require",
    "build_note",
]

C: Optional[ModuleType]
_IMPORT_ERROR: Optional[str]

try:
    from lightcache import _C as C  # type: ignore[attr-defined]

    _IMPORT_ERROR = None
except ImportError as exc:  # not built, or built for another Python/ABI
    C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_C = C  # the same module (or None), under its own name


def import_error() -> Optional[str]:
    """Why ``lightcache._C`` could not be imported, or None when it loaded."""
    return _IMPORT_ERROR


def has_cpu_ring() -> bool:
    """The compiled CPU ring buffer is available (it is part of every build of ``_C``)."""
    return C is not None


def has_cuda_ring() -> bool:
    """``_C`` was compiled with the CUDA copy engine (says nothing about a device being present)."""
    return C is not None and bool(getattr(C, "cuda_compiled", False))


def build_note() -> str:
    return "" if C is None else str(getattr(C, "build_note", ""))


def cuda_device_status() -> str:
    """One line: what the compiled CUDA ring buffer sees, e.g. ``"1 device(s) (runtime 13.0,
    driver 13.0)"`` or ``"no CUDA device (cudaGetDeviceCount: ...)"``."""
    if C is None:
        return f"unavailable: lightcache._C did not import ({_IMPORT_ERROR})"
    if not has_cuda_ring():
        note = build_note()
        return "not compiled: lightcache._C was built without CUDA" + (f" ({note})" if note else "")
    count, err = C.cuda_device_count()
    runtime, driver = C.cuda_versions()
    if err:
        return f"no CUDA device (cudaGetDeviceCount: {err})"
    if count == 0:
        return "no CUDA device (cudaGetDeviceCount: 0 devices)"
    return f"{count} device(s) (CUDA runtime {_cuda_ver(runtime)}, driver {_cuda_ver(driver)})"


def _cuda_ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def require(feature: str = "the ring buffer") -> ModuleType:
    """``_C`` or a RuntimeError saying why it is unavailable."""
    if C is None:
        raise RuntimeError(
            f"{feature} needs the compiled module lightcache._C, which did not import ({_IMPORT_ERROR}). "
            "Reinstall lightcache (pip install . builds it; a C++ compiler, cmake and ninja are needed)."
        )
    return C
