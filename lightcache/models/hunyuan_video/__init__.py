"""HunyuanVideo: dual-stream blocks, then single-stream blocks; both return (hidden, encoder_hidden)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.hunyuan_video.chunk import (
    HunyuanVideoChunking,
    HunyuanVideoSingleChunking,
    HunyuanVideoTokenReplaceSingleChunking,
)
from lightcache.models.hunyuan_video.decode import HunyuanVideoSlicer
from lightcache.models.hunyuan_video.layout import HunyuanVideoLayout
from lightcache.models.registry import ModelFamily, register_family

_DUAL = HunyuanVideoChunking()

HUNYUAN_VIDEO = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="hunyuan_video",
            model_classes=("HunyuanVideoTransformer3DModel",),
            block_lists=("transformer_blocks", "single_transformer_blocks"),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=HunyuanVideoLayout(),
        ),
        chunking={
            "HunyuanVideoTransformerBlock": _DUAL,
            "HunyuanVideoTokenReplaceTransformerBlock": _DUAL,
            "HunyuanVideoSingleTransformerBlock": HunyuanVideoSingleChunking(),
            "HunyuanVideoTokenReplaceSingleTransformerBlock": HunyuanVideoTokenReplaceSingleChunking(),
        },
        slicers={"AutoencoderKLHunyuanVideo": HunyuanVideoSlicer},
        presets={"EasyCache": {"threshold": 0.025, "warmup_steps": 5}},  # the EasyCache paper's settings,
        pipelines=("HunyuanSkyreelsImageToVideoPipeline", "HunyuanVideoImageToVideoPipeline", "HunyuanVideoPipeline"),
    )
)
