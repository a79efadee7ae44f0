"""EasyAnimate: blocks return (hidden, encoder_hidden); its VAE is AutoencoderKLMagvit."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.easyanimate.chunk import EasyAnimateChunking
from lightcache.models.easyanimate.decode import MagvitSlicer
from lightcache.models.easyanimate.layout import EasyAnimateLayout
from lightcache.models.registry import ModelFamily, register_family

EASYANIMATE = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="easyanimate",
            model_classes=("EasyAnimateTransformer3DModel",),
            block_lists=("transformer_blocks",),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=EasyAnimateLayout(),
        ),
        chunking={"EasyAnimateTransformerBlock": EasyAnimateChunking()},
        slicers={"AutoencoderKLMagvit": MagvitSlicer},
        pipelines=("EasyAnimateControlPipeline", "EasyAnimateInpaintPipeline", "EasyAnimatePipeline"),
    )
)
