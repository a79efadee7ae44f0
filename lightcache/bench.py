"""``lightcache bench``: speed-up, memory per stage and fidelity of caching methods side by side.

    lightcache bench [--model wan-proxy] [--methods easycache,precise-flash,...] [--steps 20]
                     [--repeats 3] [--out bench-out] [--quick]
    lightcache bench --model hunyuanvideo --device cuda        realistic size, random weights
    lightcache bench --model svd --scale tiny                  the same pipeline code shrunk, on CPU
    lightcache bench --checkpoint DIR_OR_HUB_ID [--dtype bf16] [--offload model]   a real diffusers checkpoint
    lightcache bench --list-methods                            every method, where it applies, installed or not
    lightcache bench --sweep [--sweep-points N] [--conditions N] [--seeds K]   threshold sweeps, matched speed-up

For each method the pipeline runs with the same seed and inputs as the uncached reference:
  * speed-up: median over ``--repeats`` runs, methods alternating within each round, of the
    reference's time divided by the method's, with the min-max over rounds (and of the times);
  * fidelity against the reference's video: PSNR (clip-pooled), SSIM (per frame), flicker — "n/a
    (random weights)" for random-weight models, whose trajectories mean nothing;
  * memory per stage: CUDA allocator peaks, or on CPU the deterministic live-tensor tracker;
  * reuse ratio (lightcache methods), and for every method the fraction of block FLOPs it ran
    (matmuls and attention inside the denoiser's blocks, counted by torch's FLOP counter, over the
    reference's: :class:`BlockFlops`), which separates how much a policy skips from per-call costs.
Outputs: a table on the terminal, ``results.json``, ``pareto.png`` (speed-up vs PSNR),
``memory.png`` (peak per stage), ``timeline.png`` (memory over time by stage, reference vs. our
fastest method), ``side_by_side.gif`` (reference and each method, labelled; its middle frame as
``side_by_side.png``, and ``side_by_side.mp4`` when imageio-ffmpeg is installed); the figures are
drawn by :mod:`lightcache.bench_plots`. Status lines go to stderr from the start (model load
included), through ``tqdm.write`` so that progress bars stay intact.

Models: the trained proxies (``wan-proxy``, ``unet-proxy``, ``cogvideox-proxy``), ``wan-tiny``, and
realistic-size random-weight configurations (Wan2.1 1.3B/14B, HunyuanVideo, CogVideoX-5B, LTX-Video, SVD-XT,
AnimateDiff; :mod:`lightcache.bench_models`) for speed and memory on a GPU; ``--scale tiny`` runs
them shrunk on CPU. ``--checkpoint`` runs a real diffusers pipeline: a local folder, or a hub id
from the local hub cache (no network) or else downloaded (:func:`resolve_checkpoint`), in
``--dtype``, placed by ``--offload`` (:func:`apply_offload`).

Peers (diffusers' FirstBlockCache, TaylorSeer, PyramidAttentionBroadcast, MagCache, FasterCache;
cache-dit and the DeepCache package when installed) run through their own APIs; a peer that is not
installed or does not apply to the model is listed with the reason and the rest still runs.
MagCache needs per-model ``mag_ratios``: the bench first runs diffusers' own calibration
(``MagCacheConfig(calibrate=True)``, one uncached run on another seed) and says so.

``--sweep`` runs each threshold-like knob (EasyCache τ, ForecastCache τ, PreciseCache α, FirstBlockCache
threshold, TaylorSeer cache interval, PAB and FasterCache spatial skip ranges, MagCache threshold, cache-dit's residual threshold with
and without its TaylorSeer calibrator) over its settings (:data:`SWEEPS`); it needs a trained model.
Fidelity (PSNR/SSIM against the uncached run of the same condition and seed) is scored over
``--conditions N`` conditions (:func:`sweep_condition`) x ``--seeds K`` seeds (:func:`sweep_seed`),
each run once (it is deterministic), reported as mean, min-max and std; speed-ups are medians of
alternating timed rounds on the first condition and seed. For each peer, lightcache's Pareto envelope
(all its settings) against the peer's, by mean PSNR, at matched speed-up where both envelopes reach,
by wall time and by block FLOPs, with the margins at 1.5/2/2.5/3x (:func:`matched_comparison`).
Issue 12's instrument (50 steps, 4 conditions x 2 seeds; benchmarks/results/sweep-wan-proxy-50steps-cpu)::

    lightcache bench --sweep --model wan-proxy --steps 50 --conditions 4 --seeds 2 --repeats 5 \
        --methods easycache,forecast,precise-base,precise-flash,diffusers-fbc,diffusers-taylorseer,\
diffusers-pab,diffusers-magcache,diffusers-fastercache,cache-dit,cache-dit-taylorseer \
        --out benchmarks/results/sweep-wan-proxy-50steps-cpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

import lightcache
from lightcache import bench_models, bench_plots, cli, metrics



def status(msg: str) -> None:
    """A status line on stderr, through tqdm so that an active progress bar is redrawn below it
    rather than garbled."""
    from tqdm.auto import tqdm

    tqdm.write(f"lightcache bench: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    pipe: object
    kwargs: dict  # call kwargs without generator
    family: str  # "dit" or "unet"
    random_weights: bool
    description: str
    # batch size of the denoiser's latent input at each call of the reference run (FasterCache
    # needs uncond + cond batched into one call)
    denoiser_batches: List[int] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # peer calibrations, computed once per model
    device: Optional[str] = None  # where it computes (its parameters may sit on the host under --offload)


def _denoiser(pipe):
    model = getattr(pipe, "transformer", None)
    return model if model is not None else pipe.unet


def _wan_tiny(device, steps):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                               out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=4, rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).to(device)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g).to(device),
              negative_prompt_embeds=torch.zeros(1, 8, 32, device=device), height=32, width=32, num_frames=9,
              num_inference_steps=steps, guidance_scale=4.0, output_type="pt")
    return BenchModel(pipe, kw, "dit", True, "tiny random-weight Wan (4 blocks, width 32)")


def _realistic(name):
    def build(device, steps, scale="full", height=None, width=None, frames=None):
        pipe, kw, family, description = bench_models.build(name, device, steps, scale, height, width, frames)
        return BenchModel(pipe, kw, family, True, description)

    return build


def _proxy(name):
    def build(device, steps):
        from lightcache.proxy import load

        if not load.weights_available(name):
            raise SystemExit(
                f"the trained proxy {name!r} is not in this installation (lightcache/proxy/weights/); "
                "train it with benchmarks/proxy/ (TRAINING.md), or pick --model wan-tiny"
            )
        pipe = load.load_proxy(name, device=device)
        kw = load.call_kwargs(pipe, [0], num_inference_steps=steps, output_type="pt")
        kw.pop("generator")
        fam = "unet" if name == "unet_proxy" else "dit"
        return BenchModel(pipe, kw, fam, False, f"trained proxy {name} (lightcache/proxy)")

    return build


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OFFLOADS = ("none", "model", "group", "sequential")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def resolve_checkpoint(spec: str, cache_dir: Optional[str] = None) -> Path:
    """The local pipeline folder of ``spec``: a folder with ``model_index.json`` as it is, or a hub id
    (``owner/name``) from the local hub cache when it is there (no network), else downloaded, unless
    HF_HUB_OFFLINE is set. SystemExit naming ``--checkpoint`` and the reason otherwise."""
    root = Path(spec).expanduser()
    if root.exists():
        if not (root / "model_index.json").is_file():
            raise SystemExit(f"--checkpoint {spec}: not a diffusers pipeline folder (no model_index.json there)")
        return root
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
        hub_id = spec.count("/") == 1
    except HFValidationError:
        hub_id = False
    if not hub_id:
        raise SystemExit(f"--checkpoint {spec}: no such folder (so no model_index.json there), and not a hub id of the "
                         "form owner/name")
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    try:
        folder = DiffusionPipeline.download(spec, local_files_only=True, cache_dir=cache_dir)
        status(f"{spec}: found in the local hub cache ({folder}); no network used")
        return Path(folder)
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError is an OSError
        cached_error = exc
    if _hub_offline():
        raise SystemExit(f"--checkpoint {spec}: not in the local hub cache ({where}) and HF_HUB_OFFLINE is set, so it "
                         f"cannot be downloaded ({type(cached_error).__name__}: {cached_error})")
    status(f"{spec}: not in the local hub cache ({where}); downloading from the Hugging Face hub ...")
    try:
        return Path(DiffusionPipeline.download(spec, cache_dir=cache_dir))
    except Exception as exc:  # no network, unknown or gated repo: one clear message
        raise SystemExit(f"--checkpoint {spec}: not in the local hub cache ({where}) and the download failed: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def apply_offload(pipe, mode: str, device: str) -> None:
    """Place ``pipe`` for computing on ``device``: ``none`` moves every component there; ``model`` is
    diffusers' ``enable_model_cpu_offload`` (one component on the device at a time), ``sequential``
    its ``enable_sequential_cpu_offload`` (one layer at a time), ``group`` block-level group
    offload of the denoiser (``enable_group_offload``, one block on the device at a time) and leaf-level
    group offload (``apply_group_offloading``) of the other model components."""
    if mode not in OFFLOADS:
        raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, got {mode!r}")
    if mode == "none":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        from diffusers.hooks import apply_group_offloading

        den = _denoiser(pipe)
        # without prefetch streams: a cached step skips blocks, so the next block to run is not
        # always the next in order (what stream prefetching assumes)
        den.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                 offload_type="block_level", num_blocks_per_group=1)
        for name, comp in pipe.components.items():
            if isinstance(comp, torch.nn.Module) and comp is not den:
                apply_group_offloading(comp, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                       offload_type="leaf_level")


def load_checkpoint(path: str, device: str, steps: int, prompt: Optional[str], prompt_embeds: Optional[str],
                    height: Optional[int], width: Optional[int], frames: Optional[int], dtype: Optional[str] = None,
                    offload: str = "none", cache_dir: Optional[str] = None) -> BenchModel:
    """A diffusers pipeline folder (``model_index.json``) or hub id (:func:`resolve_checkpoint`), its
    weights in ``dtype`` (``bf16``/``fp16``/``fp32``; default bf16 on CUDA, fp32 elsewhere), placed by
    :func:`apply_offload`. ``cache_dir``: the hub cache (default: huggingface_hub's, HF_HUB_CACHE)."""
    from diffusers import DiffusionPipeline

    dtype = dtype or ("bf16" if str(device).startswith("cuda") else "fp32")
    if dtype not in DTYPES:
        raise SystemExit(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    root = resolve_checkpoint(path, cache_dir)
    # components saved as [null, null] (no text encoder, say) must be passed as None explicitly
    absent = {k: None for k, v in json.loads((root / "model_index.json").read_text()).items()
              if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}
    pipe = DiffusionPipeline.from_pretrained(str(root), dtype=DTYPES[dtype], **absent)  # diffusers >= 0.42: dtype
    apply_offload(pipe, offload, device)
    kw = dict(num_inference_steps=steps, output_type="pt")
    if prompt_embeds is not None:
        embeds = torch.load(prompt_embeds, map_location=device)
        if not isinstance(embeds, dict) or "prompt_embeds" not in embeds:
            raise SystemExit(f"--prompt-embeds {prompt_embeds}: expected a torch.save'd dict with 'prompt_embeds' "
                             "(and optionally 'negative_prompt_embeds')")
        kw.update({k: v.to(device, DTYPES[dtype]) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                   for k, v in embeds.items()})
    elif getattr(pipe, "text_encoder", None) is not None:
        kw["prompt"] = prompt or "a red circle moving to the right"
    else:
        raise SystemExit(f"--checkpoint {path}: the pipeline has no text encoder; pass --prompt-embeds FILE")
    for k, v in (("height", height), ("width", width), ("num_frames", frames)):
        if v is not None:
            kw[k] = v
    family = "unet" if getattr(pipe, "unet", None) is not None else "dit"
    name = root.name if Path(path).expanduser().exists() else path
    extra = "" if offload == "none" else f", offload {offload}"
    return BenchModel(pipe, kw, family, False, f"checkpoint {name} ({type(pipe).__name__}, {dtype}{extra})",
                      device=device)


MODELS: Dict[str, Callable] = {
    "wan-proxy": _proxy("wan_proxy"),
    "unet-proxy": _proxy("unet_proxy"),
    "cogvideox-proxy": _proxy("cogvideox_proxy"),  # a second DiT family (CogVideoX 1.0 layout, v-prediction)
    "wan-tiny": _wan_tiny,
    **{name: _realistic(name) for name in bench_models.REALISTIC},
}
SIZED_MODELS = tuple(bench_models.REALISTIC)  # take --scale / --height / --width / --frames

# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


@dataclass
class Method:
    name: str
    families: tuple
    enable: Callable  # (model: BenchModel, steps) -> None
    disable: Callable  # (model: BenchModel) -> None
    ours: bool = True
    unavailable: Callable = lambda: None  # () -> reason the method cannot run here, or None
    # (model) -> reason it cannot apply to this model, or None; asked after the reference run
    applies: Callable = lambda model: None
    settings: dict = field(default_factory=dict)  # what the method ran with (results.json)


def _not_installed(module: str, pip_name: str):
    def check():
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return f"not installed (pip install {pip_name})"
        return None

    return check


# cache-dit's documented default is DBCache F8B0 (Fn_compute_blocks=8 first blocks always computed,
# Bn_compute_blocks=0 last ones), residual_diff_threshold 0.08, max_warmup_steps 8
# (cache_dit/caching/cache_contexts/cache_config.py and its user guide on DBCache). Fn must not
# exceed the block count (it asserts), and its docs show F1B0 (first block only, FBCache's scheme)
# as the fast setting and recommend TaylorSeer with "DBCache FnB0". The rule here, from the depth:
# F8B0 when the denoiser has at least 16 blocks (half or more of them left to cache), else F1B0.
CACHE_DIT_FN_DEEP, CACHE_DIT_DEEP_BLOCKS = 8, 16
CACHE_DIT_THRESHOLD = 0.08  # DBCacheConfig's default residual_diff_threshold
CACHE_DIT_WARMUP = 8  # DBCacheConfig's default max_warmup_steps, for its 28-50-step examples


def cache_dit_blocks(pipe) -> List[int]:
    """Block count of each block list cache-dit's registered adapter for ``pipe`` caches; a
    ValueError saying why when cache-dit has no adapter for the pipeline (it matches pipelines by
    class-name prefix: Wan*, HunyuanVideo*, CogVideoX*, LTX*, ...)."""
    from cache_dit import BlockAdapter, BlockAdapterRegister

    name = type(pipe).__name__
    if not BlockAdapterRegister.is_supported(pipe):
        raise ValueError(f"cache-dit has no block adapter for {name} (cache_dit.supported_pipelines() lists "
                         "the pipeline-name prefixes it matches)")
    with _cache_dit_quiet():
        adapter = BlockAdapter.normalize(BlockAdapterRegister.get_adapter(pipe), unique=False)
    return [len(blocks) for blocks in BlockAdapter.flatten(adapter.blocks)]


def cache_dit_fn(num_blocks: int) -> int:
    """Fn_compute_blocks for a block list of ``num_blocks`` blocks (the rule above)."""
    return CACHE_DIT_FN_DEEP if num_blocks >= CACHE_DIT_DEEP_BLOCKS else 1


def _cache_dit_quiet():
    """cache-dit logs every adapter match and hook release at INFO/WARNING to stdout, where the
    bench's table goes: its loggers are raised to ERROR while the bench calls it."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def quiet():
        loggers = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)
                   if n == "CACHE_DIT" or n.startswith("cache_dit")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    return quiet()


def _cache_dit(threshold=None, taylorseer=False):
    """cache-dit's DBCache through its own API (``cache_dit.enable_cache(pipe, cache_config=...)``,
    its registered adapter for the pipeline), Fn from the depth (:func:`cache_dit_fn`), B0; with
    ``taylorseer`` its TaylorSeer calibrator (order 1, its default) on the cached blocks' residual."""
    threshold = CACHE_DIT_THRESHOLD if threshold is None else threshold
    settings = {"residual_diff_threshold": threshold, "Fn_compute_blocks": f"{CACHE_DIT_FN_DEEP} if >= "
                f"{CACHE_DIT_DEEP_BLOCKS} blocks else 1", "Bn_compute_blocks": 0,
                "max_warmup_steps": f"min({CACHE_DIT_WARMUP}, 20% of steps)",
                "calibrator": "TaylorSeer order 1" if taylorseer else None}

    def enable(model, steps):
        import cache_dit
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        fn = cache_dit_fn(min(cache_dit_blocks(model.pipe)))
        # its default 8 warm-up steps are for 28-50-step runs; at shorter schedules it gets lightcache's
        # own warm-up (20% of the steps) so that it is not handicapped against ours
        warmup = min(CACHE_DIT_WARMUP, _warmup(steps))
        settings.update(Fn_compute_blocks=fn, max_warmup_steps=warmup)
        config = DBCacheConfig(Fn_compute_blocks=fn, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                               max_warmup_steps=warmup, num_inference_steps=steps)
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=1) if taylorseer else None
        with _cache_dit_quiet():
            cache_dit.enable_cache(model.pipe, cache_config=config, calibrator_config=calibrator)

    def disable(model):
        import cache_dit

        with _cache_dit_quiet():
            cache_dit.disable_cache(model.pipe)

    return (enable, disable), settings


