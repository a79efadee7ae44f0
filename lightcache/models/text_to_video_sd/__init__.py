"""TextToVideoSD (ModelScope): a video UNet (DeepCache); SD's image VAE decodes frame by frame."""

from lightcache.memory.decode import PerFrameSlicer
from lightcache.models.adapter import UNET_BLOCK_LISTS, ModelAdapter
from lightcache.models.registry import ModelFamily, register_family

TEXT_TO_VIDEO_SD = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="text_to_video_sd", model_classes=("UNet3DConditionModel",), block_lists=UNET_BLOCK_LISTS,
            sample_arg="sample", unet=True,
        ),
        slicers={"AutoencoderKL": PerFrameSlicer},
        pipelines=("TextToVideoSDPipeline", "VideoToVideoSDPipeline"),
    )
)
