"""lightcache: memory-safe caching accelerators for video diffusion models.

    import lightcache
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.05))
    video = pipe(...).frames
    print(lightcache.report(pipe)); lightcache.history(pipe); lightcache.disable(pipe)

`import lightcache.ops` registers the compiled/Triton ops as ``torch.ops.lightcache.*``.
The pipeline-facing API needs diffusers and is imported on first use. Messages go to the
``logging.getLogger("lightcache")`` logger (INFO on enable; warnings stay ``warnings.warn``).
"""

import logging as _logging

__version__ = "0.1.0"

# a library logs, the application decides where it goes (no output unless configured)
_logging.getLogger("lightcache").addHandler(_logging.NullHandler())

_LAZY = {
    "enable": "lightcache.api",
    "disable": "lightcache.api",
    "report": "lightcache.api",
    "history": "lightcache.api",
    "CacheStackingError": "lightcache.guard",
    "EasyCache": "lightcache.policies",
    "ForecastCache": "lightcache.policies",
    "PreciseCache": "lightcache.policies",
    "DeepCache": "lightcache.policies",
    "MemoryPlan": "lightcache.memory",
    "plan": "lightcache.simulate",
    "supported": "lightcache.models.support",
    "calibrate": "lightcache.calibrate",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        import lightcache.ops  # noqa: F401  (policies call torch.ops.lightcache.*)

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightcache' has no attribute {name!r}")
