"""LTX-Video: one list of blocks, each returning the hidden states; the latent is packed tokens."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.ltx.chunk import LTXChunking
from lightcache.models.ltx.decode import LTXSlicer
from lightcache.models.ltx.layout import LTXLayout
from lightcache.models.registry import ModelFamily, register_family

LTX = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="ltx", model_classes=("LTXVideoTransformer3DModel",), block_lists=("transformer_blocks",),
            layout=LTXLayout(),
        ),
        chunking={"LTXVideoTransformerBlock": LTXChunking()},
        slicers={"AutoencoderKLLTXVideo": LTXSlicer},
        pipelines=("LTXConditionPipeline", "LTXI2VLongMultiPromptPipeline", "LTXImageToVideoPipeline", "LTXPipeline"),
    )
)
