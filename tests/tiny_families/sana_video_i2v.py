"""Sana-Video image-to-video (``SanaImageToVideoPipeline``): a tiny-pipeline variant of the
``sana_video`` registry family (same denoiser, Wan VAE and call embeddings as
tests/tiny_families/sana_video.py, flow matching as the pipeline asks). The encoded image is the
latent's first frame, kept as is at every step (the scheduler steps frames 1:), and the timestep is
per token, (B, 1, T, H, W) over the patch grid with 0 on the first frame: a pooled trial resamples
it (lightcache/models/sana_video/layout.py).

Offline: as ``sana_video``; the image goes through the VAE. The family passes the whole matrix as
text-to-video: this variant runs the reduced cells (``cells="reduced"``, tests/tiny_pipelines.py
MatrixInfo).
"""

from tiny_families import sana_video
from tiny_pipelines import _pil_image

FAMILY = "sana_video_i2v"

MATRIX = dict(sana_video.MATRIX, cells="reduced")


def build(s):
    from diffusers import SanaImageToVideoPipeline

    t2v, kwargs = sana_video.build(s)
    pipe = SanaImageToVideoPipeline(**t2v.components)
    # one PIL image: a tensor image batch would be repeated once more per prompt by the pipeline
    kwargs["image"] = _pil_image(s, kwargs["height"], kwargs["width"])
    return pipe, kwargs
