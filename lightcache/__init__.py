"""lightcache: memory-safe caching accelerators for video diffusion models.

`import lightcache.ops` registers the compiled/Triton ops as ``torch.ops.lightcache.*``.
"""

__version__ = "0.1.0"
