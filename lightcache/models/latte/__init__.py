"""Latte: spatial and temporal transformer blocks interleaved (spatial block i, then temporal block
i); CFG is one batched ("joint") call; the latent is (B, C, T, H, W); SD's image VAE decodes frame
by frame (its per-frame slicer is registered by the animatediff entry)."""

from lightcache.models.latte.adapter import LatteAdapter
from lightcache.models.latte.layout import LatteLayout
from lightcache.models.registry import ModelFamily, register_family

# No feature-chunk spec: Latte's blocks are diffusers' generic BasicTransformerBlock, which keeps
# the generic FFN + query-chunked attention hooks.
LATTE = register_family(
    ModelFamily(
        adapter=LatteAdapter(
            family="latte",
            model_classes=("LatteTransformer3DModel",),
            block_lists=("transformer_blocks", "temporal_transformer_blocks"),
            layout=LatteLayout(),
        ),
    )
)