def _cache_dit_applies(model: BenchModel) -> Optional[str]:
    try:
        cache_dit_blocks(model.pipe)
    except ValueError as exc:
        return f"not applicable: {exc}"
    return None


def _deepcache_pkg(interval=3):
    def enable(model, steps):
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=model.pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=0)
        helper.enable()
        model.pipe._lightcache_bench_deepcache = helper

    def disable(model):
        model.pipe._lightcache_bench_deepcache.disable()
        del model.pipe._lightcache_bench_deepcache

    return (enable, disable), {"cache_interval": interval, "cache_branch_id": 0}


def _ours(policy_fn, memory_fn=None):
    def enable(model, steps):
        memory = memory_fn(model.pipe, model.device) if memory_fn else None
        lightcache.enable(model.pipe, policy=policy_fn(steps), memory=memory)

    def disable(model):
        lightcache.disable(model.pipe)

    return enable, disable


def _mem_plan(pipe, device=None):
    """The bench's memory plan for ``pipe`` computing on ``device`` (default: where the denoiser's
    parameters are; under --offload they are on the host, so the bench passes its --device)."""
    from lightcache import MemoryPlan

    # On CUDA, feature chunk from a byte budget for the widest chunked intermediate (1/32 of the
    # device's memory), not a fixed 256 rows (which cut a Wan2.1-1.3B block at 480p into ~55 pieces).
    # On CPU, the proxies' 256 rows: what puts the Wan proxy's flash+swap denoise peak below the
    # uncached one (1.84 vs 2.12 MiB; the budget's "auto" rows do not split the proxy's 576 tokens).
    device = torch.device(device) if device is not None else next(_denoiser(pipe).parameters()).device
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory // 32
        return MemoryPlan(swap="on", chunk_size="auto", chunk_budget=budget)
    return MemoryPlan(swap="on", chunk_size=256)


def _warmup(steps):
    return max(1, round(0.2 * steps))


def _hook_names(model) -> set:
    """(submodule name, diffusers hook name) of every hook on ``model``'s submodules (the root's own
    registry not counted)."""
    return {(name, hook) for name, m in model.named_modules() if m is not model
            for hook in getattr(getattr(m, "_diffusers_hook", None), "hooks", None) or ()}


def _hooked_modules(model) -> int:
    """Submodules of ``model`` carrying a diffusers hook (the root's own registry not counted)."""
    return len({name for name, _ in _hook_names(model)})


def _diffusers_peer(make_config):
    """enable/disable through ``transformer.enable_cache(config)``. A config that hooks no block
    would silently run the uncached model: that is an error here, not a 1.0x row. Only hooks the
    config added count (under --offload group every block already carries diffusers' offload hook)."""

    def enable(model, steps):
        den = getattr(model.pipe, "transformer", None)
        if den is None or not hasattr(den, "enable_cache"):
            raise RuntimeError("the denoiser has no diffusers enable_cache()")
        config = make_config(model, steps)
        before = _hook_names(den)
        den.enable_cache(config)
        if not _hook_names(den) - before:
            den.disable_cache()
            raise RuntimeError(f"{type(config).__name__} hooked no module of {type(den).__name__}: nothing would be cached")

    def disable(model):
        model.pipe.transformer.disable_cache()

    return enable, disable


FBC_THRESHOLD = 0.2


