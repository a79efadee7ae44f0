"""SkyReels-V2 (text/image-to-video and diffusion forcing): Wan's architecture in its own classes
(``SkyReelsV2Transformer3DModel`` is not a ``WanTransformer3DModel`` subclass); one list of
blocks, each returning the hidden states. Its VAE is ``AutoencoderKLWan``: Wan's slicer covers it.

Diffusion forcing loops over the rows of its own per-frame timestep matrix, one matrix per
long-video segment (asynchronous mode, ``ar_step > 0``, has more rows than the scheduler has
timesteps): lightcache's steps are those rows, each segment a run (lightcache/engine.py
``_RUN_METHODS``; tests/test_skyreels_df_async.py)."""

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
