"""Wan 2.1 / 2.2 (T2V, I2V, TI2V): one list of blocks, each returning the hidden states."""

from lightcache.adapters.base import ModelAdapter, register_adapter

WAN = register_adapter(ModelAdapter(family="wan", model_classes=("WanTransformer3DModel",)))