def _fbc(threshold=None):
    from diffusers import FirstBlockCacheConfig

    # 0.2: the value of diffusers' own documented example (apply_first_block_cache's docstring,
    # diffusers/hooks/first_block_cache.py); diffusers documents no Wan-specific value. The config's
    # default 0.05 skips no step of the Wan proxy (block FLOPs 1.00 at 20 steps), 0.2 runs 0.59 of them.
    threshold = FBC_THRESHOLD if threshold is None else threshold

    return _diffusers_peer(lambda model, steps: FirstBlockCacheConfig(threshold=threshold)), {"threshold": threshold}


# TaylorSeer forecasts the attention and feed-forward outputs of every block. diffusers' default
# patterns (re.fullmatch of "^blocks.*attn") match no module of Wan, CogVideoX or LTX, whose
# attentions are named attn1/attn2 — with them TaylorSeer silently caches nothing.
TAYLORSEER_MODULES = (r"(blocks|transformer_blocks|single_transformer_blocks|temporal_transformer_blocks)\.\d+\."
                      r"(attn\d*|ff|ffn)",)


def _taylorseer(cache_interval=None):
    from diffusers import TaylorSeerCacheConfig

    cache_interval = 5 if cache_interval is None else cache_interval  # diffusers' default (warm-up 3, order 1 too)

    def make(model, steps):
        # factors in the model's dtype: diffusers' bf16 default would round an fp32 model's features
        return TaylorSeerCacheConfig(cache_interval=cache_interval, cache_identifiers=list(TAYLORSEER_MODULES),
                                     taylor_factors_dtype=model.pipe.transformer.dtype)

    return _diffusers_peer(make), {"cache_interval": cache_interval, "cache_identifiers": list(TAYLORSEER_MODULES)}


def _pab(skip_range=None):
    from diffusers import PyramidAttentionBroadcastConfig

    # 2 with the config's default timestep range (100, 800): diffusers' documented example
    # (apply_pyramid_attention_broadcast's docstring, CogVideoX); the block skip ranges default to None (off)
    skip_range = 2 if skip_range is None else skip_range

    def make(model, steps):
        pipe = model.pipe
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=skip_range,
                                               current_timestep_callback=lambda: pipe.current_timestep)

    return _diffusers_peer(make), {"spatial_attention_block_skip_range": skip_range}


CALIBRATION_SEED = 1  # MagCache calibrates on another seed than the evaluated one (seed 0)


def magcache_ratios(model: BenchModel, steps: int) -> List[float]:
    """``mag_ratios`` for diffusers MagCache from its own calibration mode: one uncached run with
    ``MagCacheConfig(calibrate=True)`` (seed :data:`CALIBRATION_SEED`), whose printed per-step ratios are
    read back. With guidance as separate calls each branch prints its list; the element-wise mean is
    used, because one config serves both branches. Cached on the model per step count."""
    import ast
    import contextlib
    import io

    from diffusers import MagCacheConfig

    key = ("magcache", steps)
    if key in model.calibration:
        return model.calibration[key]
    status(f"diffusers-magcache: calibrating mag_ratios first (MagCacheConfig(calibrate=True), one {steps}-step run, "
           f"seed {CALIBRATION_SEED})")
    den = model.pipe.transformer
    den.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            model.pipe(**model.kwargs, generator=torch.Generator("cpu").manual_seed(CALIBRATION_SEED))
    finally:
        den.disable_cache()
    lists = []
    for line in printed.getvalue().splitlines():
        if line.startswith("[") and not line.startswith("[MagCache"):
            values = ast.literal_eval(line)
            if isinstance(values, list) and len(values) == steps:
                lists.append([float(v) for v in values])
    if not lists:
        raise RuntimeError("diffusers MagCache calibration printed no ratio list of the run's length "
                           f"({steps}); its calibrate output format may have changed")
    model.calibration[key] = [sum(v) / len(v) for v in zip(*lists)]
    return model.calibration[key]


def _magcache(threshold=None):
    from diffusers import MagCacheConfig

    threshold = 0.06 if threshold is None else threshold  # diffusers' default (max 3 skips, first 20% kept)

    settings = {"threshold": threshold}

    def make(model, steps):
        ratios = magcache_ratios(model, steps)
        settings["mag_ratios"] = [round(r, 4) for r in ratios]
        settings["calibration"] = (f"diffusers MagCacheConfig(calibrate=True), one uncached run, seed {CALIBRATION_SEED}, "
                                   "mean over guidance branches")
        return MagCacheConfig(threshold=threshold, num_inference_steps=steps, mag_ratios=ratios)

    return _diffusers_peer(make), settings


def _frame_layout(den) -> Optional[str]:
    """The frame layout ("BCFHW"/"BFCHW", FasterCache's tensor_format) of the latent video ``den``
    returns, from its family's latent layout in lightcache's model registry; None when the family
    packs its latent as tokens (LTX-Video) or is not registered. FasterCache splits the latent into
    frames for its low/high-frequency CFG approximation."""
    from lightcache.models import family_for

    try:
        return family_for(den).adapter.layout.tensor_format
    except ValueError:  # not a lightcache family: the caller says FasterCache does not apply
        return None


def _framed_denoisers():
    from lightcache.models import families

    return sorted(c for f in families() if not f.adapter.unet and f.adapter.layout.tensor_format
                  for c in f.adapter.model_classes)


def _fastercache_applies(model: BenchModel) -> Optional[str]:
    den = _denoiser(model.pipe)
    layout = _frame_layout(den)
    if layout is None:
        return (f"not applicable: FasterCache needs the denoiser's frame layout; {type(den).__name__} is not one of "
                f"{', '.join(_framed_denoisers())}")
    if not model.denoiser_batches:  # no reference run recorded them yet (the sweep asks first)
        _record_denoiser_batches(model)
    batches = sorted(set(model.denoiser_batches))
    # the bench's inputs hold one prompt, so a batch of 2 is the uncond + cond pair
    if batches != [2]:
        return (f"not applicable: {type(model.pipe).__name__} called the denoiser {len(model.denoiser_batches)} times "
                f"with batch {'/'.join(map(str, batches)) or '?'}; diffusers FasterCache needs the uncond and cond "
                "branches batched in one call (batch 2)")
    return None


def _record_denoiser_batches(model: BenchModel) -> None:
    """One uncached run that records the denoiser's input batch per call into ``model.denoiser_batches``."""
    batches = []
    probe = _denoiser(model.pipe).register_forward_pre_hook(
        lambda mod, args, kwargs: batches.append(_latent_batch(args, kwargs)), with_kwargs=True)
    try:
        _run(model, model.device)
    finally:
        probe.remove()
    model.denoiser_batches = batches


def _fastercache(skip_range=None):
    from diffusers import FasterCacheConfig

    # the values of diffusers' FasterCache documentation example (CogVideoX); the sweep varies the
    # spatial attention skip range as it does PAB's (2-4)
    skip_range = 2 if skip_range is None else skip_range

    def make(model, steps):
        pipe = model.pipe
        return FasterCacheConfig(
            spatial_attention_block_skip_range=skip_range, spatial_attention_timestep_skip_range=(-1, 681),
            current_timestep_callback=lambda: pipe.current_timestep, attention_weight_callback=lambda _: 0.3,
            unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
            tensor_format=_frame_layout(pipe.transformer))

    return _diffusers_peer(make), {"spatial_attention_block_skip_range": skip_range,
                                   "unconditional_batch_skip_range": 5, "attention_weight": 0.3}


def make_method(name: str, knob=None) -> Method:
    """The method ``name``; ``knob`` replaces the value of its threshold-like setting (the one
    :data:`SWEEPS` varies; DeepCache: the interval)."""
    from lightcache import DeepCache, EasyCache, ForecastCache, PreciseCache

    def ours(fams, pair, settings):
        return Method(name, fams, pair[0], pair[1], True, settings=settings)

    def peer(fams, made, unavailable=lambda: None, applies=lambda model: None):
        (enable, disable), settings = made
        return Method(name, fams, enable, disable, False, unavailable, applies, settings)

    if name in ("easycache", "easycache+mem"):
        tau = 0.05 if knob is None else knob
        mem = _mem_plan if name.endswith("+mem") else None
        return ours(("dit",), _ours(lambda n: EasyCache(threshold=tau, warmup_steps=_warmup(n)), mem),
                    {"threshold": tau, "warmup_steps": "20% of steps"})
    if name in ("forecast", "forecast+mem"):
        tau = 0.2 if knob is None else knob
        mem = _mem_plan if name.endswith("+mem") else None
        policy = ForecastCache(threshold=tau)  # its warm-up and gap weighting at their defaults
        return ours(("dit",), _ours(lambda n: policy, mem),
                    {"threshold": tau, "warmup_ratio": policy.warmup_ratio, "gap_power": policy.gap_power})
    if name in ("precise-base", "precise-turbo", "precise-flash", "precise-flash+mem"):
        mode = name.split("-")[1].split("+")[0]
        mem = _mem_plan if name.endswith("+mem") else None
        policy = PreciseCache(mode=mode, alpha=knob)
        return ours(("dit",), _ours(lambda n: policy, mem), {"mode": mode, "alpha": policy.alpha})
    if name in ("deepcache", "deepcache+mem"):
        interval = 3 if knob is None else knob
        mem = _mem_plan if name.endswith("+mem") else None
        # the DeepCache package's default branch (cache_branch_id 0: down block 0's first layer),
        # bit-identical to the package's output (tests/test_bench.py); DeepCache()'s own default
        # (branch 0 whole) skips less
        return ours(("unet",), _ours(lambda n: DeepCache.from_package(interval, 0), mem),
                    {"interval": interval, "branch": 0, "layer": 0})
    if name == "diffusers-fbc":
        return peer(("dit",), _fbc(knob))
    if name == "diffusers-taylorseer":
        return peer(("dit",), _taylorseer(knob))
    if name == "diffusers-pab":
        return peer(("dit",), _pab(knob))
    if name == "diffusers-magcache":
        return peer(("dit",), _magcache(knob))
    if name == "diffusers-fastercache":
        return peer(("dit",), _fastercache(knob), applies=_fastercache_applies)
    if name in ("cache-dit", "cache-dit-taylorseer"):
        # DiTs only: cache-dit has no adapter for a UNet pipeline (AnimateDiffPipeline: "not officially
        # supported ... set BlockAdapter"); a BlockAdapter on the UNet's down_blocks fails its forward-pattern
        # check (Pattern_0-2: no encoder_hidden_states input), and Pattern_3 forced runs into a shape
        # error: a UNet's forward takes each down block's skip outputs, which cache-dit's fused block
        # list does not return (measured with cache-dit 1.5.3 on the UNet proxy)
        return peer(("dit",), _cache_dit(knob, taylorseer=name.endswith("taylorseer")),
                    unavailable=_not_installed("cache_dit", "cache-dit"), applies=_cache_dit_applies)
    if name == "deepcache-pkg":
        return peer(("unet",), _deepcache_pkg(3 if knob is None else knob),
                    unavailable=_not_installed("DeepCache", "DeepCache"))
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


