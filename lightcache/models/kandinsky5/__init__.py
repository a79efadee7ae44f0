"""Kandinsky 5 (T2V / I2V): text blocks (``Kandinsky5TransformerEncoderBlock``, on the text alone)
then visual blocks (``Kandinsky5TransformerDecoderBlock``: self-attention, cross-attention to the
text, FFN), each returning its stream. The engine's blocks are the visual blocks (the text blocks
do not see the video and run whenever the denoiser computes); latent channels last (layout.py).
HunyuanVideo's VAE (its slicer, found by class). No feature-chunk spec."""

from lightcache.models.adapter import ModelAdapter
from lightcache.models.kandinsky5.layout import Kandinsky5Layout
from lightcache.models.registry import ModelFamily, register_family

KANDINSKY5 = register_family(
    ModelFamily(
        adapter=ModelAdapter(
            family="kandinsky5",
            model_classes=("Kandinsky5Transformer3DModel",),
            block_lists=("visual_transformer_blocks",),
            block_outputs=("visual_embed",),
            layout=Kandinsky5Layout(),
        ),
    )
)
