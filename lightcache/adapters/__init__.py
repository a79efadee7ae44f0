"""Model adapters, one file per family. Importing this package registers them all."""

from lightcache.adapters import cogvideox, easyanimate, hunyuan_video, ltx, video_unets, wan  # noqa: F401
from lightcache.adapters.base import ModelAdapter, adapter_for, register_adapter, supported_classes

__all__ = ["ModelAdapter", "adapter_for", "register_adapter", "supported_classes"]
