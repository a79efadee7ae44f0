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

A DiT with no entry gets the generic adapter (:mod:`lightcache.models.generic`,
:func:`generic_adapter`): block lists, streams and latent layout inferred from the model's
structure, EasyCache and PreciseCache allowed, a :class:`GenericAdapterWarning` once per model; a
model where it finds no block list is refused naming each candidate and why.
:func:`registry.unregistered` switches families off for a while (tests compare both adapters).

:func:`supported` (:mod:`lightcache.models.support`) returns the support table, one row per
registered family (``supported(markdown=True)``/:func:`support_table`: the README's table;
``python -m lightcache.models.support --write-readme README.md`` rewrites the README's copy).

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
           pipelines=("MyPipeline",),                             # diffusers pipelines using it
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

``pipelines`` names the diffusers pipeline classes that use the family's denoisers (the support
table; tests/test_support_table.py checks each exists and takes the family's denoiser); left empty,
the table finds them from diffusers' pipeline signatures. Then add a tiny random-weight pipeline
(tests/tiny_families/<family>.py) so the test matrix covers it, and regenerate the README's support
table (``python -m lightcache.models.support --write-readme README.md``).
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
    family_name_of,
    presets,
    register_adapter,
    register_family,
    slicer_for,
    slicers_taking_overlap,
    supported_classes,
    supported_vaes,
    unregistered,
)
from lightcache.models.generic import GenericAdapter, GenericAdapterWarning, generic_adapter

_SUPPORT = ("SupportRow", "support_table", "supported")


def __getattr__(name):
    # the support table is imported on first use (``python -m lightcache.models.support`` would
    # otherwise find the module imported by the package before it runs)
    if name in _SUPPORT:
        from lightcache.models import support

        return getattr(support, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "unregistered",
    "GenericAdapter",
    "GenericAdapterWarning",
    "generic_adapter",
    "SupportRow",
    "support_table",
    "supported",
]
