"""The model-family registry: one entry per family, every lookup by class MRO.

A :class:`ModelFamily` holds everything lightcache knows about one family of diffusers video models:

- ``adapter``: the denoiser classes it covers, where their blocks are, the block streams and the
  latent layout (:class:`~lightcache.models.adapter.ModelAdapter`,
  :class:`~lightcache.models.layout.LatentLayout`);
- ``chunking``: the feature-chunk spec of each DiT block class (block class name -> an instance of
  a :class:`lightcache.memory.chunk_dit._Family` subclass);
- ``slicers``: the sliced-decode slicer of each VAE class (VAE class name -> a subclass of
  :class:`lightcache.memory.decode._Slicer`);
- ``presets``: reference policy settings (policy class name -> its field values), read by e.g.
  :meth:`lightcache.EasyCache.for_model`;
- ``pipelines``: the diffusers pipeline class names that use the family's denoisers (the support
  table, :mod:`lightcache.models.support`; found from diffusers' pipeline signatures when empty).

Lookups (:func:`family_for`, :func:`adapter_for`, :func:`chunking_for`, :func:`slicer_for`) walk
``type(obj).__mro__`` and take the first class whose name is registered, so a subclass of a
supported diffusers class is covered by its base's entry. Class names (not classes) are the keys:
registering a family imports nothing from diffusers. A later registration of a name replaces the
earlier one (a user can override a built-in entry).

A denoiser with no entry falls back to the generic adapter (:mod:`lightcache.models.generic`: its
block lists, streams and latent layout inferred from its structure, with a warning), and is refused
only when that finds no block list it can drive. :func:`unregistered` switches entries off for a
while (tests compare the generic adapter with the registered one).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

from torch import nn

from lightcache.models.adapter import ModelAdapter


@dataclass(frozen=True)
class ModelFamily:
    """One family's registry entry (see the module docstring)."""

    adapter: ModelAdapter
    chunking: Mapping[str, object] = field(default_factory=dict)
    slicers: Mapping[str, type] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    pipelines: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.adapter.family


_FAMILIES: Dict[str, ModelFamily] = {}  # family name -> entry
_DENOISERS: Dict[str, ModelFamily] = {}  # denoiser class name -> entry
_BLOCKS: Dict[str, object] = {}  # block class name -> chunking spec
_VAES: Dict[str, type] = {}  # VAE class name -> slicer class


def register_family(family: ModelFamily) -> ModelFamily:
    """Register ``family`` for its denoiser, block and VAE classes (later registrations of a
    class name override earlier ones)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"family must be a lightcache.models.ModelFamily, got {type(family).__name__}")
    if not isinstance(family.adapter, ModelAdapter):
        raise TypeError(f"ModelFamily.adapter must be a ModelAdapter, got {type(family.adapter).__name__}")
    if not isinstance(family.pipelines, tuple) or not all(isinstance(p, str) for p in family.pipelines):
        raise TypeError(f"ModelFamily.pipelines must be a tuple of diffusers pipeline class names, got {family.pipelines!r}")
    _FAMILIES[family.name] = family
    for name in family.adapter.model_classes:
        _DENOISERS[name] = family
    _BLOCKS.update(family.chunking)
    _VAES.update(family.slicers)
    return family


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Register a denoiser adapter alone (a family with no chunking spec, slicer or presets), for
    its ``model_classes``; an existing family of the same name keeps its other parts."""
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(f"adapter must be a ModelAdapter, got {type(adapter).__name__}")
    old = _FAMILIES.get(adapter.family)
    if old is None:
        register_family(ModelFamily(adapter))
    else:
        register_family(ModelFamily(adapter, old.chunking, old.slicers, old.presets, old.pipelines))
    return adapter


def _by_mro(obj, table: Mapping[str, object]):
    for cls in type(obj).__mro__:
        found = table.get(cls.__name__)
        if found is not None:
            return found
    return None


