"""Build a pipeline on the meta device and run it: the simulation itself.

:func:`build` makes a realistic configuration (lightcache.bench_models) or a local checkpoint
folder's pipeline with every parameter on the meta device (nothing is allocated; the weights are
counted from the parameters' shapes). :func:`run` calls the real diffusers pipeline on it --
encode, denoise, decode, with lightcache enabled (policy at its worst case, lightcache.simulate.worst;
the memory plan as given) -- while two trackers count:

* lightcache's own per-stage meter (``MemoryPlan(cpu_tracker=True)``, the CPU tracker's counting
  applied to the meta storages): ``report(pipe).peak_bytes``, exactly the figures a CPU run's
  tracker gives for the same pipeline (tests/test_simulate.py);
* :class:`lightcache.simulate.tracker.DeviceBytes` over the whole call (latents, scheduler
  outputs and post-processing included), per phase.

What runs where: every module on the meta device; the scheduler's timesteps stay on the CPU (its
index arithmetic reads values) and each denoiser call's CPU tensors (the timestep) are moved to the
meta device before the call, outside both trackers (a CPU run passes a view of the timesteps: no
allocation either); attention through :class:`lightcache.simulate.attention.AttentionEmulation`,
and the feature chunk splits an attention call only where that backend would run it on math
(torch picks math for every meta call). Value-dependent code (``if tensor:``, a slice by a
tensor's item, ``x[mask]``, ``nonzero``) is answered by :class:`lightcache.simulate.values.ValueHints`:
values the call makes known (``torch.zeros``, ...), the call's prompt masks assumed all valid (the
longest prompt), a table of per-family value points (HunyuanVideo 1.5's ``is_t2v``); each assumption
used is in ``Figures.assumptions`` and warned; any other read is refused with a NotImplementedError
naming the line. An autocast on the meta device to another dtype than fp16/bf16 is off, as CUDA's is.
The same :func:`run` measures a CPU pipeline for real (``device_type="cpu"``), with torch's own
attention and the real memory plan, for the comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch.utils._pytree import tree_map

from lightcache.simulate.tracker import PHASES, DeviceBytes, host_allocation
from lightcache.simulate.values import ValueHints, ValueRead
from lightcache.simulate.worst import steps_for, worst_case

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
OFFLOADS = ("none", "model", "group")
_DENOISERS = ("transformer", "transformer_2", "unet")


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of 'bf16', 'fp16', 'fp32', got {dtype!r}")


# ------------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------------


@dataclass
class Built:
    pipe: object
    kwargs: dict
    name: str
    label: str
    dtype: torch.dtype
    height: int
    width: int
    frames: int
    family: str


def _quiet():
    from diffusers.utils import logging as dlogging

    @contextlib.contextmanager
    def ctx():
        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()
        try:
            yield
        finally:
            dlogging.set_verbosity(level)

    return ctx()


def build(model: str, *, scale: str = "full", dtype="bf16", height=None, width=None, frames=None,
          device: str = "meta") -> Built:
    """The pipeline of ``model`` (a realistic configuration name, lightcache.bench_models.REALISTIC,
    or a local diffusers pipeline folder: its config files, never its weights) on ``device``
    (``"meta"``: nothing allocated), with its call kwargs (prompt embeddings of the published
    shapes; no generator). ``dtype`` applies to the denoiser (and the other components as the
    configuration casts them). Resolutions the pipeline cannot take are a ValueError naming the
    argument and the nearest valid values."""
    from lightcache import bench_models as bm

    dt = parse_dtype(dtype) if scale == "full" else (parse_dtype(dtype) if dtype is not None else torch.float32)
    if isinstance(model, str) and model in bm.REALISTIC:
        spec = bm.REALISTIC[model]
        c = spec.config(scale)
        for key, value in (("height", height), ("width", width), ("num_frames", frames)):
            if value is not None:
                c["call"][key] = value
        _check_size(model, c, spec)
        torch.manual_seed(0)
        with _quiet():
            pipe, kw = spec.build(c, device, dt, torch.Generator().manual_seed(1))
        pipe.to(device)
        label, family = spec.label, spec.family
    elif isinstance(model, str) and model in PROXIES:
        pipe, kw, label, family = _proxy(model, height, width, frames, dt)
    elif isinstance(model, str) and os.path.isdir(model):
        from lightcache.simulate.checkpoint import build_checkpoint

        pipe, kw, label = build_checkpoint(model, device, dt, height, width, frames)
        family = "unet" if getattr(pipe, "unet", None) is not None else "dit"
    else:
        raise ValueError(
            f"model must be one of {sorted(bm.REALISTIC) + list(PROXIES)} or a local diffusers pipeline folder (with "
            "model_index.json), "
            f"got {model!r}"
        )
    pipe.set_progress_bar_config(disable=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
            comp.requires_grad_(False)
    kw.setdefault("output_type", "pt")
    built = Built(pipe, kw, str(model), label, dt, int(kw.get("height") or 0), int(kw.get("width") or 0),
                  int(kw.get("num_frames") or 0), family)
    _check_pipe_size(built)
    return built


PROXIES = ("wan-proxy", "unet-proxy", "cogvideox-proxy")  # the bench's trained proxies (lightcache.proxy)


def _proxy(name, height, width, frames, dtype):
    """(pipeline on the meta device, call kwargs, label, family) of a trained proxy of the bench
    (``lightcache bench --model NAME``), at the shapes the bench runs: its native clip, CFG (in
    fp32, what the bench and benchmarks/chunk_overhead.py run)."""
    from lightcache.proxy import load

    if (height, width, frames) != (None, None, None):
        raise ValueError(f"model {name!r}: a trained proxy runs at its native size (no --height/--width/--frames)")
    key = name.replace("-", "_")
    if not load.weights_available(key):
        raise ValueError(f"model {name!r}: the trained proxy is not in this installation (lightcache/proxy/weights/)")
    with _quiet():
        pipe = load.load_proxy(key, device="cpu", dtype=dtype)
    kw = load.call_kwargs(pipe, [0], num_inference_steps=50, output_type="pt")
    kw.pop("generator")
    pipe.to("meta")
    kw = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return pipe, kw, f"trained proxy {key}", "unet" if key == "unet_proxy" else "dit"


def _nearest(value: int, factor: int, offset: int = 0) -> str:
    lo = max(offset + factor, (value - offset) // factor * factor + offset)
    hi = lo + factor if lo < value else lo
    return f"{lo}" if lo == hi or lo == value else f"{lo} or {hi}"


def _check_size(name, c, spec) -> None:
    call = c["call"]
    for key in ("height", "width", "num_frames"):
        v = call.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{'frames' if key == 'num_frames' else key} must be a positive int, got {v!r}")


def _factors(pipe):
    """(spatial factor, temporal factor, first-frame offset) the pipeline's sizes must respect:
    the VAE's compression times the denoiser's patch (UNets: times their downsampling)."""
    den = next(m for m in (getattr(pipe, a, None) for a in _DENOISERS) if m is not None)
    cfg = den.config
    spatial = (getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_spatial_compression_ratio", None)
               or getattr(pipe, "vae_scale_factor", None) or 8)
    temporal = (getattr(pipe, "vae_scale_factor_temporal", None)
                or getattr(pipe, "vae_temporal_compression_ratio", None) or 1)
    if getattr(pipe, "unet", None) is not None:
        spatial *= 2 ** (len(cfg.block_out_channels) - 1)
        return spatial, 1, 0
    patch = cfg.get("patch_size", 1) or 1
    patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
    patch_t = cfg.get("patch_size_t", None) or 1
    if isinstance(cfg.get("patch_size", None), (tuple, list)):
        patch_t = cfg.patch_size[0]
    return spatial * patch, temporal * patch_t, 1 if temporal > 1 else 0


def _check_pipe_size(b: Built) -> None:
    spatial, temporal, offset = _factors(b.pipe)
    what = f"{b.label}: the VAE's spatial compression times the denoiser's patch is {spatial}"
    for key, v in (("height", b.height), ("width", b.width)):
        if v % spatial:
            raise ValueError(f"{key}={v} is not divisible by {spatial} ({what}); nearest valid: {_nearest(v, spatial)}")
    if temporal > 1 and (b.frames - offset) % temporal:
        raise ValueError(
            f"frames={b.frames}: {b.label} needs frames = 1 + a multiple of {temporal} (the VAE's temporal "
            f"compression); nearest valid: {_nearest(b.frames, temporal, offset)}"
        )


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------


def _module_bytes(module, device_type=None) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if device_type is not None and t.device.type != device_type:
            continue
        st = t.untyped_storage()
        if id(st) in seen:
            continue
        seen.add(id(st))
        total += st.nbytes()
    return total


def component_bytes(pipe) -> Dict[str, int]:
    return {name: _module_bytes(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _group_bytes(den) -> int:
    """Block-level group offload (diffusers ``enable_group_offload(offload_type="block_level",
    num_blocks_per_group=1, use_stream=True)``): the parameters outside the block lists stay for the
    forward, one block computes while the next is prefetched."""
    from lightcache.adapters import adapter_for

    blocks = adapter_for(den).blocks(den)
    block_bytes = [_module_bytes(b) for b in blocks]
    largest = sorted(block_bytes, reverse=True)[:2]
    return _module_bytes(den) - sum(block_bytes) + sum(largest)


def stage_weights(pipe, offload: str = "none") -> Dict[str, int]:
    """Weights on the device in each phase: all components (``"none"``), the phase's own model
    (``"model"``: diffusers' model CPU offload), or for the denoise phase the group offload's
    resident set (``"group"``; the other phases as with model offload)."""
    if offload not in OFFLOADS:
        raise ValueError(f"offload must be one of {list(OFFLOADS)}, got {offload!r}")
    comps = component_bytes(pipe)
    if offload == "none":
        total = sum(comps.values())
        return {p: total for p in PHASES}
    dens = [a for a in _DENOISERS if a in comps]
    encoders = [n for n in comps if n.startswith(("text_encoder", "image_encoder"))]
    encode_models = encoders + (["vae"] if "vae" in comps and _encodes_with_vae(pipe) else [])
    out = {
        "encode": max([comps[n] for n in encode_models], default=0),
        "denoise": max(comps[n] for n in dens),
        "decode": comps.get("vae", 0),
    }
    if offload == "group":
        out["denoise"] = max(_group_bytes(getattr(pipe, n)) for n in dens)
    return out


def _encodes_with_vae(pipe) -> bool:
    return type(pipe).__name__ in ("StableVideoDiffusionPipeline",) or "ImageToVideo" in type(pipe).__name__


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    """One simulated (or measured) pipeline call. Bytes throughout.

    tracked: lightcache's per-stage meter (report.peak_bytes; the CPU tracker's figures).
    live_peak: device bytes alive at the peak of each phase (DeviceBytes), inputs excluded.
    live_peak_all: the same with host-marked storages (decode_to_host's video) counted too.
    cache_at_peak: the store's device bytes at that moment; cache_device/cache_host: the store's
    high-water marks; weights: resident weights per phase; inputs: the call's given tensors on the
    device; peak: weights + inputs + live_peak, per phase."""

    tracked: Dict[str, Optional[int]]
    live_peak: Dict[str, int]
    live_peak_all: Dict[str, int]
    cache_at_peak: Dict[str, int]
    cache_device: int
    cache_host: int
    weights: Dict[str, int]
    components: Dict[str, int]
    inputs: int
    attention: Dict[str, int] = field(default_factory=dict)
    denoiser_calls: int = 0
    seconds: float = 0.0
    live_at_start: Dict[str, int] = field(default_factory=dict)  # device bytes alive when each phase began
    decode_plans: list = field(default_factory=list)  # the sliced decode's choices (frames_per_slice, tile, bytes)
    warnings: list = field(default_factory=list)  # lightcache's warnings of the call (inexact decode, tiles)
    assumptions: list = field(default_factory=list)  # the values a simulation assumed (lightcache.simulate.values)

    @property
    def peak(self) -> Dict[str, int]:
        return {p: self.weights[p] + self.inputs + self.live_peak[p] for p in PHASES}

    @property
    def activations(self) -> Dict[str, int]:
        return {p: self.live_peak[p] - self.cache_at_peak[p] for p in PHASES}

    @property
    def pipeline_peak(self) -> int:
        return max(self.peak.values())

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(peak=self.peak, activations=self.activations, pipeline_peak=self.pipeline_peak)
        return d


def _to_meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) and x.device.type != "meta" else x


@contextlib.contextmanager
def _meta_run(pipe, attention: str = "auto"):
    """The pipeline's host-side pieces for a meta run (see the module doc); undone on exit.
    ``attention``: the emulated SDPA backend (query chunking splits only what it would run on math)."""
    from torch.utils._python_dispatch import _disable_current_modes

    from lightcache.memory import decode as _decode

    undo = []
    sched = pipe.scheduler
    sched_cls = type(sched)
    original = sched_cls.set_timesteps

    @functools.wraps(original)  # retrieve_timesteps reads its signature
    def set_timesteps(self, *args, **kwargs):
        kwargs["device"] = "cpu"
        if len(args) >= 2:
            args = (args[0], "cpu") + tuple(args[2:])
        return original(self, *args, **kwargs)

    # a subclass, not an instance attribute: copies of the scheduler (SkyReels-V2's diffusion forcing
    # deep-copies one per latent frame) keep their class, and their timesteps stay on the host too
    sched.__class__ = type(sched_cls.__name__, (sched_cls,), {"set_timesteps": set_timesteps})
    undo.append(lambda: setattr(sched, "__class__", sched_cls))

    from lightcache.memory import chunk_attention as _chunk_attention
    from lightcache.simulate import attention as _att

    materialises = _chunk_attention._materialises_scores

    def materialises_scores(a):
        # torch picks math for every meta call; a real run splits only what its backend runs on math
        q = a["query"]
        if q.device.type != "meta":
            return materialises(a)
        return _att.choose(attention, q, a["key"], a["value"], a.get("attn_mask"), float(a.get("dropout_p", 0.0)),
                           bool(a.get("is_causal", False))) == "math"

    _chunk_attention._materialises_scores = materialises_scores
    undo.append(lambda: setattr(_chunk_attention, "_materialises_scores", materialises))
    autocast_init = torch.amp.autocast_mode.autocast.__init__

    def autocast(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        # no autocast on the meta device; a CUDA (or CPU) autocast to another dtype than fp16/bf16
        # disables itself, which is what e.g. Mochi's fp32 rotary block asks for
        if device_type == "meta":
            if enabled and dtype in (torch.float16, torch.bfloat16, None):
                raise NotImplementedError(f"the simulation cannot emulate autocast to {dtype} on the meta device")
            return autocast_init(self, "cpu", torch.bfloat16, enabled=False, cache_enabled=cache_enabled)
        return autocast_init(self, device_type, dtype, enabled, cache_enabled)

    torch.amp.autocast_mode.autocast.__init__ = autocast
    undo.append(lambda: setattr(torch.amp.autocast_mode.autocast, "__init__", autocast_init))
    def pre_hook(module, args, kwargs):
        with _disable_current_modes():
            return tree_map(_to_meta, args), tree_map(_to_meta, kwargs)

    for name in _DENOISERS:
        den = getattr(pipe, name, None)
        if den is not None:
            h = den.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
            undo.append(h.remove)

    original_host_empty = _decode._Sink._host_empty

    def host_empty(sink, shape, like):
        if like.device.type == "meta":  # decode_to_host's video and scratch in host memory: marked, not allocated
            with host_allocation():
                return torch.empty(shape, dtype=like.dtype, device="meta")
        return original_host_empty(sink, shape, like)

    _decode._Sink._host_empty = host_empty
    undo.append(lambda: setattr(_decode._Sink, "_host_empty", original_host_empty))
    from lightcache.memory import chunk as _chunk

    autocast_on = _chunk._autocast_on
    # torch.is_autocast_enabled("meta") raises: no autocast on the meta device
    _chunk._autocast_on = lambda device_type: False if device_type == "meta" else autocast_on(device_type)
    undo.append(lambda: setattr(_chunk, "_autocast_on", autocast_on))
    cls = type(pipe)
    if "do_classifier_free_guidance" in dir(cls) and cls.__name__ == "StableVideoDiffusionPipeline":
        # SVD's guidance is a per-frame tensor (meta here): whether CFG runs is read from its max
        def cfg(self):
            return float(self._sim_max_guidance) > 1

        sub = type(cls.__name__, (cls,), {"do_classifier_free_guidance": property(cfg)})
        pipe.__class__ = sub
        undo.append(lambda: setattr(pipe, "__class__", cls))
    try:
        yield
    finally:
        for u in reversed(undo):
            u()


def _sessions(pipe):
    from lightcache.engine import session_of

    return [s for s in (session_of(getattr(pipe, n, None)) for n in _DENOISERS if getattr(pipe, n, None) is not None)
            if s is not None]


def run(pipe, kwargs: dict, *, policy=None, memory=None, attention: str = "auto", device_type: str = "meta",
        steps: Optional[int] = None, offload: str = "none", seed: int = 0, memo=True) -> Figures:
    """One pipeline call on ``pipe`` (on ``device_type``: ``"meta"`` simulates, ``"cpu"`` measures)
    with ``worst_case(policy)`` and ``memory`` (a MemoryPlan or None), counted by both trackers;
    ``steps`` defaults to what the policy's worst case needs (lightcache.simulate.worst.steps_for).
    ``memo``: the op-metadata memo of :class:`DeviceBytes` (True: one for this call; a dict: shared
    with other calls, which then answer the ops they repeat without running them)."""
    if steps is None:
        steps = steps_for(policy)
    import lightcache
    from lightcache.memory import MemoryPlan
    from lightcache.simulate.attention import AttentionEmulation
    from lightcache.simulate.store import sim_plan

    meta = device_type == "meta"
    plan = sim_plan(memory) if meta else dataclasses.replace(memory or MemoryPlan(), cpu_tracker=True)
    call = dict(kwargs, num_inference_steps=steps)
    inputs = _input_bytes(call, device_type)
    emulation = AttentionEmulation(attention) if meta else None
    state = {"phase": "encode"}
    sessions = []
    decoder = None

    def phase():
        for s in sessions:
            if s.last_stage is not None:
                state["phase"] = s.last_stage
        return state["phase"]

    def cache_bytes():
        return sum(s.store.device_bytes for s in sessions if s.store is not None)

    hints = ValueHints(call) if meta else None
    counter = DeviceBytes(device_type, phase=phase, cache_bytes=cache_bytes, memo=memo if meta else False,
                          values=hints)
    if "max_guidance_scale" in call:
        pipe._sim_max_guidance = call["max_guidance_scale"]
    with _meta_run(pipe, attention) if meta else contextlib.nullcontext(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightcache.enable(pipe, policy=worst_case(policy), memory=plan)
        try:
            sessions.extend(_sessions(pipe))
            decoder = getattr(getattr(getattr(pipe, "vae", None), "decode", None), "lightcache_decoder", None)
            t0 = time.perf_counter()
            with emulation if emulation is not None else contextlib.nullcontext(), counter:
                try:
                    pipe(**call, generator=torch.Generator().manual_seed(seed))
                except ValueRead as e:
                    raise NotImplementedError(_reads_values(pipe, e.where)) from e
                except RuntimeError as e:
                    if meta and "cannot be called on meta tensors" in str(e):
                        raise NotImplementedError(_reads_values(pipe, _where(e))) from e
                    raise
            seconds = time.perf_counter() - t0
            for assumption, where in (hints.used.items() if hints is not None else ()):
                warnings.warn(f"the simulation assumes {assumption} (read at {where})", stacklevel=1)
            rep = lightcache.report(pipe)
        finally:
            lightcache.disable(pipe)
            if hasattr(pipe, "_sim_max_guidance"):
                del pipe._sim_max_guidance
    comps = component_bytes(pipe)
    return Figures(
        tracked=dict(rep.peak_bytes),
        live_peak=dict(counter.peak),
        live_peak_all=dict(counter.peak_all),
        cache_at_peak=dict(counter.cache_at_peak),
        cache_device=int(rep.cache_bytes.get("device", 0)),
        cache_host=int(rep.cache_bytes.get("host", 0)),
        weights=stage_weights(pipe, offload),
        components=comps,
        inputs=inputs,
        attention=dict(emulation.used) if emulation is not None else {},
        denoiser_calls=len(rep.decisions),
        seconds=seconds,
        live_at_start=dict(counter.live_at),
        warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught
                         if str(getattr(w, "filename", "")).find("lightcache") >= 0 or "lightcache" in str(w.message)}),
        assumptions=sorted(hints.used) if hints is not None else [],
        decode_plans=[dict(frames_per_slice=p.frames_per_slice, tile=p.tile, estimated_bytes=p.estimated_bytes)
                      for p in (decoder.plans.values() if decoder is not None else ())],
    )


def _where(error) -> str:
    """file:line: code of the innermost diffusers frame of ``error``'s traceback."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "diffusers" in f.filename and os.sep + "hooks" + os.sep not in f.filename]
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""


def _reads_values(pipe, where: str) -> str:
    """The message for a pipeline whose code branches on (or sizes a tensor by) a value no hint knows."""
    where = f" ({where})" if where else ""
    return (f"{type(pipe).__name__} reads a tensor's value during the call{where}; a meta-device simulation "
            "has shapes only and no value hint answers this read (lightcache.simulate.values), so lightcache "
            "plan cannot simulate this pipeline")


def _input_bytes(call: dict, device_type: str) -> int:
    seen, total = set(), 0
    for v in call.values():
        if isinstance(v, torch.Tensor) and v.device.type == device_type:
            st = v.untyped_storage()
            if id(st) not in seen:
                seen.add(id(st))
                total += st.nbytes()
    return total
