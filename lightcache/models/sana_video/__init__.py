"""Sana-Video: one list of ``SanaVideoTransformerBlock`` (linear self-attention, cross-attention,
a temporal-convolution GLU feed-forward), each returning the hidden states; latent
(B, C, T, H, W) (image-to-video: the image's latent is its first frame, with per-token timesteps,
layout.py); the VAE is Wan's (its slicer, found by class) or another registered one.

No feature-chunk spec: the feed-forward convolves over (frames, height, width), so no piece of the
sequence can run alone; under ``MemoryPlan(chunk_size=...)`` the blocks run whole (the
cross-attention query-chunked)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.registry import ModelFamily, register_family
from lightcache.models.sana_video.layout import SanaVideoLayout

SANA_VIDEO = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="sana_video",
            model_classes=("SanaVideoTransformer3DModel",),
            block_lists=("transformer_blocks",),
            layout=SanaVideoLayout(),
        ),
        pipelines=("SanaImageToVideoPipeline", "SanaVideoPipeline"),
    )
)
