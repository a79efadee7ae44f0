"""CogVideoX: blocks return (hidden, encoder_hidden); CFG is one batched ("joint") call."""

from lightcache.adapters.base import ModelAdapter, register_adapter

COGVIDEOX = register_adapter(
    ModelAdapter(
        family="cogvideox",
        model_classes=("CogVideoXTransformer3DModel",),
        block_lists=("transformer_blocks",),
        block_outputs=("hidden_states", "encoder_hidden_states"),
    )
)
