"""lightcache: memory-safe caching accelerators for video diffusion models.

    import lightcache
    lightcache.enable(pipe, policy=lightcache.EasyCache(threshold=0.05))
    video = pipe(...).frames
    lightcache.report(pipe); lightcache.disable(pipe)

`import lightcache.ops` registers the compiled/Triton ops as ``torch.ops.lightcache.*``.
The pipeline-facing API needs diffusers and is imported on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "enable": "lightcache.api",
    "disable": "lightcache.api",
    "report": "lightcache.api",
    "EasyCache": "lightcache.policies",
    "PreciseCache": "lightcache.policies",
    "DeepCache": "lightcache.policies",
    "MemoryPlan": "lightcache.memory",
    "plan": "lightcache.simulate",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        import lightcache.ops  # noqa: F401  (policies call torch.ops.lightcache.*)

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightcache' has no attribute {name!r}")
