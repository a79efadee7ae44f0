"""LTX-2: one list of audio-video blocks, each returning (video hidden states, audio hidden states);
the denoiser returns two predictions, video (the sample) and audio (``audio_sample``, a further
output stream that follows the video's decisions)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.ltx2.decode import LTX2Slicer
from lightcache.models.ltx2.layout import LTX2Layout
from lightcache.models.registry import ModelFamily, register_family

LTX2 = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="ltx2",
            model_classes=("LTX2VideoTransformer3DModel",),
            block_lists=("transformer_blocks",),
            block_outputs=("hidden_states", "audio_hidden_states"),
            layout=LTX2Layout(),
            extra_outputs=(("audio_hidden_states", "audio_sample"),),
        ),
        slicers={"AutoencoderKLLTX2Video": LTX2Slicer},
        pipelines=("LTX2Pipeline",),
    )
)
