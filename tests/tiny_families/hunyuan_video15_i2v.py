"""HunyuanVideo 1.5 image-to-video (``HunyuanVideo15ImageToVideoPipeline``): a tiny-pipeline variant
of the ``hunyuan_video15`` registry family (same denoiser, VAE, guider and call embeddings as
tests/tiny_families/hunyuan_video15.py). The encoded image is the condition latent's first frame
(mask 1 there, 0 elsewhere) on the channels at every step, and the SigLIP image tokens are valid
context rows (text-to-video passes them as zeros, masked out).

Offline: the SigLIP vision encoder and its image processor are built from configs (random weights,
32 x 32 input, 16 tokens of width the transformer's ``image_embed_dim``); the text encoders are
skipped as for text-to-video. The pipeline takes one PIL image and derives the video size from it
(its own size buckets of ``transformer.config.target_size``): no height/width arguments.

The family passes the whole matrix as text-to-video: this variant runs the reduced cells
(``cells="reduced"``, tests/tiny_pipelines.py MatrixInfo).
"""

from tiny_families import hunyuan_video15
from tiny_pipelines import _pil_image

FAMILY = "hunyuan_video15_i2v"

# 48 video + 40 context rows a call, the image's 16 now valid: 24 rows a chunk make 4 pieces, two of
# context rows (one all valid, one with the padded rows), at a third of 8 rows' cost
MATRIX = dict(hunyuan_video15.MATRIX, chunk=24, cells="reduced")


def build(s):
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    # the PIL image processor: SiglipImageProcessor is it without torchvision, with a warning
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    t2v, kwargs = hunyuan_video15.build(s)
    image_dim = t2v.transformer.config.image_embed_dim
    s()
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=image_dim, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    ))
    feature_extractor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    pipe = HunyuanVideo15ImageToVideoPipeline(
        **t2v.components, image_encoder=image_encoder, feature_extractor=feature_extractor
    )
    # the size comes from the image (32 x 32: the 32-pixel bucket of target_size 32)
    height, width = kwargs.pop("height"), kwargs.pop("width")
    kwargs["image"] = _pil_image(s, height, width)
    return pipe, kwargs
