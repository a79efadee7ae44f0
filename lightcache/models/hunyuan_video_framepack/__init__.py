"""HunyuanVideo Framepack: HunyuanVideo's dual- and single-stream blocks (their chunking specs and
HunyuanVideo's VAE slicer are that family's entries, found by class), over the packed sequence of
clean history tokens then the section's noisy tokens; the layout makes the trial's history and
frame indices match a pooled latent."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.hunyuan_video import HUNYUAN_VIDEO
from lightcache.models.hunyuan_video_framepack.layout import FramepackLayout
from lightcache.models.registry import ModelFamily, register_family

HUNYUAN_VIDEO_FRAMEPACK = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="hunyuan_video_framepack",
            model_classes=("HunyuanVideoFramepackTransformer3DModel",),
            block_lists=("transformer_blocks", "single_transformer_blocks"),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=FramepackLayout(),
        ),
        # the same spec objects as hunyuan_video's (registering them again changes nothing)
        chunking={k: HUNYUAN_VIDEO.chunking[k]
                  for k in ("HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock")},
        slicers={"AutoencoderKLHunyuanVideo": HUNYUAN_VIDEO.slicers["AutoencoderKLHunyuanVideo"]},
    )
)
