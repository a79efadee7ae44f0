"""Model adapters: re-exported from the model-family registry (lightcache.models), where each
family's adapter lives in its own folder next to its chunking spec and VAE slicer."""

from lightcache.models import ModelAdapter, adapter_for, register_adapter, supported_classes

__all__ = ["ModelAdapter", "adapter_for", "register_adapter", "supported_classes"]
