"""Video UNets (DeepCache): SVD, AnimateDiff, TextToVideoSD.

The "blocks" of a UNet for the engine are its down blocks, mid block and up blocks in execution
order; DeepCache's skip branch b pairs down_blocks[b] with up_blocks[-(b + 1)].
"""

from lightcache.adapters.base import ModelAdapter, register_adapter

_UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")


def _unet(family: str, cls: str) -> ModelAdapter:
    return register_adapter(
        ModelAdapter(family=family, model_classes=(cls,), block_lists=_UNET_BLOCKS, sample_arg="sample", unet=True)
    )


SVD = _unet("svd", "UNetSpatioTemporalConditionModel")
ANIMATEDIFF = _unet("animatediff", "UNetMotionModel")
TEXT_TO_VIDEO_SD = _unet("text_to_video_sd", "UNet3DConditionModel")
