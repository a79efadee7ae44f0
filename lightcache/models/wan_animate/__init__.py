"""Wan Animate (``WanAnimateTransformer3DModel``, not a ``WanTransformer3DModel`` subclass): Wan's
blocks (its module's own copy of ``WanTransformerBlock``, same name and code) in one list; a face
adapter (cross-attention to the face video's motion features) is added to the hidden states after
every ``inject_face_latents_blocks``-th block, outside the block, so a block's residual
D_j = out_j - in_j holds no face term and a reused block gets this call's face term added as a
computed one does. The latent is (B, 2C + 4, T + 1, H, W): frame 0 is the character image's,
followed by the segment's T frames; the pose latents (T frames) are added to frames 1.. after the
patch embedding. Its VAE is ``AutoencoderKLWan``: Wan's slicer covers it.

Chunking: the blocks' class name is Wan's, so the lookup (by name) finds Wan's spec; Wan Animate's
attention processor is its own class (the same code as Wan's ``WanAttnProcessor``), which Wan's
spec takes too (``WanChunking.also_processors``).
"""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.registry import ModelFamily, register_family
from lightcache.models.wan import WAN
from lightcache.models.wan_animate.layout import WanAnimateLayout

WAN_ANIMATE = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="wan_animate", model_classes=("WanAnimateTransformer3DModel",), layout=WanAnimateLayout()
        ),
        chunking={"WanTransformerBlock": WAN.chunking["WanTransformerBlock"]},  # its blocks' class name is Wan's
    )
)
