"""Wan 2.1 / 2.2 (T2V, I2V, TI2V): one list of blocks, each returning the hidden states."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.registry import ModelFamily, register_family
from lightcache.models.wan.chunk import WanChunking
from lightcache.models.wan.decode import WanSlicer
from lightcache.models.wan.layout import WanLayout

WAN = register_family(
    ModelFamily(
        adapter=ModelAdapter(family="wan", model_classes=("WanTransformer3DModel",), layout=WanLayout()),
        chunking={"WanTransformerBlock": WanChunking()},
        slicers={"AutoencoderKLWan": WanSlicer},
        presets={"EasyCache": {"threshold": 0.05, "warmup_steps": 10},  # the EasyCache paper's Wan2.1 settings,
                 # measured on the trained Wan proxy (its 50-step sweep: 0.32 of the block FLOPs at 44.5 dB
                 # mean PSNR over 4 conditions x 2 seeds), not on Wan2.1 itself; warm-up and weighting at
                 # ForecastCache's defaults
                 "ForecastCache": {"threshold": 0.2}},
        pipelines=("LucyEditPipeline", "WanImageToVideoPipeline", "WanPipeline", "WanVideoToVideoPipeline"),
    )
)
