"""HunyuanVideo 1.5: one stack of dual-stream blocks (``HunyuanVideo15TransformerBlock``, returning
(hidden, encoder_hidden)); latent (B, C, T, H, W) with the condition latent and mask concatenated
on the channels (zeros for text-to-video; the image's latent on the first frame, mask 1 there, for
image-to-video, whose SigLIP image tokens are context rows). Feature chunk: chunk.py; its own
VAE's sliced decode is inexact (decode.py)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.hunyuan_video15.chunk import HunyuanVideo15Chunking
from lightcache.models.hunyuan_video15.decode import HunyuanVideo15Slicer
from lightcache.models.hunyuan_video15.layout import HunyuanVideo15Layout
from lightcache.models.registry import ModelFamily, register_family

HUNYUAN_VIDEO15 = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="hunyuan_video15",
            model_classes=("HunyuanVideo15Transformer3DModel",),
            block_lists=("transformer_blocks",),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=HunyuanVideo15Layout(),
        ),
        chunking={"HunyuanVideo15TransformerBlock": HunyuanVideo15Chunking()},
        slicers={"AutoencoderKLHunyuanVideo15": HunyuanVideo15Slicer},
        pipelines=("HunyuanVideo15ImageToVideoPipeline", "HunyuanVideo15Pipeline"),
    )
)
