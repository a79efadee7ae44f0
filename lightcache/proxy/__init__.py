"""Small proxy video-diffusion models trained on procedural clips, for fidelity benchmarks of caching.

``data``: clip generator, conditioning vocabulary -> ``prompt_embeds``, clip measurements.
``load``: the trained proxies as stock diffusers pipelines (needs diffusers).
"""

from .data import (
    ALL_CONDITIONS,
    COLOURS,
    MOTIONS,
    NUM_FRAMES,
    SHAPES,
    SIZE,
    Condition,
    dominant_colour,
    generate_clips,
    motion_direction,
    null_embeds,
    prompt_embeds,
)
from .load import (
    PROXIES,
    WEIGHTS_DIR,
    call_kwargs,
    embeds_for,
    load_cogvideox_proxy,
    load_proxy,
    load_unet_proxy,
    load_wan_proxy,
    weights_available,
)
