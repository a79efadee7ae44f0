"""Kept for imports of ``lightcache.adapters.base``: the adapter is lightcache.models.adapter."""

from lightcache.models import ModelAdapter, adapter_for, register_adapter, supported_classes

__all__ = ["ModelAdapter", "adapter_for", "register_adapter", "supported_classes"]
