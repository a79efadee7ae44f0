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
        # measured on the trained CogVideoX proxy (lightcache/proxy, its 50-step sweep: 0.42 of the
        # block FLOPs at 54.0 dB mean PSNR over 4 conditions x 2 seeds), not on CogVideoX itself
        presets={"ForecastCache": {"threshold": 0.2}},
        pipelines=(
            "CogVideoXFunControlPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXPipeline",
            "CogVideoXVideoToVideoPipeline",
        ),
    )
)
