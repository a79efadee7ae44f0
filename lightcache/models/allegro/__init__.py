"""Allegro: one list of blocks, each returning the hidden states; CFG is one batched ("joint")
call; the latent is (B, C, T, H, W); the pipeline passes rotary tables for the latent grid."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.allegro.decode import AllegroSlicer
from lightcache.models.allegro.layout import AllegroLayout
from lightcache.models.registry import ModelFamily, register_family

ALLEGRO = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="allegro",
            model_classes=("AllegroTransformer3DModel",),
            block_lists=("transformer_blocks",),
            layout=AllegroLayout(),
        ),
        slicers={"AutoencoderKLAllegro": AllegroSlicer},
    )
)
