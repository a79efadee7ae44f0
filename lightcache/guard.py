"""Refusing to stack lightcache on another cache of the same denoiser.

Two caching methods on one denoiser each skip work the other counts on (a reused block output fed
to a policy that thinks the block ran, two caches of one feature), so the result is neither
method's. lightcache refuses both orders with :class:`CacheStackingError`:

* at ``lightcache.enable``, when the denoiser already has a diffusers cache or cache-dit;
* at the start of every pipeline run (the engine's ``Session.new_run``), when one was added
  after ``lightcache.enable``: diffusers' cache hooks live in the same ``HookRegistry`` as
  lightcache's, so a scan of the denoiser's registries at the start of a run sees them. The scan
  reads Python attributes only (no device work); it walks the denoiser's modules once per run.

What is recognised (facts of diffusers 0.42 and cache-dit 1.5, read from their sources):

* diffusers' ``CacheMixin.enable_cache(config)`` sets ``model._cache_config`` (FirstBlockCache,
  MagCache, PyramidAttentionBroadcast, FasterCache, TaylorSeer, SeaCache, TextKVCache); undone by
  ``model.disable_cache()``;
* the same methods' hooks applied directly (``apply_first_block_cache(model, config)`` and the
  like), found by their hook names in any submodule's ``_diffusers_hook`` registry
  (:data:`DIFFUSERS_CACHE_HOOKS`);
* cache-dit (``cache_dit.enable_cache``) marks the patched transformer with ``_is_cached = True``,
  ``_context_manager`` and ``_forward_pattern`` (and ``_original_forward``), and the pipeline
  instance with ``_context_manager``; ``cache_dit.disable_cache(pipe)`` deletes them. (It also
  sets ``_forward_pattern`` on the block lists, and ``_is_cached`` on the pipeline *class*; neither
  is read here: the first may outlive disable_cache, the second covers every pipeline of the class.)
"""

from __future__ import annotations

from typing import List

from torch import nn

__all__ = ["CacheStackingError", "DIFFUSERS_CACHE_HOOKS", "find_foreign_caches", "check_no_foreign_cache"]

#: diffusers hook name -> the caching method that registers it (diffusers/hooks/*.py, 0.42)
DIFFUSERS_CACHE_HOOKS = {
    "fbc_leader_block_hook": "FirstBlockCache",
    "fbc_block_hook": "FirstBlockCache",
    "mag_cache_leader_block_hook": "MagCache",
    "mag_cache_block_hook": "MagCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "faster_cache_denoiser": "FasterCache",
    "faster_cache_block": "FasterCache",
    "taylorseer_cache": "TaylorSeerCache",
    "sea_cache_root": "SeaCache",
    "sea_cache_leader_block": "SeaCache",
    "sea_cache_block": "SeaCache",
    "sea_cache_post_norm": "SeaCache",
    "text_kv_cache_transformer": "TextKVCache",
    "text_kv_cache_block": "TextKVCache",
}

# attributes cache-dit sets on what it patches (cache_dit/caching/cache_adapters/cache_adapter.py)
_CACHE_DIT_MODEL_MARKS = ("_is_cached", "_forward_pattern", "_context_manager")


class CacheStackingError(ValueError):
    """lightcache and another cache on one denoiser: the message names what was found and how to
    disable it."""


def _label(model: nn.Module, pipe) -> str:
    """``pipe.transformer`` (the pipeline attribute holding ``model``), else ``model``."""
    if pipe is not None:
        for name in ("transformer", "transformer_2", "unet"):
            if getattr(pipe, name, None) is model:
                return f"pipe.{name}"
    return "model"


def find_foreign_caches(model: nn.Module, pipe=None) -> List[str]:
    """What other caches ``model`` (and ``pipe``) carry: one sentence each, with the way to
    disable it; empty when there is none. Reads attributes only."""
    label = _label(model, pipe)
    found: List[str] = []
    config = getattr(model, "_cache_config", None)
    if config is not None:
        found.append(
            f"diffusers {type(config).__name__} (enabled with {label}.enable_cache(...)): "
            f"disable it with {label}.disable_cache()"
        )
    if config is None:  # hooks applied without enable_cache() (enable_cache's are named above)
        hooks = {}  # hook name -> (method, path of the first module carrying it)
        for name, module in model.named_modules():
            reg = vars(module).get("_diffusers_hook")  # a plain attribute set by HookRegistry
            for hook_name in getattr(reg, "hooks", None) or ():
                method = DIFFUSERS_CACHE_HOOKS.get(hook_name)
                if method is not None and hook_name not in hooks:
                    hooks[hook_name] = (method, name)
        for hook_name, (method, where) in hooks.items():
            at = f"{label}.{where}" if where else label
            found.append(
                f"diffusers {method} hook {hook_name!r} on {at}: remove it with "
                f"{label}._diffusers_hook.remove_hook({hook_name!r}, recurse=True)"
            )
    marks = [m for m in _CACHE_DIT_MODEL_MARKS if vars(model).get(m) not in (None, False)]
    if not marks and pipe is not None and "_context_manager" in vars(pipe):
        marks = ["pipe._context_manager"]
    if marks:
        found.append(
            f"cache-dit (cache_dit.enable_cache; {label} carries {', '.join(marks)}): disable it with "
            f"cache_dit.disable_cache({'pipe' if pipe is not None else 'model'})"
        )
    return found


def check_no_foreign_cache(model: nn.Module, pipe=None, *, when: str = "enable") -> None:
    """Raise :class:`CacheStackingError` when ``model`` has another cache. ``when``: "enable"
    (lightcache.enable refuses it) or "call" (one was added after lightcache.enable)."""
    found = find_foreign_caches(model, pipe)
    if not found:
        return
    what = "; ".join(found)
    cls = type(model).__name__
    if when == "enable":
        raise CacheStackingError(
            f"lightcache.enable: {_label(model, pipe)} ({cls}) already has a cache: {what}. Two caches on one "
            "denoiser each skip work the other relies on; disable the other one first, or use it instead of lightcache"
        )
    raise CacheStackingError(
        f"lightcache: another cache was added to {_label(model, pipe)} ({cls}) after lightcache.enable(): {what}. "
        "The pipeline call is refused (two caches on one denoiser each skip work the other relies on); "
        "disable that cache to go on with lightcache, or call lightcache.disable(pipe) to use it instead"
    )

