"""EasyAnimate: blocks return (hidden, encoder_hidden)."""

from lightcache.adapters.base import ModelAdapter, register_adapter

EASYANIMATE = register_adapter(
    ModelAdapter(
        family="easyanimate",
        model_classes=("EasyAnimateTransformer3DModel",),
        block_lists=("transformer_blocks",),
        block_outputs=("hidden_states", "encoder_hidden_states"),
    )
)