METHODS = (
    "easycache", "forecast", "precise-base", "precise-turbo", "precise-flash", "easycache+mem", "forecast+mem",
    "precise-flash+mem", "deepcache", "deepcache+mem", "diffusers-fbc", "diffusers-taylorseer", "diffusers-pab", "diffusers-magcache",
    "diffusers-fastercache", "cache-dit", "cache-dit-taylorseer", "deepcache-pkg",
)
QUICK_METHODS = ("easycache", "forecast", "precise-flash", "easycache+mem", "diffusers-fbc", "diffusers-magcache",
                 "diffusers-fastercache")
DEFAULT_METHODS = METHODS

# The swept setting of each threshold-like method and its default grid (--sweep).
SWEEPS: Dict[str, tuple] = {
    "easycache": ("threshold", (0.1, 0.2, 0.3, 0.5, 0.8)),
    # ForecastCache's gap-weighted E grows faster than EasyCache's: its thresholds reach 1.4-4.5x
    # of block work on the Wan and CogVideoX proxies at 50 steps
    "forecast": ("threshold", (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)),
    "precise-base": ("alpha", (0.3, 0.5, 0.7, 1.0)),
    "precise-flash": ("alpha", (0.3, 0.5, 0.7, 1.0)),
    "diffusers-fbc": ("threshold", (0.1, 0.2, 0.4, 0.8)),
    "diffusers-taylorseer": ("cache_interval", (2, 3, 4, 6)),
    "diffusers-pab": ("spatial_attention_block_skip_range", (2, 3, 4)),
    "diffusers-magcache": ("threshold", (0.02, 0.06, 0.12, 0.24)),
    "diffusers-fastercache": ("spatial_attention_block_skip_range", (2, 3, 4)),
    # cache-dit's documented thresholds: its default 0.08 and the 0.12-0.20 of its examples and
    # DBCache tables (F1B0 at 0.08/0.12/0.15/0.20), up to the 0.5 of its FoCa/DMD comparison figures
    "cache-dit": ("residual_diff_threshold", (0.08, 0.12, 0.16, 0.24, 0.5)),
    "cache-dit-taylorseer": ("residual_diff_threshold", (0.08, 0.12, 0.16, 0.24, 0.5)),
    # DeepCache's interval, both at the package's default branch (cache_branch_id 0 = down block
    # 0's first layer; ours through DeepCache.from_package)
    "deepcache": ("interval", (2, 3, 4, 5)),
    "deepcache-pkg": ("cache_interval", (2, 3, 4, 5)),
}

# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------

RANDOM_WEIGHTS_NA = "n/a (random weights)"


@dataclass
class Row:
    method: str
    status: str = "ok"
    settings: dict = field(default_factory=dict)
    times: List[float] = field(default_factory=list)  # seconds of each timed repeat
    time_s: Optional[float] = None  # median of ``times``
    time_range_s: Optional[List[float]] = None  # [min, max] of ``times``
    speedup: Optional[float] = None  # median reference time / median time
    speedup_range: Optional[List[float]] = None  # [min, max] over rounds of reference time / time in that round
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    flicker: Optional[float] = None
    reuse_ratio: Optional[float] = None
    # FLOPs (matmuls and attention, torch's FLOP counter) that ran inside the denoiser's blocks over
    # the metered run, and their fraction of the reference run's: the compute-normalised view
    block_flops: Optional[int] = None
    block_flops_ratio: Optional[float] = None
    block_compute_ratio: Optional[float] = None  # lightcache methods: report(pipe).block_compute_ratio
    peak_bytes: Dict[str, Optional[int]] = field(default_factory=dict)
    cache_bytes: Dict[str, int] = field(default_factory=dict)
    timeline: List[dict] = field(default_factory=list)
    note: Optional[str] = None  # what is missing from an "ok" row, and why (printed under the table)


