"""AnimateDiff: a video UNet (DeepCache); SD's image VAE decodes frame by frame."""

from lightcache.memory.decode import PerFrameSlicer
from lightcache.models.adapter import UNET_BLOCK_LISTS, ModelAdapter
from lightcache.models.registry import ModelFamily, register_family

ANIMATEDIFF = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="animatediff", model_classes=("UNetMotionModel",), block_lists=UNET_BLOCK_LISTS, sample_arg="sample",
            unet=True,
        ),
        slicers={"AutoencoderKL": PerFrameSlicer},
        pipelines=(
            "AnimateDiffControlNetPipeline", "AnimateDiffPAGPipeline", "AnimateDiffPipeline",
            "AnimateDiffSDXLPipeline", "AnimateDiffSparseControlNetPipeline",
            "AnimateDiffVideoToVideoControlNetPipeline", "AnimateDiffVideoToVideoPipeline", "PIAPipeline",
        ),
    )
)
