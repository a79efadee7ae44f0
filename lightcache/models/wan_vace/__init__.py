"""Wan VACE (``WanVACETransformer3DModel``, not a ``WanTransformer3DModel`` subclass): Wan's main
blocks (``WanTransformerBlock``: Wan's chunk spec covers them by class) plus ``vace_blocks``, which
run first, on the control latents, and give one hint per VACE layer; the model adds hint k to the
hidden states *after* main block ``vace_layers[k]`` returns, outside the block.

The engine's blocks are the main blocks only. Block-level caching stays correct with the hints:
a block's residual D_j = out_j - in_j is taken at the block's own boundary, so it holds no hint;
a reused block returns in_j + D_j and the model then adds this call's fresh hint, as it does to a
computed block's output (any main block may be reused, hinted or not). The VACE blocks are not
engine blocks (their output is a (hint, control state) pair, not an update of their inputs): they
run in every computed denoiser call (skipped only with the whole call, by step-level reuse), and a
chunk plan does not split them (they run with their attention whole). Its VAE is
``AutoencoderKLWan``: Wan's slicer covers it.
"""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.registry import ModelFamily, register_family
from lightcache.models.wan import WAN
from lightcache.models.wan_vace.layout import WanVACELayout

WAN_VACE = register_family(
    ModelFamily(
        adapter=ModelAdapter(family="wan_vace", model_classes=("WanVACETransformer3DModel",), layout=WanVACELayout()),
        chunking={"WanTransformerBlock": WAN.chunking["WanTransformerBlock"]},  # its main blocks are Wan's
    )
)
