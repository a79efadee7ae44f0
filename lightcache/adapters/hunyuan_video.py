"""HunyuanVideo: dual-stream blocks, then single-stream blocks; both return (hidden, encoder_hidden)."""

from lightcache.adapters.base import ModelAdapter, register_adapter

HUNYUAN_VIDEO = register_adapter(
    ModelAdapter(
        family="hunyuan_video",
        model_classes=("HunyuanVideoTransformer3DModel",),
        block_lists=("transformer_blocks", "single_transformer_blocks"),
        block_outputs=("hidden_states", "encoder_hidden_states"),
    )
)
