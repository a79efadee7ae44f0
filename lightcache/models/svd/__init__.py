"""Stable Video Diffusion: a video UNet (DeepCache) and the temporal-decoder VAE. The UNet's latent
is (B, F, C, H, W)."""

from lightcache.models.adapter import UNET_BLOCK_LISTS, ModelAdapter
from lightcache.models.layout import FramesFirstLayout
from lightcache.models.registry import ModelFamily, register_family
from lightcache.models.svd.decode import TemporalDecoderSlicer

SVD = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="svd", model_classes=("UNetSpatioTemporalConditionModel",), block_lists=UNET_BLOCK_LISTS,
            sample_arg="sample", unet=True, layout=FramesFirstLayout(),
        ),
        slicers={"AutoencoderKLTemporalDecoder": TemporalDecoderSlicer},
        pipelines=("StableVideoDiffusionPipeline",),
    )
)
