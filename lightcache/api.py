"""Public entry points: enable, disable, report."""

from __future__ import annotations

from typing import Optional

from torch import nn

from lightcache import adapters
from lightcache.engine import Session, install, session_of, uninstall
from lightcache.policies.base import CachePolicy
from lightcache.reporting import Report

_DENOISER_ATTRS = ("transformer", "unet")


def _resolve(pipe_or_model):
    """(denoiser, pipeline or None) for a diffusers pipeline or a denoiser module."""
    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:  # pragma: no cover - diffusers is needed for enable()
        raise ImportError("lightcache.enable needs diffusers (pip install diffusers)") from exc
    if isinstance(pipe_or_model, DiffusionPipeline):
        for attr in _DENOISER_ATTRS:
            model = getattr(pipe_or_model, attr, None)
            if isinstance(model, nn.Module):
                return model, pipe_or_model
        raise ValueError(f"pipe_or_model: {type(pipe_or_model).__name__} has no transformer or unet to accelerate")
    if isinstance(pipe_or_model, nn.Module):
        from diffusers import ModelMixin

        if not isinstance(pipe_or_model, ModelMixin):
            raise TypeError(
                f"pipe_or_model must be a diffusers pipeline or a diffusers denoiser (ModelMixin), "
                f"got {type(pipe_or_model).__name__}"
            )
        return pipe_or_model, None
    raise TypeError(
        f"pipe_or_model must be a diffusers pipeline or a diffusers denoiser module, got {type(pipe_or_model).__name__}"
    )


def enable(pipe_or_model, policy: Optional[CachePolicy] = None, memory=None):
    """Accelerate a diffusers pipeline (or its transformer/UNet) with ``policy`` and ``memory``.

    ``policy=None`` caches nothing (memory plan only). Enabling again replaces the previous
    configuration. If anything is invalid, nothing of the pipeline is changed."""
    denoiser, pipe = _resolve(pipe_or_model)
    if policy is not None and not isinstance(policy, CachePolicy):
        raise TypeError(f"policy must be a lightcache policy (EasyCache, PreciseCache, DeepCache) or None, got {type(policy).__name__}")
    if memory is not None:
        from lightcache.memory import MemoryPlan

        if not isinstance(memory, MemoryPlan):
            raise TypeError(f"memory must be a lightcache.MemoryPlan or None, got {type(memory).__name__}")
    adapter = adapters.adapter_for(denoiser)
    if policy is not None and hasattr(policy, "check_adapter"):
        policy.check_adapter(adapter)
    previous = session_of(denoiser)
    if previous is not None:
        uninstall(previous)
    session = Session(denoiser, adapter, policy, memory, pipe=pipe)
    install(session)
    return pipe_or_model


def disable(pipe_or_model) -> None:
    """Remove lightcache: the pipeline's denoiser and scheduler are exactly as before enable()."""
    denoiser, _ = _resolve(pipe_or_model)
    session = session_of(denoiser)
    if session is not None:
        uninstall(session)


def report(pipe_or_model) -> Report:
    """What the last pipeline call did (see lightcache.reporting.Report)."""
    denoiser, _ = _resolve(pipe_or_model)
    session = session_of(denoiser)
    if session is None:
        raise ValueError("pipe_or_model: lightcache is not enabled on it (call lightcache.enable first)")
    return session.report
