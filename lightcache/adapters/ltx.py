"""LTX-Video: one list of blocks, each returning the hidden states."""

from lightcache.adapters.base import ModelAdapter, register_adapter

LTX = register_adapter(
    ModelAdapter(family="ltx", model_classes=("LTXVideoTransformer3DModel",), block_lists=("transformer_blocks",))
)