def family_for(model: nn.Module) -> ModelFamily:
    """The entry of ``model``'s class (or of its nearest registered base class); else a family
    holding the generic adapter (:func:`lightcache.models.generic.generic_adapter`, which warns
    once per model that it is generic); else a ValueError listing the supported classes and why
    the generic adapter does not apply."""
    found = _by_mro(model, _DENOISERS)
    if found is not None:
        return found
    from lightcache.models.generic import GenericAdapterRefusal, generic_adapter

    try:
        return ModelFamily(generic_adapter(model))
    except GenericAdapterRefusal as refusal:
        raise ValueError(
            f"lightcache has no adapter for {type(model).__name__}. Supported denoisers: "
            f"{', '.join(supported_classes())}. To add one, describe its blocks with "
            "lightcache.adapters.ModelAdapter(...) and call lightcache.adapters.register_adapter(adapter) "
            f"(a whole family: see lightcache.models). The generic adapter does not apply: {refusal.detail}"
        ) from None


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model``'s class (or of a base class), else the generic adapter, or a clear
    error (see :func:`family_for`)."""
    return family_for(model).adapter


def registered_family_for(model: nn.Module) -> Optional[ModelFamily]:
    """The registered entry of ``model``'s class (by MRO), or None (no generic fallback)."""
    return _by_mro(model, _DENOISERS)


@contextlib.contextmanager
def unregistered(*names: str) -> Iterator[None]:
    """Switch the families ``names`` off inside the ``with`` block: their denoiser classes, block
    chunking specs and VAE slicers are not found (their denoisers get the generic adapter), and
    the registry is put back as it was on entry when the block exits (a registration made inside
    the block is undone too). For tests and comparisons::

        with lightcache.models.registry.unregistered("wan"):
            lightcache.enable(pipe, policy=EasyCache())   # the generic adapter, with its warning
    """
    for name in names:
        family(name)  # a ValueError listing the families for an unknown name
    saved = [dict(t) for t in (_FAMILIES, _DENOISERS, _BLOCKS, _VAES)]
    try:
        for name in names:
            entry = _FAMILIES.pop(name)
            # only what this entry still provides: a later registration of the same class name
            # (another family's) stays found
            owned = ((_DENOISERS, {k: entry for k in entry.adapter.model_classes}),
                     (_BLOCKS, entry.chunking), (_VAES, entry.slicers))
            for table, mine in owned:
                for key, value in mine.items():
                    if table.get(key) is value:
                        del table[key]
        yield
    finally:
        for table, copy in zip((_FAMILIES, _DENOISERS, _BLOCKS, _VAES), saved):
            table.clear()
            table.update(copy)


def family(name: str) -> ModelFamily:
    """The entry of the family called ``name`` (e.g. "wan"), or a ValueError listing them."""
    if name not in _FAMILIES:
        raise ValueError(f"family must be one of {sorted(_FAMILIES)}, got {name!r}")
    return _FAMILIES[name]


def families() -> List[ModelFamily]:
    return [_FAMILIES[k] for k in sorted(_FAMILIES)]


def chunking_for(block: nn.Module):
    """The feature-chunk spec of ``block``'s class (by MRO), or None."""
    return _by_mro(block, _BLOCKS)


def slicer_for(vae) -> Optional[type]:
    """The sliced-decode slicer class of ``vae``'s class (by MRO), or None."""
    return None if vae is None else _by_mro(vae, _VAES)


def supported_classes() -> List[str]:
    """Denoiser class names with an entry."""
    return sorted(_DENOISERS)


def supported_vaes() -> List[str]:
    """VAE class names with a slicer."""
    return sorted(_VAES)


def presets(policy: str) -> Dict[str, Mapping[str, object]]:
    """Family name -> the reference field values of ``policy`` (a policy class name) for every
    family that has them."""
    return {f.name: f.presets[policy] for f in families() if policy in f.presets}


def family_name_of(what) -> str:
    """The registered family of ``what``: a family name ("wan"), a diffusers pipeline or denoiser
    (instance or class; by MRO, a pipeline class through the families' ``pipelines``). A
    ValueError names what was given and what is accepted."""
    if isinstance(what, str):
        return family(what).name
    cls = what if isinstance(what, type) else type(what)
    for base in cls.__mro__:
        entry = _DENOISERS.get(base.__name__)
        if entry is not None:
            return entry.name
    if not isinstance(what, type):  # a pipeline instance: its denoiser decides (Wan 2.2, variants)
        for attr in ("transformer", "unet"):
            model = getattr(what, attr, None)
            if isinstance(model, nn.Module):
                return family_name_of(model)
    for base in cls.__mro__:
        for entry in families():
            if base.__name__ in entry.pipelines:
                return entry.name
    raise ValueError(
        f"model: {cls.__name__} is not a registered family, nor a pipeline or denoiser of one; give a family name "
        f"({', '.join(sorted(_FAMILIES))}), a diffusers pipeline or its denoiser (instance or class)"
    )


def slicers_taking_overlap() -> List[str]:
    """VAE class names whose slicer takes ``MemoryPlan.decode_overlap``."""
    return [name for name in supported_vaes() if getattr(_VAES[name], "takes_overlap", False)]
