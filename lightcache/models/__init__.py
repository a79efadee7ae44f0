"""The model-family registry: everything lightcache knows about each diffusers video model family,
one folder per family, every lookup by class MRO.

Families: ``wan`` (Wan 2.1/2.2, T2V/I2V/TI2V), ``hunyuan_video``, ``cogvideox``, ``ltx``,
``easyanimate`` (DiTs: EasyCache, PreciseCache), ``svd``, ``animatediff``, ``text_to_video_sd``
(video UNets: DeepCache). Each family's entry (:class:`ModelFamily`, registry.py) says:

- the denoiser classes it covers, where their blocks are, the block streams, and the latent layout
  (``adapter``: :class:`ModelAdapter`, with a :class:`~lightcache.models.layout.LatentLayout`);
- the feature-chunk spec of each of its DiT block classes (``chunking``);
- the sliced-decode slicer of each of its VAE classes (``slicers``);
- reference policy settings (``presets``: EasyCache's Wan and HunyuanVideo settings).

Lookups walk the class MRO: :func:`adapter_for` (denoiser), :func:`chunking_for` (block),
:func:`slicer_for` (VAE) -- a subclass of a supported diffusers class is covered by its base's
entry. Importing this package registers every family: each sub-package found here is imported.

How to add a family
-------------------

Create ``lightcache/models/<family>/`` -- nothing else in lightcache changes -- with:

1. ``__init__.py``: build the entry and register it::

       from lightcache.models.adapter import ModelAdapter
       from lightcache.models.registry import ModelFamily, register_family

       MYMODEL = register_family(ModelFamily(
           adapter=ModelAdapter(family="mymodel", model_classes=("MyTransformer3DModel",),
                                block_lists=("transformer_blocks",),
                                block_outputs=("hidden_states",),  # what each block's output updates
                                layout=MyLayout()),                # omit for a plain (B, C, T, H, W) latent
           chunking={"MyTransformerBlock": MyChunking()},           # optional
           slicers={"AutoencoderKLMine": MySlicer},                 # optional
           presets={"EasyCache": {"threshold": 0.05, "warmup_steps": 10}},  # optional
       ))

   Keys are class *names* (no diffusers import at registration); a subclass of a named class is
   covered too.
2. ``layout.py`` (when the latent is not (B, C, T, H, W), or when the denoiser takes arguments that
   depend on the latent's size): subclass :class:`~lightcache.models.layout.LatentLayout` (or
   :class:`~lightcache.models.layout.FramesFirstLayout`); set ``channel_dim`` and
   ``tensor_format``, override ``to_bcthw``/``from_bcthw`` for another layout, ``patch_multiple``
   (the model's patch sizes), ``resize_arguments`` (make e.g. rotary tables, grid sizes or
   per-token timesteps match a pooled trial latent) and ``trial_refusal`` (a model that cannot run
   on another size). PreciseCache's trial forward and its signal, and EasyCache's latent part, use
   only these.
3. ``chunk.py`` (DiTs, for ``MemoryPlan(chunk_size=...)``): a subclass of
   ``lightcache.memory.chunk_dit._Family`` (or ``_Joint`` for text+video joint attention) per block
   kind, naming the block's original attention processor and how a piece of the sequence is cut
   from the block's arguments (see lightcache/memory/chunk_dit.py and the Wan/LTX/CogVideoX
   specs). Blocks without a spec still run with query-chunked attention and chunked FFNs.
4. ``decode.py`` (for ``MemoryPlan(decode_slices=...)``/``decode_budget``): a subclass of
   ``lightcache.memory.decode._Slicer`` (or ``TemporalWindowSlicer``/``PerFrameSlicer``) that says
   how to decode one slice and carry the VAE's causal caches, its spatial tiling, and whether it
   is ``exact`` (else an ``inexact_note`` saying by how much it may differ: warned at enable).

Then add the family to tests/tiny_pipelines.py (a tiny random-weight pipeline) so the test matrix
covers it.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from lightcache.models.adapter import UNET_BLOCK_LISTS, ModelAdapter
from lightcache.models.layout import FramesFirstLayout, LatentLayout
from lightcache.models.registry import (
    ModelFamily,
    adapter_for,
    chunking_for,
    families,
    family,
    family_for,
    presets,
    register_adapter,
    register_family,
    slicer_for,
    slicers_taking_overlap,
    supported_classes,
    supported_vaes,
)

# registration by import: every family folder (sub-package) here, in name order
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.ispkg:
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "ModelAdapter",
    "ModelFamily",
    "LatentLayout",
    "FramesFirstLayout",
    "UNET_BLOCK_LISTS",
    "adapter_for",
    "chunking_for",
    "families",
    "family",
    "family_for",
    "presets",
    "register_adapter",
    "register_family",
    "slicer_for",
    "slicers_taking_overlap",
    "supported_classes",
    "supported_vaes",
]
