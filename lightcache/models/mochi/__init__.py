"""Mochi: blocks return (hidden, encoder_hidden); CFG is one batched ("joint") call; the latent is
(B, C, T, H, W); its VAE is AutoencoderKLMochi (causal in time)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.mochi.decode import MochiSlicer
from lightcache.models.mochi.layout import MochiLayout
from lightcache.models.registry import ModelFamily, register_family

# No feature-chunk spec: Mochi's processor runs each batch item separately over its own unpadded
# text tokens (the prompt mask decides how many), so its blocks keep the generic FFN + query-chunked
# attention hooks.
MOCHI = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="mochi",
            model_classes=("MochiTransformer3DModel",),
            block_lists=("transformer_blocks",),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=MochiLayout(),
        ),
        slicers={"AutoencoderKLMochi": MochiSlicer},
    )
)
