"""Wan VACE (WanVACEPipeline): Wan's tiny sizes, 2 main blocks with VACE hints after both (2 VACE
blocks), a control video with a mask (a reference image would add VAE encodes and a latent frame
to every run: left out for time)."""

from tiny_pipelines import _flow_match_scheduler, _pil_image, _Seeder, _text_embeds, _wan_dit, _wan_vae

FAMILY = "wan_vace"


def _frames(s: _Seeder, n: int, size: int = 32):
    return [_pil_image(s, size, size) for _ in range(n)]


def _masks(n: int, size: int = 32):
    """White (regenerate) on the right half, black (keep) on the left, every frame."""
    from PIL import Image

    img = Image.new("RGB", (size, size), (0, 0, 0))
    img.paste((255, 255, 255), (size // 2, 0, size, size))
    return [img.copy() for _ in range(n)]


def build(s: _Seeder):
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    z_dim, text_dim, seq = 4, 16, 16
    vae = _wan_vae(s, z_dim)
    # control channels: inactive + reactive video latents (2 z) and the 8x8 spatial mask (64)
    transformer = _wan_dit(s, WanVACETransformer3DModel, z_dim, text_dim, vace_layers=[0, 1],
                           vace_in_channels=2 * z_dim + 64)
    scheduler = _flow_match_scheduler(shift=3.0)
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    kwargs = dict(
        video=_frames(s, 9),
        mask=_masks(9),
        **_text_embeds(s, seq, text_dim),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=5.0,
    )
    return pipe, kwargs


_s = _Seeder(1)
MATRIX = dict(
    cfg_calls=2,
    variant_extra={"video": _frames(_s, 5), "mask": _masks(5)},
    batch2=False,
    notes="batch 2: WanVACEPipeline refuses more than one conditioning video a call ('Generating with more "
          "than one video is not yet supported')",
)
