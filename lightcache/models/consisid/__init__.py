"""ConsisID: CogVideoX's blocks (``ConsisIDBlock`` is CogVideoX's block without attention kwargs:
same processor, same streams) returning (hidden, encoder_hidden); the face-identity
cross-attentions run between blocks, outside them, so a reused block's output still gets the
identity added; CFG is one batched ("joint") call; the latent is (B, F, C, H, W) with the image
latents on the channels; its VAE is CogVideoX's (registered by the cogvideox entry)."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.cogvideox.chunk import CogVideoXChunking
from lightcache.models.cogvideox.decode import CogVideoXSlicer
from lightcache.models.consisid.layout import ConsisIDLayout
from lightcache.models.registry import ModelFamily, register_family

CONSISID = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="consisid",
            model_classes=("ConsisIDTransformer3DModel",),
            block_lists=("transformer_blocks",),
            block_outputs=("hidden_states", "encoder_hidden_states"),
            layout=ConsisIDLayout(),
        ),
        chunking={"ConsisIDBlock": CogVideoXChunking()},
        slicers={"AutoencoderKLCogVideoX": CogVideoXSlicer},  # CogVideoX's VAE: the same entry, named here too
        pipelines=("ConsisIDPipeline",),
    )
)