def _frames(out) -> torch.Tensor:
    v = out.frames if hasattr(out, "frames") else out[0]
    if isinstance(v, list):
        v = torch.stack([torch.as_tensor(x) for x in v])
    return v.float().cpu()


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _run(model: BenchModel, device, seed: int = 0) -> tuple:
    _sync(device)
    t = time.perf_counter()
    out = model.pipe(**model.kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    _sync(device)
    return time.perf_counter() - t, _frames(out)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and the weighted sum of V: 2·B·H·Sq·Sk·(D + Dv). torch's FLOP counter has this formula
    for the CUDA attention kernels only; the CPU one gets it here, so CPU and GPU runs count alike."""
    *batch, sq, d = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * sq * sk * (d + dv)


def _flop_mode():
    """A dispatch mode adding up the FLOPs of every op torch's FLOP counter has a formula for
    (matmuls, convolutions, attention; torch.utils.flop_counter's registry, plus the CPU attention
    kernel). Its own mode rather than FlopCounterMode: that one also tracks the module hierarchy of
    every op, which made a counted run of the Wan proxy 2.6x slower than this does."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry, shape_wrapper

    registry = {**flop_registry, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(_sdpa_flops)}

    class FlopCount(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
            return out

    return FlopCount


class BlockFlops:
    """Within ``with BlockFlops(denoiser) as bf:``, ``bf.flops`` sums the FLOPs that ran inside the
    denoiser's blocks (the block lists of its lightcache adapter; a UNet's down, mid and up blocks):
    the FLOP count (:func:`_flop_mode`) is on during each block call only, so the VAE and the rest
    of the pipeline run at full speed. A block a cache skipped adds nothing even where the cache
    keeps the block's call and replaces only its forward (diffusers' hooks), and a block that ran
    only its attention or only its FFN adds that part: counting block calls with forward hooks
    would count those skipped calls as run."""

    def __init__(self, denoiser):
        from lightcache.models import adapter_for

        self.blocks = adapter_for(denoiser).blocks(denoiser)
        if not self.blocks:
            raise ValueError(f"no block list found in {type(denoiser).__name__}")
        self.flops = 0
        self._open = []  # the count of the block call in progress (a block that raised leaves it open)

    def __enter__(self):
        mode = _flop_mode()

        def pre(module, args):
            counter = mode()
            counter.__enter__()
            self._open.append(counter)

        def post(module, args, out):
            self._close()

        self._handles = [h for b in self.blocks for h in (b.register_forward_pre_hook(pre),
                                                           b.register_forward_hook(post))]
        return self

    def _close(self):
        counter = self._open.pop()
        counter.__exit__(None, None, None)
        self.flops += counter.flops

    def __exit__(self, *exc):
        while self._open:
            self._close()
        for h in self._handles:
            h.remove()
        return False


def _latent_batch(args, kwargs) -> Optional[int]:
    x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else None


def _counted_run(model: BenchModel, device, seed: int = 0) -> tuple:
    """One run with its block FLOPs counted (:class:`BlockFlops`): (video, block FLOPs)."""
    with BlockFlops(_denoiser(model.pipe)) as bf:
        _, video = _run(model, device, seed)
    return video, bf.flops


def _metered(model: BenchModel, method: Optional[Method], steps: int, device) -> tuple:
    """One run with the stage meter and the block-FLOP count on: (video, report, note, block FLOPs).
    The reference run (``method=None``)
    also records the denoiser's input batch per call into ``model.denoiser_batches``. A peer beside
    which lightcache refuses to be enabled, even as a meter only, runs unmetered: report None and
    ``note`` says why (its speed-up and fidelity still count)."""
    from lightcache import MemoryPlan

    track = MemoryPlan(cpu_tracker=device == "cpu", cuda_peaks=device != "cpu")
    probe = None
    if method is None:
        model.denoiser_batches = []
        probe = _denoiser(model.pipe).register_forward_pre_hook(
            lambda mod, args, kwargs: model.denoiser_batches.append(_latent_batch(args, kwargs)), with_kwargs=True)
    else:
        method.enable(model, steps)
    note = None
    try:
        if method is None or not method.ours:
            try:
                lightcache.enable(model.pipe, policy=None, memory=track)
            except ValueError as exc:  # e.g. lightcache's refusal to stack on another cache
                if method is None:
                    raise
                reason = str(exc).splitlines()[0] if str(exc) else ""
                note = f"memory not metered: {type(exc).__name__}: {reason[:100]}{'...' if len(reason) > 100 else ''}"
                video, flops = _counted_run(model, device)
                return video, None, note, flops
        else:  # our method: keep its plan, add the meter
            s = _denoiser(model.pipe)._lightcache_session
            if s.memory is None:
                s.memory = track
            else:
                from dataclasses import replace

                s.memory = replace(s.memory, cpu_tracker=device == "cpu", cuda_peaks=device != "cpu")
        video, flops = _counted_run(model, device)
        rep = lightcache.report(model.pipe)
    finally:
        lightcache.disable(model.pipe)
        if probe is not None:
            probe.remove()
        if method is not None and not method.ours:
            method.disable(model)
    return video, rep, note, flops


def _fidelity(row: Row, video: torch.Tensor, ref: torch.Tensor) -> None:
    row.psnr = metrics.psnr(video, ref)
    row.ssim = metrics.ssim(video, ref) if min(video.shape[-2:]) >= 11 else None
    row.flicker = metrics.flicker(video, ref)


def _time_alternating(model: BenchModel, device, methods: List[Method], rows: Dict[str, Row], ref: Row, steps: int,
                      repeats: int, no_progress: bool, desc: str) -> None:
    """``repeats`` rounds of the reference then each method, after one warm-up run; speed-ups from medians."""
    from tqdm.auto import tqdm

    with tqdm(total=repeats * (1 + len(methods)), desc=desc, disable=no_progress) as bar:
        _run(model, device)  # warm-up
        t0 = time.perf_counter()
        for i in range(repeats):
            ref.times.append(_run(model, device)[0])
            bar.update()
            for method in methods:
                method.enable(model, steps)
                try:
                    t, _ = _run(model, device)
                finally:
                    method.disable(model)
                rows[method.name].times.append(t)
                bar.update()
            spent = time.perf_counter() - t0
            if repeats > 1:
                status(f"{desc}: round {i + 1}/{repeats} done ({spent:.0f} s so far, ETA "
                       f"{spent / (i + 1) * (repeats - i - 1):.0f} s)")
    ref_t = statistics.median(ref.times)
    for r in [ref, *(rows[m.name] for m in methods)]:
        r.time_s = statistics.median(r.times)
        r.time_range_s = [min(r.times), max(r.times)]
        r.speedup = ref_t / r.time_s
        rounds = [a / b for a, b in zip(ref.times, r.times)]  # the reference ran first in the same round
        r.speedup_range = [min(rounds), max(rounds)]


def _header(args, model: BenchModel, device) -> dict:
    return {
        "model": args.checkpoint or args.model,
        "model_description": model.description,
        "random_weights": model.random_weights,
        "fidelity": RANDOM_WEIGHTS_NA if model.random_weights else "against the uncached output (same seed and inputs)",
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "lightcache": lightcache.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "repeats": args.repeats,
    }


def _load_model(args) -> BenchModel:
    t0 = time.perf_counter()
    status(f"loading {args.checkpoint or args.model} on {args.device} ...")
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint, args.device, args.steps, args.prompt, args.prompt_embeds,
                                args.height, args.width, args.frames, dtype=args.dtype, offload=args.offload)
    elif args.model in SIZED_MODELS:
        model = MODELS[args.model](args.device, args.steps, scale=args.scale, height=args.height, width=args.width,
                                   frames=args.frames)
    else:
        model = MODELS[args.model](args.device, args.steps)
    model.device = args.device
    model.pipe.set_progress_bar_config(disable=True)
    status(f"loaded {model.description} in {time.perf_counter() - t0:.1f} s")
    return model


def bench(args) -> dict:
    from tqdm.auto import tqdm

    device = args.device
    model = _load_model(args)
    rows: List[Row] = [Row("none (reference)")]
    candidates: List[Method] = []
    for name in args.methods:
        if name not in METHODS:
            rows.append(Row(name, status=f"unknown method (known: {', '.join(sorted(METHODS))})"))
            continue
        method = make_method(name)
        row = Row(name, settings=method.settings)
        rows.append(row)
        if model.family not in method.families:
            row.status = f"does not apply to a {model.family} model"
        elif method.unavailable() is not None:
            row.status = method.unavailable()
        else:
            candidates.append(method)
    by_name = {r.method: r for r in rows}

    status(f"reference run (uncached, {args.steps} steps, memory meter on) ...")
    t0 = time.perf_counter()
    ref_video, ref_rep, _, ref_flops = _metered(model, None, args.steps, device)
    status(f"reference run took {time.perf_counter() - t0:.1f} s; next: {len(candidates)} methods, one metered run "
           f"each, then {args.repeats} timed rounds")
    by_name["none (reference)"].peak_bytes = dict(ref_rep.peak_bytes)
    by_name["none (reference)"].timeline = list(ref_rep.timeline)
    by_name["none (reference)"].block_flops, by_name["none (reference)"].block_flops_ratio = ref_flops, 1.0
    videos = {"none (reference)": ref_video}
    runnable = []
    for method in candidates:  # some peers' applicability depends on what the reference run did
        reason = method.applies(model)
        if reason is not None:
            by_name[method.name].status = reason
        else:
            runnable.append(method)
    for method in tqdm(runnable, desc="fidelity + memory", disable=args.no_progress):
        row = by_name[method.name]
        try:
            video, rep, row.note, row.block_flops = _metered(model, method, args.steps, device)
        except Exception as exc:  # a peer that fails must not stop the others
            row.status = f"failed: {type(exc).__name__}: {exc}"
            continue
        videos[method.name] = video
        row.block_flops_ratio = row.block_flops / ref_flops
        if rep is not None:
            if method.ours:
                row.block_compute_ratio = rep.block_compute_ratio
            row.peak_bytes = dict(rep.peak_bytes)
            row.cache_bytes = dict(rep.cache_bytes)
            row.timeline = list(rep.timeline)
            row.reuse_ratio = rep.reuse_ratio if method.ours else None
        if not model.random_weights:
            _fidelity(row, video, ref_video)

    ok = [m for m in runnable if by_name[m.name].status == "ok"]
    _time_alternating(model, device, ok, by_name, by_name["none (reference)"], args.steps, args.repeats,
                      args.no_progress, "timing (alternating)")

    result = {**_header(args, model, device), "rows": [r.__dict__ for r in rows]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(format_table(result))
    written = write_plots(result, videos, out)
    print(f"\nwrote {out / 'results.json'}, {', '.join(written)}")
    if not bench_plots.ffmpeg_available():
        print("(no side_by_side.mp4: pip install imageio-ffmpeg for one)")
    return result


def _fmt(v, spec, na="n/a"):
    if v is None:
        return na
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _range(r: Optional[list], spec: str) -> str:
    return "n/a" if not r else f"{format(r[0], spec)}-{format(r[1], spec)}"


def format_table(result: dict) -> str:
    """The terminal table; README.md ("Results") defines its columns."""
    random = result["random_weights"]
    fid_head = f"{'fidelity':<20}" if random else f"{'PSNR dB':>8} {'SSIM':>6} {'flicker':>8}"
    head = (f"{'method':<22} {'speed-up':>8} {'min-max':>11} {'time s':>8} {'min-max':>15} {'reuse':>6} "
            f"{'blk FLOPs':>9} {fid_head} "
            f"{'peak denoise':>13} {'peak decode':>12}  status")
    lines = [f"lightcache bench: {result['model_description']} on {result['device']}, {result['steps']} steps, "
             f"median of {result['repeats']} alternating runs", head, "-" * len(head)]
    for r in result["rows"]:
        pk = r["peak_bytes"] or {}
        ref = r["method"] == "none (reference)"
        if random:
            fid = f"{RANDOM_WEIGHTS_NA if r['status'] == 'ok' and not ref else '-':<20}"
        else:
            fid = (f"{_fmt(r['psnr'], '8.2f', '-' if ref else 'n/a'):>8} {_fmt(r['ssim'], '6.3f', 'n/a'):>6} "
                   f"{_fmt(r['flicker'], '8.4f', 'n/a'):>8}")
        lines.append(
            f"{r['method']:<22} {_fmt(r['speedup'], '8.2f'):>8} {_range(r.get('speedup_range'), '.2f'):>11} "
            f"{_fmt(r.get('time_s'), '8.3f'):>8} {_range(r.get('time_range_s'), '.3f'):>15} "
            f"{_fmt(r['reuse_ratio'], '6.2f'):>6} {_fmt(r.get('block_flops_ratio'), '9.2f'):>9} {fid} "
            f"{_mb(pk.get('denoise')):>13} {_mb(pk.get('decode')):>12}  "
            f"{r['status']}"
        )
    if random:
        lines.append(f"fidelity {RANDOM_WEIGHTS_NA}: against the reference it means nothing, so it is not reported")
    for r in result["rows"]:
        if r.get("note"):
            lines.append(f"note: {r['method']}: {r['note']}")
    return "\n".join(lines)


def _mb(b):
    return "n/a" if b is None else f"{b / 2**20:.2f} MiB"


def write_plots(result: dict, videos: dict, out: Path) -> List[str]:
    """pareto.png, memory.png, timeline.png and the side-by-side clip (lightcache.bench_plots)."""
    for name, fig in (("pareto.png", bench_plots.pareto_figure(result)), ("memory.png", bench_plots.memory_figure(result)),
                      ("timeline.png", bench_plots.timeline_figure(result))):
        bench_plots.save(fig, out / name)
    return ["pareto.png", "memory.png", "timeline.png", *bench_plots.write_side_by_side(result, videos, out)]


# ---------------------------------------------------------------------------------------------
# threshold sweeps (--sweep)
# ---------------------------------------------------------------------------------------------

PSNR_FLOOR_DB, SPEEDUP_GOAL = 30.0, 2.5  # the DiT-proxy target: >= 2.5x at PSNR >= 30 dB
# issue 12's target: lightcache's envelope above each peer's at every matched speed-up in 1.5-3x;
# the margins are also reported at these speed-ups
MATCH_WINDOW = (1.5, 3.0)
MARGIN_GRID = (1.5, 2.0, 2.5, 3.0)


def _grid(values: tuple, points: Optional[int]) -> tuple:
    """``points`` settings spread evenly over ``values`` (both ends kept); all of them for None."""
    if points is None or points >= len(values):
        return values
    if points == 1:
        return values[len(values) // 2:][:1]
    return tuple(values[round(i * (len(values) - 1) / (points - 1))] for i in range(points))


# --- conditions and seeds (--conditions, --seeds) ---


def sweep_condition(k: int):
    """The ``k``-th condition the sweep scores (a :class:`lightcache.proxy.data.Condition`): shape
    ``k mod 3``, colour ``k mod 4``, motion ``(k + k // 4) mod 4``. The first is condition 0 (red
    circle moving left, what the bench runs by default); the first 4 cover all 3 shapes, 4 colours
    and 4 motions; the first 48 are the 48 conditions, each once (k and k + 12 share shape and
    colour, and their motions differ)."""
    from lightcache.proxy.data import COLOURS, MOTIONS, NUM_CONDITIONS, SHAPES, Condition

    if not 0 <= k < NUM_CONDITIONS:
        raise ValueError(f"condition number must be in 0..{NUM_CONDITIONS - 1}, got {k}")
    return Condition(SHAPES[k % len(SHAPES)], COLOURS[k % len(COLOURS)], MOTIONS[(k + k // 4) % len(MOTIONS)])


def sweep_seed(j: int) -> int:
    """The ``j``-th sampling seed: 0, 2, 3, ...; seed :data:`CALIBRATION_SEED` (1) is MagCache's
    calibration run, so no method is scored on the run it was calibrated on."""
    return j if j < CALIBRATION_SEED else j + 1


def vocabulary_condition(model: BenchModel):
    """The proxy-vocabulary condition (:mod:`lightcache.proxy.data`) whose embeddings are
    ``model``'s ``prompt_embeds`` (compared exactly, at their width and token count), or None
    (a checkpoint's own prompt, a model without ``prompt_embeds``)."""
    from lightcache.proxy.data import ALL_CONDITIONS, prompt_embeds

    pe = model.kwargs.get("prompt_embeds")
    if not isinstance(pe, torch.Tensor) or pe.dim() != 3 or pe.shape[0] != 1:
        return None
    table = prompt_embeds(list(ALL_CONDITIONS), pe.shape[-1], pe.shape[-2]).to(pe.dtype)
    found = [c for c, e in zip(ALL_CONDITIONS, table) if torch.equal(e, pe[0].detach().cpu())]
    return found[0] if found else None


def condition_models(model: BenchModel, n: int) -> List[tuple]:
    """``(label, model)`` for each of the ``n`` conditions the sweep scores. ``n == 1``: ``model``
    as loaded (any trained model or checkpoint). Otherwise ``model`` must be driven by the proxy
    vocabulary (its ``prompt_embeds`` one of :func:`vocabulary_condition`'s, as every trained proxy
    of the bench is); its condition comes first, then :func:`sweep_condition`'s order without it,
    each as the same pipeline with that condition's embeddings (the rest of the call unchanged)."""
    from dataclasses import replace

    from lightcache.proxy.data import NUM_CONDITIONS, prompt_embeds

    base = vocabulary_condition(model)
    if n == 1:
        return [(str(base) if base is not None else "the model's own inputs", model)]
    if base is None:
        raise SystemExit(f"--conditions {n}: {model.description} is not driven by the proxy vocabulary's "
                         "prompt_embeds (lightcache.proxy.data), so there are no other conditions to score; "
                         "use a trained proxy (--model wan-proxy) or --conditions 1")
    order = [base] + [c for c in map(sweep_condition, range(NUM_CONDITIONS)) if c != base]
    pe = model.kwargs["prompt_embeds"]
    out = []
    for cond in order[:n]:
        embeds = prompt_embeds(cond, pe.shape[-1], pe.shape[-2]).to(pe.device, pe.dtype)
        out.append((str(cond), replace(model, kwargs={**model.kwargs, "prompt_embeds": embeds})))
    return out


def spread(values: List[float]) -> dict:
    """``n``, ``mean``, ``min``, ``max`` and ``std`` (sample standard deviation, n - 1; None for a
    single value) of ``values``. A PSNR of inf (output identical to the reference) makes the mean
    inf and the std None."""
    n = len(values)
    if n == 0:
        raise ValueError("spread of no values")
    finite = all(math.isfinite(v) for v in values)
    return {"n": n, "mean": sum(values) / n, "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if n > 1 and finite else None}


class _Progress:
    """Status lines for a fixed number of runs: what ran, elapsed, and an ETA from the mean time of
    the runs so far (rough: cached runs are faster than the references that come first)."""

    def __init__(self, total: int, what: str):
        self.total, self.done, self.what, self.t0 = total, 0, what, time.perf_counter()

    def step(self, label: str, n: int = 1) -> None:
        self.done += n
        spent = time.perf_counter() - self.t0
        eta = spent / self.done * (self.total - self.done)
        status(f"{self.what} {self.done}/{self.total}: {label} ({spent:.0f} s so far, ETA {eta:.0f} s)")


# --- envelopes and margins ---


def pareto_front(points: List[tuple]) -> List[tuple]:
    """The (speed-up, PSNR, ...) points no other point beats on both, by ascending speed-up
    (strictly ascending: of two points at one speed-up the lower PSNR is dominated).
    Points with a non-finite PSNR (output identical to the reference) are left out."""
    pts = sorted((p for p in points if math.isfinite(p[1])), key=lambda p: (-p[0], -p[1]))
    front, best = [], -math.inf
    for p in pts:  # fastest first: a point stays if it beats every faster point on PSNR
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front[::-1]


def psnr_at(front: List[tuple], speedup: float) -> Optional[float]:
    """PSNR of the envelope ``front`` (:func:`pareto_front`) at ``speedup``: linear between its
    points; None outside its slowest..fastest points, where it was not measured (no claim below the
    slowest point: a peer's point at 0.9x is not matched with our slowest point's PSNR)."""
    if not front or not front[0][0] <= speedup <= front[-1][0]:
        return None
    for (s0, p0, *_), (s1, p1, *_) in zip(front, front[1:]):
        if s0 <= speedup <= s1:
            return p0 + (p1 - p0) * (speedup - s0) / (s1 - s0)
    return front[0][1]  # a one-point front, at exactly its speed-up


def _margins(fo: List[tuple], fp: List[tuple], speeds) -> List[dict]:
    out = []
    for s in speeds:
        a, b = psnr_at(fo, s), psnr_at(fp, s)
        out.append({"speedup": s, "ours_psnr": a, "peer_psnr": b,
                    "margin_db": None if a is None or b is None else a - b})
    return out


def matched_comparison(ours: List[tuple], peer: List[tuple], window: tuple = MATCH_WINDOW,
                       grid: tuple = MARGIN_GRID) -> dict:
    """PSNR of ``ours`` minus ``peer`` at matched speed-ups, each side's Pareto envelope linear in
    speed-up (:func:`psnr_at`), only where both envelopes reach (``covered``: the larger slowest
    point to the smaller fastest point). ``matched``: at the ends of ``covered`` and every Pareto
    point of either side inside it; the difference of two piecewise-linear envelopes is extreme at
    those, so ``min_margin_db`` is the minimum over the whole covered range. ``window``: the same
    inside ``window`` (clipped to ``covered``; None when they do not meet). ``at``: the margin at
    each speed-up of ``grid`` (None where an envelope does not reach). Points are (speed-up, PSNR, ...)."""
    fo, fp = pareto_front(ours), pareto_front(peer)
    result = {"covered": None, "matched": [], "min_margin_db": None, "mean_margin_db": None,
              "ours_better_at_all": None, "window": None, "at": _margins(fo, fp, grid)}
    if not fo or not fp:
        return {**result, "note": "no finite-PSNR point on one side"}
    lo, hi = max(fo[0][0], fp[0][0]), min(fo[-1][0], fp[-1][0])
    if lo > hi:
        return {**result, "note": f"the envelopes share no speed-up (ours {fo[0][0]:.2f}-{fo[-1][0]:.2f}x, "
                                  f"peer {fp[0][0]:.2f}-{fp[-1][0]:.2f}x)"}

    def over(a, b):
        matched = _margins(fo, fp, sorted({a, b} | {p[0] for p in fo + fp if a <= p[0] <= b}))
        margins = [m["margin_db"] for m in matched]
        return matched, {"range": [a, b], "min_margin_db": min(margins), "mean_margin_db": sum(margins) / len(margins),
                         "ours_better_at_all": all(m > 0 for m in margins)}

    matched, summary = over(lo, hi)
    wlo, whi = max(lo, window[0]), min(hi, window[1])
    return {**result, "covered": [lo, hi], "matched": matched,
            **{k: summary[k] for k in ("min_margin_db", "mean_margin_db", "ours_better_at_all")},
            "window": over(wlo, whi)[1] if wlo <= whi else None}


def _envelope_points(ok: List[tuple], axis: str) -> Dict[str, List[tuple]]:
    """(speed-up, mean PSNR, value) of each method's settings; ``axis`` "wall": the timed speed-up,
    "flops": the block-FLOP speed-up (1 / fraction of the reference's block FLOPs that ran)."""
    curves: Dict[str, List[tuple]] = {}
    for name, value, method, row in ok:
        x = row.speedup if axis == "wall" else (1 / row.block_flops_ratio if row.block_flops_ratio else None)
        if x is not None:
            curves.setdefault(name, []).append((x, row.psnr, value))
    return curves


def _compare(curves: Dict[str, List[tuple]], ours_names: List[str], peer_names: List[str]) -> dict:
    ours_all = [p + (n,) for n in ours_names for p in curves.get(n, [])]
    out = {}
    for peer in peer_names:
        entry = {"ours": f"best of {', '.join(ours_names)}", **matched_comparison(ours_all, curves.get(peer, []))}
        entry["by_method"] = {n: {k: v for k, v in matched_comparison(curves.get(n, []), curves.get(peer, [])).items()
                                  if k not in ("matched", "at")} for n in ours_names}
        out[peer] = entry
    return out


def sweep(args) -> dict:
    device = args.device
    model = _load_model(args)
    if model.random_weights:
        raise SystemExit(f"--sweep compares PSNR against the uncached output, which is meaningless for "
                         f"{model.description}; use --model wan-proxy (trained) or --checkpoint DIR")
    names = args.methods
    unknown = [n for n in names if n not in SWEEPS]
    if unknown:
        raise SystemExit(f"--sweep: {', '.join(unknown)} cannot be swept; sweepable: {', '.join(SWEEPS)}")
    conditions = condition_models(model, args.conditions)
    seeds = [sweep_seed(j) for j in range(args.seeds)]
    skipped: Dict[str, str] = {}
    points: List[tuple] = []  # (family, value, Method, Row)
    for name in names:
        probe = make_method(name)
        reason = probe.unavailable() or (None if model.family in probe.families
                                         else f"does not apply to a {model.family} model") or probe.applies(model)
        if reason is not None:
            skipped[name] = reason
            continue
        knob, values = SWEEPS[name]
        for value in _grid(values, args.sweep_points):
            method = make_method(name, value)
            method.name = f"{name} {knob}={value}"
            points.append((name, value, method, Row(method.name, settings=method.settings)))

    # Fidelity: each (setting, condition, seed) runs once (the output is deterministic); the first
    # condition and seed's run also counts block FLOPs (which doubles a run's time) and gives the
    # reuse ratio. Timing: alternating rounds on the first condition and seed only, to bound the cost.
    runs = [(label, cmodel, seed) for label, cmodel in conditions for seed in seeds]
    status(f"sweep: {len(points)} settings x {len(conditions)} conditions x {len(seeds)} seeds "
           f"({', '.join(label for label, _ in conditions)}; seeds {', '.join(map(str, seeds))}): "
           f"{(1 + len(points)) * len(runs)} fidelity runs with the references, then {args.repeats} timed rounds of "
           f"{1 + len(points)} runs on the first condition and seed")
    t_start, load_start = time.perf_counter(), _loadavg()
    progress = _Progress((1 + len(points)) * len(runs), "sweep: fidelity run")
    ref = Row("none (reference)")
    ref_videos = []
    for i, (label, cmodel, seed) in enumerate(runs):
        if i == 0:
            video, ref.block_flops = _counted_run(cmodel, device, seed)
        else:
            video = _run(cmodel, device, seed)[1]
        ref_videos.append(video)
        progress.step(f"reference, {label}, seed {seed}")
    ref.block_flops_ratio = 1.0
    fidelity: Dict[str, dict] = {}
    for name, value, method, row in points:
        per_run = []
        try:
            for i, (label, cmodel, seed) in enumerate(runs):
                method.enable(cmodel, args.steps)
                try:
                    if i == 0:
                        video, row.block_flops = _counted_run(cmodel, device, seed)
                        if method.ours:
                            rep = lightcache.report(cmodel.pipe)
                            row.reuse_ratio, row.block_compute_ratio = rep.reuse_ratio, rep.block_compute_ratio
                    else:
                        video = _run(cmodel, device, seed)[1]
                finally:
                    method.disable(cmodel)
                ssim = metrics.ssim(video, ref_videos[i]) if min(video.shape[-2:]) >= 11 else None
                per_run.append({"condition": label, "seed": seed, "psnr": metrics.psnr(video, ref_videos[i]),
                                "ssim": ssim})
                progress.step(f"{method.name}, {label}, seed {seed}")
        except Exception as exc:  # one failing setting must not stop the sweep
            row.status = f"failed: {type(exc).__name__}: {exc}"
            progress.step(f"{method.name} failed", len(runs) - len(per_run))
            continue
        psnr = spread([r["psnr"] for r in per_run])
        ssim = spread([r["ssim"] for r in per_run]) if per_run[0]["ssim"] is not None else None
        fidelity[method.name] = {"psnr_stats": psnr, "ssim_stats": ssim, "psnr_range": [psnr["min"], psnr["max"]],
                                 "runs": per_run}
        row.psnr, row.ssim = psnr["mean"], None if ssim is None else ssim["mean"]
        row.block_flops_ratio = row.block_flops / ref.block_flops
    t_fidelity = time.perf_counter() - t_start
    ok = [p for p in points if p[3].status == "ok"]
    rows = {p[2].name: p[3] for p in points}
    _time_alternating(model, device, [p[2] for p in ok], rows, ref, args.steps, args.repeats, args.no_progress,
                      "sweep: timing (alternating)")
    t_total = time.perf_counter() - t_start

    ours_names = list(dict.fromkeys(p[0] for p in ok if p[2].ours))
    peer_names = list(dict.fromkeys(p[0] for p in ok if not p[2].ours))
    comparison = _compare(_envelope_points(ok, "wall"), ours_names, peer_names)
    for peer, entry in _compare(_envelope_points(ok, "flops"), ours_names, peer_names).items():
        comparison[peer]["block_flops"] = entry
    reach = [(row.speedup, row.psnr, method.name) for name, value, method, row in ok
             if method.ours and row.psnr >= PSNR_FLOOR_DB]
    best = max(reach) if reach else None
    target = {"psnr_floor_db": PSNR_FLOOR_DB, "speedup_goal": SPEEDUP_GOAL,
              "best": None if best is None else {"method": best[2], "speedup": best[0], "psnr": best[1]},
              "met": best is not None and best[0] >= SPEEDUP_GOAL}

    result = {**_header(args, model, device), "mode": "sweep",
              "conditions": [label for label, _ in conditions], "seeds": seeds,
              "condition_rule": "lightcache.bench.sweep_condition: the model's own condition first, then shape "
                                "k mod 3, colour k mod 4, motion (k + k // 4) mod 4; seeds 0, 2, 3, ... (1 is "
                                "MagCache's calibration seed)",
              "aggregation": f"PSNR/SSIM against the uncached run of the same condition and seed, over "
                             f"{len(conditions)} conditions x {len(seeds)} seeds: mean, min-max, sample std; speed-up: "
                             f"median of {args.repeats} alternating rounds on the first condition and seed (min-max "
                             "over rounds); block FLOPs and reuse from the first condition and seed",
              "sweep": {name: {"setting": SWEEPS[name][0],
                               "points": [{"value": p[1], **p[3].__dict__, **fidelity.get(p[2].name, {})}
                                          for p in points if p[0] == name]}
                        for name in dict.fromkeys(p[0] for p in points)},
              "reference": ref.__dict__, "skipped": skipped, "comparison": comparison, "target": target,
              "comparison_method": "PSNR (mean over conditions x seeds) at matched speed-up: each side's Pareto "
                                   "envelope, linear in speed-up, compared only where both envelopes reach; "
                                   "block_flops: the same against 1 / block-FLOP fraction",
              "cost_s": {"fidelity": round(t_fidelity, 1), "timing": round(t_total - t_fidelity, 1),
                         "total": round(t_total, 1)},
              "load_average": {"start": load_start, "end": _loadavg()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    table = format_sweep(result)
    (out / "table.txt").write_text(table + "\n")
    print(table)
    _sweep_plot(result, out / "sweep.png")
    print(f"\nwrote {out / 'results.json'}, table.txt, sweep.png")
    return result


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not on every platform
        return None


def _stats_cells(stats: Optional[dict], width: int, digits: int) -> str:
    """mean, min-max and std cells of a :func:`spread`."""
    if stats is None:
        return f"{'n/a':>{width}} {'':>13} {'':>5}"
    rng = f"{_fmt(stats['min'], f'.{digits}f')}-{_fmt(stats['max'], f'.{digits}f')}"
    mean, std = _fmt(stats["mean"], f"{width}.{digits}f"), _fmt(stats["std"], f"5.{digits}f", "-")
    return f"{mean:>{width}} {rng:>13} {std:>5}"


def _margin(v: Optional[float]) -> str:
    return "." if v is None else f"{v:+.2f}"


def format_sweep(result: dict) -> str:
    """The sweep's table (every setting: speed-up with its spread, reuse, block-FLOP fraction, PSNR
    and SSIM mean / min-max / std over conditions x seeds), then the margins ours - peer at matched
    speed-up, by wall time and by block FLOPs, then the target."""
    n_cond, n_seed = len(result.get("conditions", [None])), len(result.get("seeds", [0]))
    head = (f"{'method':<22} {'setting':<38} {'speed-up':>8} {'min-max':>11} {'reuse':>6} {'blk FLOPs':>9} "
            f"{'PSNR dB':>8} {'min-max':>13} {'std':>5} {'SSIM':>6} {'min-max':>13} {'std':>5}  status")
    lines = [f"lightcache bench --sweep: {result['model_description']} on {result['device']}, {result['steps']} steps; "
             f"speed-up: median of {result['repeats']} alternating runs on the first condition and seed; "
             f"PSNR/SSIM over "
             f"{n_cond} conditions x {n_seed} seeds", head, "-" * len(head)]
    for name, s in result["sweep"].items():
        for p in s["points"]:
            psnr = p.get("psnr_stats") or (None if p["psnr"] is None else spread([p["psnr"]]))
            ssim = p.get("ssim_stats") or (None if p["ssim"] is None else spread([p["ssim"]]))
            lines.append(f"{name:<22} {s['setting'] + '=' + str(p['value']):<38} {_fmt(p['speedup'], '8.2f'):>8} "
                         f"{_range(p.get('speedup_range'), '.2f'):>11} {_fmt(p['reuse_ratio'], '6.2f'):>6} "
                         f"{_fmt(p.get('block_flops_ratio'), '9.2f'):>9} {_stats_cells(psnr, 8, 2)} "
                         f"{_stats_cells(ssim, 6, 3)}  {p['status']}")
    for name, reason in result["skipped"].items():
        lines.append(f"{name:<22} {'-':<38} {'':>8} {'':>11} {'':>6} {'':>9} {'':>8} {'':>13} {'':>5} {'':>6} "
                     f"{'':>13} {'':>5}  {reason}")
    if result.get("conditions"):
        lines.append(f"conditions: {'; '.join(result['conditions'])}; seeds: {', '.join(map(str, result['seeds']))}")
    lines.append("")
    lo, hi = MATCH_WINDOW
    lines.append(f"Margin ours - peer in dB at matched speed-up (mean PSNR; ours = Pareto envelope of all lightcache "
                 f"settings; envelopes linear in speed-up, compared only where both reach, '.' where one does not); "
                 f"axis wall: timed speed-up, FLOPs: 1 / block-FLOP fraction")
    grid_head = " ".join(f"{g:>6.1f}x" for g in MARGIN_GRID)
    window = f"{lo:g}-{hi:g}x"
    mhead = f"{'peer':<22} {'axis':<5} {grid_head} {'both reach':>12} {'min in ' + window:>14}  verdict in {window}"
    lines += [mhead, "-" * len(mhead)]
    for peer, c in result["comparison"].items():
        for axis, entry in (("wall", c), ("FLOPs", c.get("block_flops"))):
            if entry is None:
                continue
            cells = " ".join(f"{_margin(m['margin_db']):>7}" for m in entry["at"])
            covered = _range(entry["covered"], ".2f") + "x" if entry["covered"] else "none"
            w = entry["window"]
            if w is None:
                wmin = "."
                verdict = (f"no matched speed-up in the window: {entry['note']}" if entry["covered"] is None else
                           f"no matched speed-up in the window (both reach {covered} only)")
            else:
                wmin = f"{w['min_margin_db']:+.2f}"
                verdict = ("ours higher at every matched speed-up" if w["ours_better_at_all"]
                           else "ours NOT higher everywhere") + f" ({w['range'][0]:.2f}-{w['range'][1]:.2f}x)"
            lines.append(f"{peer if axis == 'wall' else '':<22} {axis:<5} {cells} {covered:>12} {wmin:>14}  {verdict}")
    t = result["target"]
    if t["best"] is None:
        lines.append(f"target: no lightcache setting reached mean PSNR >= {t['psnr_floor_db']:.0f} dB")
    else:
        lines.append(f"target: best lightcache speed-up at mean PSNR >= {t['psnr_floor_db']:.0f} dB: "
                     f"{t['best']['speedup']:.2f}x ({t['best']['method']}, {t['best']['psnr']:.2f} dB) -> goal "
                     f"{t['speedup_goal']}x {'met' if t['met'] else 'not met'}")
    if result.get("cost_s"):
        la = result.get("load_average") or {}
        lines.append(f"cost: {result['cost_s']['total']:.0f} s ({result['cost_s']['fidelity']:.0f} s fidelity, "
                     f"{result['cost_s']['timing']:.0f} s timing); load average (1, 5, 15 min) at start "
                     f"{la.get('start')}, at end {la.get('end')}")
    return "\n".join(lines)


def _sweep_plot(result: dict, path: Path) -> None:
    """sweep.png: every swept setting as a point (mean PSNR, bars: min-max over conditions x seeds and
    over the timed rounds), each family's Pareto envelope, the target lines."""
    rows = [p for s in result["sweep"].values() for p in s["points"] if p["status"] == "ok"]
    fig = bench_plots.pareto_figure({**result, "rows": rows, "random_weights": False}, target=result["target"])
    n_cond, n_seed = len(result.get("conditions", [None])), len(result.get("seeds", [0]))
    fig.axes[0].set_title(bench_plots.figure_title(
        result, f"threshold sweeps, PSNR: mean over {n_cond} conditions x {n_seed} seeds, bars min-max "
                "(grey lines: the target)"),
        fontsize=9)
    bench_plots.save(fig, path)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


# one line per method for --list-methods
METHOD_INFO: Dict[str, str] = {
    "easycache": "lightcache EasyCache: reuses the whole denoiser's output change while the predicted change stays "
                 "under a threshold (0.05, 20% warm-up)",
    "precise-base": "lightcache PreciseCache base: skips a step while the low-frequency change of a cheap trial "
                    "signal stays small (LFCache, alpha 0.5)",
    "precise-turbo": "lightcache PreciseCache turbo: LFCache with alpha 0.7 (more steps skipped than base)",
    "precise-flash": "lightcache PreciseCache flash: LFCache alpha 0.7, plus BlockCache inside computed steps (only "
                     "the 40% pivotal blocks recomputed)",
    "forecast": "lightcache ForecastCache: EasyCache's schedule with each step's change weighted by its distance "
                "from the last compute, the reused output forecast from the last two computed changes (first order "
                "in the step index; threshold 0.2, warm-up 6% of steps)",
    "forecast+mem": "forecast with the memory plan (cache swapped to pinned host memory, feature chunking)",
    "easycache+mem": "easycache with the memory plan (cache swapped to pinned host memory, feature chunking)",
    "precise-flash+mem": "precise-flash with the memory plan (cache swapped to pinned host memory, feature chunking)",
    "deepcache": "lightcache DeepCache: reuses the deep UNet blocks' features between full steps (interval 3, "
                 "the DeepCache package's default branch: DeepCache.from_package(3, 0))",
    "deepcache+mem": "deepcache with the memory plan (cache swapped to pinned host memory, feature chunking)",
    "diffusers-fbc": "diffusers FirstBlockCache: skips the remaining blocks when the first block's residual barely "
                     "changes; threshold 0.2, the value of diffusers' documented example (apply_first_block_cache; "
                     "its config default 0.05 skips nothing on the Wan proxy)",
    "diffusers-taylorseer": "diffusers TaylorSeer: forecasts attention and FFN outputs by Taylor extrapolation "
                            "between full steps; its TaylorSeerCacheConfig defaults (interval 5, warm-up 3, order 1)",
    "diffusers-pab": "diffusers PyramidAttentionBroadcast: reuses spatial attention outputs across steps; skip range "
                     "2 (its documented CogVideoX example), timestep range (100, 800) (its config default)",
    "diffusers-magcache": "diffusers MagCache: skips steps by the output-magnitude ratio curve (calibrated first by "
                          "diffusers' own calibration run); its MagCacheConfig defaults (threshold 0.06, at most 3 "
                          "skips in a row, first 20% kept)",
    "diffusers-fastercache": "diffusers FasterCache: attention reuse plus approximated unconditional branch (needs "
                             "both guidance branches in one batch); the values of its documented CogVideoX example",
    "cache-dit": "cache-dit DBCache (its enable_cache, registered adapter): first Fn blocks always run, the rest "
                 "reused while their residual barely changes; F8B0 (its default) on >= 16 blocks, else F1B0; "
                 "threshold 0.08 (its default), warm-up min(8, 20% of steps); no UNets: its blocks patterns do "
                 "not carry a UNet's skip connections (pip install cache-dit)",
    "cache-dit-taylorseer": "cache-dit DBCache as above plus its TaylorSeer calibrator (order 1), which its docs "
                            "recommend with FnB0 (pip install cache-dit)",
    "deepcache-pkg": "the DeepCache package's DeepCacheSDHelper (pip install DeepCache)",
}


def list_methods() -> str:
    """The table --list-methods prints: name, models it applies to, whether it can run here, description."""
    lines = [f"{'method':<22} {'applies to':<10} {'installed':<28} description"]
    for name in METHODS:
        try:
            m = make_method(name)
            reason = m.unavailable()
            fams = "/".join("DiT" if f == "dit" else "UNet" for f in m.families)
        except ImportError as exc:  # a diffusers too old for this peer's config class
            reason, fams = f"no: {exc}", "?"
        installed = "yes" if reason is None else reason.replace("not installed", "no")
        lines.append(f"{name:<22} {fams:<10} {installed:<28} {METHOD_INFO[name]}")
    lines.append(f"default: all of them that apply to the model; --quick: {', '.join(QUICK_METHODS)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lightcache bench", description=__doc__.splitlines()[0].replace("``", ""),
                                 formatter_class=cli.HelpFormatter)
    ap.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)}; {', '.join(SIZED_MODELS)} are "
                    "realistic-size random-weight configurations (GPU; speed and memory only) (default: wan-proxy "
                    "if its trained weights are installed, else wan-tiny)")
    ap.add_argument("--methods", default=None, metavar="NAME[,NAME...]",
                    help=f"comma-separated, from: {', '.join(METHODS)} (--list-methods describes them) (default: all "
                    "that apply; --quick: " + ", ".join(QUICK_METHODS) + "; --sweep: " + ", ".join(SWEEPS) + ")")
    ap.add_argument("--list-methods", action="store_true",
                    help="print every method with a description, the models it applies to and whether it is "
                    "installed, and exit")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20; 10 with --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; every round runs the reference, then each "
                    "method; speed-up is the median, the table shows min-max beside it")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device to compute on")
    ap.add_argument("--out", default="bench-out", help="folder for results.json, the plots and the side-by-side clip")
    ap.add_argument("--quick", action="store_true", help="a small run (< 2 min on CPU) for smoke tests")
    ap.add_argument("--scale", choices=bench_models.SCALES, default=None,
                    help=f"for {', '.join(SIZED_MODELS)}: full (published sizes, GPU) or tiny (the same pipeline "
                    "code shrunk, runs on CPU) (default: full)")
    ap.add_argument("--sweep", action="store_true", help="sweep each threshold-like method over a few settings and "
                    "compare PSNR at matched speed-up (needs trained weights)")
    ap.add_argument("--sweep-points", type=int, default=None, metavar="N",
                    help="with --sweep: N settings per method, spread over its grid (default: the whole grid; "
                    "2 with --quick)")
    ap.add_argument("--conditions", type=int, default=1, metavar="N",
                    help="with --sweep: score fidelity over N conditions of the proxy's vocabulary (the model's own "
                    "first, then spread over shapes, colours and motions: sweep_condition); speed-ups are timed on the "
                    "first only")
    ap.add_argument("--seeds", type=int, default=1, metavar="K",
                    help="with --sweep: score fidelity over K sampling seeds per condition (0, 2, 3, ...; 1 is "
                    "MagCache's calibration seed)")
    ap.add_argument("--checkpoint", default=None, metavar="DIR_OR_HUB_ID",
                    help="a diffusers pipeline to benchmark instead of --model: a local folder (model_index.json) or a "
                    "hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers, taken from the local hub cache when it is there "
                    "(no network), else downloaded unless HF_HUB_OFFLINE is set (default: none, use --model)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                    help="with --checkpoint: the weights' dtype (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--offload", choices=OFFLOADS, default="none",
                    help="with --checkpoint on an accelerator: model (diffusers enable_model_cpu_offload), group "
                    "(group offload, one denoiser block on the device at a time), sequential "
                    "(enable_sequential_cpu_offload)")
    ap.add_argument("--prompt", default=None, help="with --checkpoint: the prompt, encoded by the pipeline's text "
                    "encoder (default: 'a red circle moving to the right')")
    ap.add_argument("--prompt-embeds", default=None, metavar="FILE",
                    help="with --checkpoint: torch.save'd dict of prompt_embeds (+ negative_prompt_embeds), for "
                    "pipelines saved without a text encoder (default: none, use --prompt)")
    for flag, what in (("--height", "pixels"), ("--width", "pixels"), ("--frames", "frames")):
        ap.add_argument(flag, type=int, default=None,
                        help=f"clip {what} for --checkpoint and the realistic-size models (default: the "
                        "pipeline's or the configuration's)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (status lines still go to stderr)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on CPU (1: steadier timings on shared machines)")
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list_methods:
        print(list_methods())
        return {"methods": list(METHODS)}
    if args.checkpoint is not None and args.model is not None:
        ap.error("give --model or --checkpoint, not both")
    if args.checkpoint is None:
        for flag, value, default in (("--dtype", args.dtype, None), ("--offload", args.offload, "none"),
                                     ("--prompt", args.prompt, None), ("--prompt-embeds", args.prompt_embeds, None)):
            if value != default:
                ap.error(f"{flag} applies to --checkpoint (the --model configurations pick their own)")
    if args.offload != "none" and args.device == "cpu":
        ap.error(f"--offload {args.offload} moves weights between host memory and an accelerator; with --device cpu "
                 "there is none (use --offload none, or --device cuda)")
    if args.checkpoint is not None:
        args.model = "checkpoint"
    elif args.model is None:
        from lightcache.proxy.load import weights_available

        args.model = "wan-proxy" if weights_available("wan_proxy") else "wan-tiny"
    if args.checkpoint is None and args.model not in MODELS:
        ap.error(f"--model must be one of {', '.join(MODELS)}, got {args.model!r}")
    if args.scale is not None and args.model not in SIZED_MODELS:
        ap.error(f"--scale applies to the realistic-size models ({', '.join(SIZED_MODELS)}), not to {args.model}")
    args.scale = args.scale or "full"
    sized = [f"--{k}" for k in ("height", "width", "frames") if getattr(args, k) is not None]
    if sized and args.checkpoint is None and args.model not in SIZED_MODELS:
        ap.error(f"{'/'.join(sized)} apply to --checkpoint and the realistic-size models, not to {args.model}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.sweep_points is not None and (not args.sweep or args.sweep_points < 1):
        ap.error("--sweep-points needs --sweep and must be >= 1")
    from lightcache.proxy.data import NUM_CONDITIONS

    for flag, value, top in (("--conditions", args.conditions, NUM_CONDITIONS), ("--seeds", args.seeds, None)):
        if value < 1 or (top is not None and value > top):
            ap.error(f"{flag} must be >= 1{f' and <= {top} (the proxy vocabulary has {top})' if top else ''}, "
                     f"got {value}")
        if value != 1 and not args.sweep:
            ap.error(f"{flag} applies to --sweep (the plain bench scores one condition and seed)")
    if args.steps is None:
        args.steps = 10 if args.quick else 20
    if args.sweep and args.quick and args.sweep_points is None:
        args.sweep_points = 2
    if args.methods is None:
        args.methods = tuple(SWEEPS) if args.sweep else QUICK_METHODS if args.quick else DEFAULT_METHODS
    else:
        args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.device == "cpu":
        torch.set_num_threads(max(1, args.threads))
    return sweep(args) if args.sweep else bench(args)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
