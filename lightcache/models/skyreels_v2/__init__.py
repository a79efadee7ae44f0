"""SkyReels-V2 (text/image-to-video and diffusion forcing): Wan's architecture in its own classes
(``SkyReelsV2Transformer3DModel`` is not a ``WanTransformer3DModel`` subclass); one list of
blocks, each returning the hidden states. Its VAE is ``AutoencoderKLWan``: Wan's slicer covers it."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.registry import ModelFamily, register_family
from lightcache.models.skyreels_v2.chunk import SkyReelsV2Chunking
from lightcache.models.skyreels_v2.layout import SkyReelsV2Layout

SKYREELS_V2 = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="skyreels_v2", model_classes=("SkyReelsV2Transformer3DModel",), layout=SkyReelsV2Layout()
        ),
        chunking={"SkyReelsV2TransformerBlock": SkyReelsV2Chunking()},
    )
)
