"""CogVideoX: blocks return (hidden, encoder_hidden); CFG is one batched ("joint") call; the latent
is (B, F, C, H, W)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.cogvideox.chunk import CogVideoXChunking
from lightcache.models.cogvideox.decode import CogVideoXSlicer
from lightcache.models.cogvideox.layout import CogVideoXLayout
from lightcache.models.registry import ModelFamily, register_family

COGVIDEOX = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="cogvideox",
            model_classes=("CogVideoXTransformer3DModel",),
            block_lists=("transformer_blocks",),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=CogVideoXLayout(),
        ),
        chunking={"CogVideoXBlock": CogVideoXChunking()},
        slicers={"AutoencoderKLCogVideoX": CogVideoXSlicer},
        pipelines=(
            "CogVideoXFunControlPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXPipeline",
            "CogVideoXVideoToVideoPipeline",
        ),
    )
)
