"""Public entry points: enable, disable, report, history."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Tuple

from torch import nn

from lightcache import adapters
from lightcache._compat import require_diffusers
from lightcache.engine import Session, install, session_of, uninstall
from lightcache.guard import check_no_foreign_cache
from lightcache.policies.base import CachePolicy
from lightcache.reporting import Report, history_of

logger = logging.getLogger(__name__)  # a child of the "lightcache" logger

_DENOISER_ATTRS = ("transformer", "transformer_2", "unet")  # transformer_2: Wan 2.2's low-noise expert


def _resolve(pipe_or_model):
    """(denoisers, pipeline or None) for a diffusers pipeline or a denoiser module."""
    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:  # pragma: no cover - diffusers is needed for enable()
        raise ImportError("lightcache.enable needs diffusers (pip install diffusers)") from exc
    if isinstance(pipe_or_model, DiffusionPipeline):
        models = [m for m in (getattr(pipe_or_model, a, None) for a in _DENOISER_ATTRS) if isinstance(m, nn.Module)]
        if not models:
            raise ValueError(f"pipe_or_model: {type(pipe_or_model).__name__} has no transformer or unet to accelerate")
        return models, pipe_or_model
    if isinstance(pipe_or_model, nn.Module):
        from diffusers import ModelMixin

        if not isinstance(pipe_or_model, ModelMixin):
            raise TypeError(
                f"pipe_or_model must be a diffusers pipeline or a diffusers denoiser (ModelMixin), "
                f"got {type(pipe_or_model).__name__}"
            )
        return [pipe_or_model], None
    raise TypeError(
        f"pipe_or_model must be a diffusers pipeline or a diffusers denoiser module, got {type(pipe_or_model).__name__}"
    )


def enable(pipe_or_model, policy: Optional[CachePolicy] = None, memory=None):
    """Accelerate a diffusers pipeline (or its transformer/UNet) with ``policy`` and ``memory``.

    ``policy=None`` caches nothing (memory plan and report only). Every denoiser of the pipeline is
    covered (Wan 2.2's two experts each keep their own cache). Enabling again replaces the previous
    configuration. Everything is checked before anything changes: a policy that does not apply to
    the model's family, a memory plan the model or its VAE cannot follow, raise here, and on any
    error the pipeline keeps exactly the configuration it had (lightcache's or none).

    A denoiser that already has another cache (diffusers' ``enable_cache``, its cache hooks, or
    cache-dit) is refused with lightcache.guard.CacheStackingError (a ValueError) naming it and
    how to disable it; one added after enable() is refused at the next pipeline call. An INFO
    message on the "lightcache" logger says what was hooked, with which policy and memory plan."""
    require_diffusers()
    denoisers, pipe = _resolve(pipe_or_model)
    if policy is not None and not isinstance(policy, CachePolicy):
        raise TypeError(f"policy must be a lightcache policy (EasyCache, PreciseCache, DeepCache) or None, got {type(policy).__name__}")
    if memory is not None:
        from lightcache.memory import MemoryPlan

        if not isinstance(memory, MemoryPlan):
            raise TypeError(f"memory must be a lightcache.MemoryPlan or None, got {type(memory).__name__}")
    if policy is not None:  # two caches would both skip work; a memory plan alone (a meter) may sit beside one
        for d in denoisers:
            check_no_foreign_cache(d, pipe, when="enable")
    found = [adapters.adapter_for(d) for d in denoisers]
    for d, adapter in zip(denoisers, found):
        if policy is not None:
            policy.check_model(adapter, d)
            if adapter.extra_outputs and policy.extra_stream_reuse not in ("delta", "output"):
                streams = ", ".join(f for _, f in adapter.extra_outputs)
                raise ValueError(
                    f"policy: {type(policy).__name__} cannot reuse {type(d).__name__}'s further output streams "
                    f"({streams}); its extra_stream_reuse must be 'delta' or 'output' (see lightcache.policies.base)"
                )
    if memory is not None:  # the plan's VAE check is per pipeline: one warning for an inexact decode
        memory.check_model(found[0], denoisers[0], pipe)
    sessions = [Session(d, a, policy, memory, pipe=pipe) for d, a in zip(denoisers, found)]
    previous = _installed_groups(denoisers)
    for group, _ in previous:
        for old in group:
            uninstall(old)
    try:
        install(sessions, pipe)
    except BaseException:
        for group, old_pipe in previous:  # put the previous configuration back as it was
            install(group, old_pipe)
        raise
    for session in sessions:
        logger.info(
            "lightcache enabled on %s (%s family, %d blocks hooked)%s: policy %s; memory plan %s",
            type(session.denoiser).__name__, session.adapter.family, len(session.blocks),
            "" if pipe is None else f" of {type(pipe).__name__}", _describe(policy, "none (nothing is cached)"),
            _describe(memory, "none (cached features stay on the device)"),
        )
    return pipe_or_model


def _describe(config, none: str) -> str:
    """A policy or memory plan as its class and the fields that differ from the defaults."""
    if config is None:
        return none
    if not dataclasses.is_dataclass(config):
        return repr(config)
    changed = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            changed.append(f"{f.name}={value!r}")
    return f"{type(config).__name__}({', '.join(changed)})"


def _installed_groups(denoisers):
    """The sessions installed on ``denoisers``, grouped as they were installed together:
    [(sessions, pipe or None)]."""
    groups = []
    for d in denoisers:
        s = session_of(d)
        if s is None or any(s in g for g, _ in groups):
            continue
        members = s.taps.sessions if s.taps is not None else [s]
        groups.append((list(members), s.pipe if s.taps is not None else None))
    return groups


def disable(pipe_or_model) -> None:
    """Remove lightcache: the pipeline's denoisers and scheduler are exactly as before enable()."""
    denoisers, _ = _resolve(pipe_or_model)
    for group, _ in _installed_groups(denoisers):
        for session in group:
            uninstall(session)


def report(pipe_or_model) -> Report:
    """What the last pipeline call did (see lightcache.reporting.Report, where every figure is
    defined; ``print()`` it for a summary): an immutable snapshot that later calls, enable() and
    disable() never change. With several denoisers (Wan 2.2's experts) their decisions are merged
    in step order. The calls before it: :func:`history`."""
    denoisers, _ = _resolve(pipe_or_model)
    sessions = [s for s in (session_of(d) for d in denoisers) if s is not None]
    if not sessions:
        raise ValueError("pipe_or_model: lightcache is not enabled on it (call lightcache.enable first)")
    if len(sessions) == 1:
        return sessions[0].report()
    return Report.merge([s.report() for s in sessions])


def history(pipe_or_model) -> Tuple[Report, ...]:
    """The reports of the last pipeline calls since enable(), oldest first: at most
    ``lightcache.reporting.HISTORY_LIMIT`` = 16 (then the oldest is dropped). Each is an immutable
    snapshot, like :func:`report`'s, added when its call ended (returned or raised:
    ``Report.failed``); with several denoisers (Wan 2.2's experts) one merged report per call. A
    denoiser driven without a pipeline gets an entry when its next run starts (or when diffusers
    resets its stateful hooks): the run in progress is not in it."""
    denoisers, _ = _resolve(pipe_or_model)
    sessions = [s for s in (session_of(d) for d in denoisers) if s is not None]
    if not sessions:
        raise ValueError("pipe_or_model: lightcache is not enabled on it (call lightcache.enable first)")
    found = []
    for s in sessions:
        h = history_of(s)
        if not any(h is k for k in found):
            found.append(h)
    if len(found) > 1:
        raise ValueError(
            "pipe_or_model: lightcache was enabled on each of its denoisers separately; ask "
            "lightcache.history(pipe.transformer) (and the others) one by one"
        )
    return found[0].reports()
