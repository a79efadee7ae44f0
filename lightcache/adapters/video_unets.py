"""Video UNets (DeepCache): SVD, AnimateDiff, TextToVideoSD.

The "blocks" of a UNet for the engine are its down blocks, mid block and up blocks in execution
order; DeepCache's skip branch b pairs down_blocks[b] with up_blocks[-(b + 1)].
"""

from lightcache.adapters.base import ModelAdapter, register_adapter

_UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")

SVD = register_adapter(
    ModelAdapter(
        family="svd",
        model_classes=("UNetSpatioTemporalConditionModel",),
        block_lists=_UNET_BLOCKS,
        sample_arg="sample",
        unet=True,
    )
)
ANIMATEDIFF = register_adapter(
    ModelAdapter(
        family="animatediff", model_classes=("UNetMotionModel",), block_lists=_UNET_BLOCKS, sample_arg="sample", unet=True
    )
)
TEXT_TO_VIDEO_SD = register_adapter(
    ModelAdapter(
        family="text_to_video_sd",
        model_classes=("UNet3DConditionModel",),
        block_lists=_UNET_BLOCKS,
        sample_arg="sample",
        unet=True,
    )
)
