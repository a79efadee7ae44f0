"""``lightcache bench``: speed-up, memory per stage and fidelity of caching methods side by side.

    lightcache bench [--model wan-proxy] [--methods easycache,precise-flash,...] [--steps 20]
                     [--repeats 3] [--out bench-out] [--quick]

For each method the pipeline runs with the same seed and inputs as the uncached reference:
  * speed-up: median over ``--repeats`` runs, methods alternating within each round, of the
    reference's time divided by the method's;
  * fidelity against the reference's video: PSNR (clip-pooled), SSIM (per frame), flicker — "n/a"
    for random-weight models, whose trajectories mean nothing;
  * memory per stage: CUDA allocator peaks, or on CPU the deterministic live-tensor tracker;
  * reuse ratio (lightcache methods).
Outputs: a table on the terminal, ``results.json``, ``pareto.png`` (speed-up vs PSNR),
``memory.png`` (peak per stage), ``timeline.png`` (memory over time by stage, reference vs. our
fastest method), ``side_by_side.gif`` (reference and each method).
Peers (diffusers' FirstBlockCache, TaylorSeer, PyramidAttentionBroadcast; cache-dit and the
DeepCache package when installed) run through their own APIs; a peer that is not installed or
does not apply to the model is listed with the reason and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

import lightcache
from lightcache import metrics

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


def _wan_sized(layers, heads, ffn):
    def build(device, steps):
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

        if device == "cpu":
            raise SystemExit("this configuration is for GPUs (billions of parameters); use --device cuda")
        torch.manual_seed(0)
        tr = WanTransformer3DModel(num_attention_heads=heads, attention_head_dim=128, ffn_dim=ffn, num_layers=layers,
                                   text_dim=4096).to(device, torch.bfloat16)
        vae = AutoencoderKLWan().to(device)
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
        kw = dict(prompt_embeds=torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16),
                  negative_prompt_embeds=torch.zeros(1, 512, 4096, device=device, dtype=torch.bfloat16),
                  height=480, width=832, num_frames=33, num_inference_steps=steps, guidance_scale=5.0, output_type="pt")
        return BenchModel(pipe, kw, "dit", True, f"random-weight Wan2.1 ({layers} blocks, {heads} heads), 480p, 33 frames")

    return build


def _proxy(name):
    def build(device, steps):
        from lightcache.proxy import load

        if not load.weights_available(name):
            raise SystemExit(
                f"the trained proxy {name!r} is not in this installation (lightcache/proxy/weights/); "
                "train it with benchmarks/proxy/train_all.py, or pick --model wan-tiny"
            )
        pipe = load.load_proxy(name, device=device)
        kw = load.call_kwargs(pipe, [0], num_inference_steps=steps, output_type="pt")
        kw.pop("generator")
        fam = "dit" if name == "wan_proxy" else "unet"
        return BenchModel(pipe, kw, fam, False, f"trained proxy {name} (lightcache/proxy)")

    return build


def load_checkpoint(path: str, device: str, steps: int, prompt: Optional[str], prompt_embeds: Optional[str],
                    height: Optional[int], width: Optional[int], frames: Optional[int]) -> BenchModel:
    """A local diffusers pipeline folder (``model_index.json``), for users with real weights."""
    import json as _json

    from diffusers import DiffusionPipeline

    root = Path(path)
    index = root / "model_index.json"
    if not index.is_file():
        raise SystemExit(f"--checkpoint {path}: not a diffusers pipeline folder (no model_index.json there)")
    # components saved as [null, null] (no text encoder, say) must be passed as None explicitly
    absent = {k: None for k, v in _json.loads(index.read_text()).items()
              if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}
    pipe = DiffusionPipeline.from_pretrained(str(root), **absent).to(device)
    kw = dict(num_inference_steps=steps, output_type="pt")
    if prompt_embeds is not None:
        embeds = torch.load(prompt_embeds, map_location=device)
        if not isinstance(embeds, dict) or "prompt_embeds" not in embeds:
            raise SystemExit(f"--prompt-embeds {prompt_embeds}: expected a torch.save'd dict with 'prompt_embeds' "
                             "(and optionally 'negative_prompt_embeds')")
        kw.update(embeds)
    elif getattr(pipe, "text_encoder", None) is not None:
        kw["prompt"] = prompt or "a red circle moving to the right"
    else:
        raise SystemExit(f"--checkpoint {path}: the pipeline has no text encoder; pass --prompt-embeds FILE")
    for k, v in (("height", height), ("width", width), ("num_frames", frames)):
        if v is not None:
            kw[k] = v
    family = "unet" if getattr(pipe, "unet", None) is not None else "dit"
    return BenchModel(pipe, kw, family, False, f"checkpoint {root.name} ({type(pipe).__name__})")


MODELS: Dict[str, Callable] = {
    "wan-proxy": _proxy("wan_proxy"),
    "unet-proxy": _proxy("unet_proxy"),
    "wan-tiny": _wan_tiny,
    "wan2.1-1.3b": _wan_sized(30, 12, 8960),
    "wan2.1-14b": _wan_sized(40, 40, 13824),
}

# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


@dataclass
class Method:
    name: str
    families: tuple
    enable: Callable  # (pipe, steps) -> None
    disable: Callable  # (pipe) -> None
    ours: bool = True
    unavailable: Callable = lambda: None  # () -> reason the method cannot run here, or None


def _not_installed(module: str, pip_name: str):
    def check():
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return f"not installed (pip install {pip_name})"
        return None

    return check


def _cache_dit_enable(pipe, steps):
    import cache_dit

    cache_dit.enable_cache(pipe)


def _cache_dit_disable(pipe):
    import cache_dit

    cache_dit.disable_cache(pipe)


def _deepcache_pkg_enable(pipe, steps):
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    pipe._lightcache_bench_deepcache = helper


def _deepcache_pkg_disable(pipe):
    pipe._lightcache_bench_deepcache.disable()
    del pipe._lightcache_bench_deepcache


def _ours(policy_fn, memory_fn=None):
    def enable(pipe, steps):
        memory = memory_fn(pipe) if memory_fn else None
        lightcache.enable(pipe, policy=policy_fn(steps), memory=memory)

    return enable, lightcache.disable


def _mem_plan(pipe):
    from lightcache import MemoryPlan

    return MemoryPlan(swap="on", chunk_size=256)


def _warmup(steps):
    return max(1, round(0.2 * steps))


def _diffusers_peer(make_config):
    def enable(pipe, steps):
        model = getattr(pipe, "transformer", None)
        if model is None or not hasattr(model, "enable_cache"):
            raise RuntimeError("the denoiser has no diffusers enable_cache()")
        model.enable_cache(make_config(pipe))

    def disable(pipe):
        pipe.transformer.disable_cache()

    return enable, disable


def _fbc(pipe):
    from diffusers import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=0.05)


def _taylorseer(pipe):
    from diffusers import TaylorSeerCacheConfig

    return TaylorSeerCacheConfig()


def _pab(pipe):
    from diffusers import PyramidAttentionBroadcastConfig

    return PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, current_timestep_callback=lambda: pipe.current_timestep
    )


def _methods() -> Dict[str, Method]:
    from lightcache import DeepCache, EasyCache, PreciseCache

    m = {}

    def add(name, fams, pair, ours=True, unavailable=lambda: None):
        m[name] = Method(name, fams, pair[0], pair[1], ours, unavailable)

    add("easycache", ("dit",), _ours(lambda n: EasyCache(threshold=0.05, warmup_steps=_warmup(n))))
    add("precise-base", ("dit",), _ours(lambda n: PreciseCache(mode="base")))
    add("precise-turbo", ("dit",), _ours(lambda n: PreciseCache(mode="turbo")))
    add("precise-flash", ("dit",), _ours(lambda n: PreciseCache(mode="flash")))
    add("easycache+mem", ("dit",), _ours(lambda n: EasyCache(threshold=0.05, warmup_steps=_warmup(n)), _mem_plan))
    add("precise-flash+mem", ("dit",), _ours(lambda n: PreciseCache(mode="flash"), _mem_plan))
    add("deepcache", ("unet",), _ours(lambda n: DeepCache(interval=3)))
    add("deepcache+mem", ("unet",), _ours(lambda n: DeepCache(interval=3), _mem_plan))
    add("diffusers-fbc", ("dit",), _diffusers_peer(_fbc), ours=False)
    add("diffusers-taylorseer", ("dit",), _diffusers_peer(_taylorseer), ours=False)
    add("diffusers-pab", ("dit",), _diffusers_peer(_pab), ours=False)
    add("cache-dit", ("dit",), (_cache_dit_enable, _cache_dit_disable), ours=False,
        unavailable=_not_installed("cache_dit", "cache-dit"))
    add("deepcache-pkg", ("unet",), (_deepcache_pkg_enable, _deepcache_pkg_disable), ours=False,
        unavailable=_not_installed("DeepCache", "DeepCache"))
    return m


QUICK_METHODS = ("easycache", "precise-flash", "easycache+mem", "diffusers-fbc")
DEFAULT_METHODS = (
    "easycache", "precise-base", "precise-turbo", "precise-flash", "easycache+mem", "precise-flash+mem",
    "deepcache", "deepcache+mem", "diffusers-fbc", "diffusers-taylorseer", "diffusers-pab", "cache-dit",
    "deepcache-pkg",
)

# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    status: str = "ok"
    times: List[float] = field(default_factory=list)
    speedup: Optional[float] = None
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    flicker: Optional[float] = None
    reuse_ratio: Optional[float] = None
    peak_bytes: Dict[str, Optional[int]] = field(default_factory=dict)
    cache_bytes: Dict[str, int] = field(default_factory=dict)
    timeline: List[dict] = field(default_factory=list)


def _frames(out) -> torch.Tensor:
    v = out.frames if hasattr(out, "frames") else out[0]
    if isinstance(v, list):
        v = torch.stack([torch.as_tensor(x) for x in v])
    return v.float().cpu()


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(model: BenchModel, device) -> tuple:
    _sync(device)
    t = time.perf_counter()
    out = model.pipe(**model.kwargs, generator=torch.Generator("cpu").manual_seed(0))
    _sync(device)
    return time.perf_counter() - t, _frames(out)


def _metered(model: BenchModel, method: Optional[Method], steps: int, device) -> tuple:
    """One run with the stage meter on: (video, report)."""
    from lightcache import MemoryPlan

    track = MemoryPlan(cpu_tracker=device == "cpu")
    if method is not None:
        method.enable(model.pipe, steps)
    try:
        if method is None or not method.ours:
            lightcache.enable(model.pipe, policy=None, memory=track)
        else:  # our method: keep its plan, add the meter
            session = model.pipe.transformer if hasattr(model.pipe, "transformer") else model.pipe.unet
            s = session._lightcache_session
            if s.memory is None:
                s.memory = track
            else:
                from dataclasses import replace

                s.memory = replace(s.memory, cpu_tracker=device == "cpu")
        _, video = _run(model, device)
        rep = lightcache.report(model.pipe)
    finally:
        lightcache.disable(model.pipe)
        if method is not None and not method.ours:
            method.disable(model.pipe)
    return video, rep


def bench(args) -> dict:
    from tqdm.auto import tqdm

    device = args.device
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint, device, args.steps, args.prompt, args.prompt_embeds,
                                args.height, args.width, args.frames)
    else:
        model = MODELS[args.model](device, args.steps)
    model.pipe.set_progress_bar_config(disable=True)
    catalogue = _methods()
    rows: List[Row] = [Row("none (reference)")]
    runnable: List[Method] = []
    for name in args.methods:
        if name not in catalogue:
            rows.append(Row(name, status=f"unknown method (known: {', '.join(sorted(catalogue))})"))
        elif model.family not in catalogue[name].families:
            rows.append(Row(name, status=f"does not apply to a {model.family} model"))
        elif catalogue[name].unavailable() is not None:
            rows.append(Row(name, status=catalogue[name].unavailable()))
        else:
            runnable.append(catalogue[name])
            rows.append(Row(name))
    by_name = {r.method: r for r in rows}

    ref_video, ref_rep = _metered(model, None, args.steps, device)
    by_name["none (reference)"].peak_bytes = dict(ref_rep.peak_bytes)
    by_name["none (reference)"].timeline = list(ref_rep.timeline)
    videos = {"none (reference)": ref_video}
    for method in tqdm(runnable, desc="fidelity + memory", disable=args.no_progress):
        row = by_name[method.name]
        try:
            video, rep = _metered(model, method, args.steps, device)
        except Exception as exc:  # a peer that fails must not stop the others
            row.status = f"failed: {type(exc).__name__}: {exc}"
            continue
        videos[method.name] = video
        row.peak_bytes = dict(rep.peak_bytes)
        row.cache_bytes = dict(rep.cache_bytes)
        row.timeline = list(rep.timeline)
        row.reuse_ratio = rep.reuse_ratio if method.ours else None
        if not model.random_weights:
            row.psnr = metrics.psnr(video, ref_video)
            row.ssim = metrics.ssim(video, ref_video) if min(video.shape[-2:]) >= 11 else None
            row.flicker = metrics.flicker(video, ref_video)

    ok = [m for m in runnable if by_name[m.name].status == "ok"]
    total = args.repeats * (1 + len(ok))
    with tqdm(total=total, desc="timing (alternating)", disable=args.no_progress) as bar:
        _run(model, device)  # warm-up
        for _ in range(args.repeats):
            t, _ = _run(model, device)
            by_name["none (reference)"].times.append(t)
            bar.update()
            for method in ok:
                method.enable(model.pipe, args.steps)
                try:
                    t, _ = _run(model, device)
                finally:
                    method.disable(model.pipe)
                by_name[method.name].times.append(t)
                bar.update()
    ref_t = statistics.median(by_name["none (reference)"].times)
    for r in rows:
        if r.times:
            r.speedup = ref_t / statistics.median(r.times)

    result = {
        "model": args.checkpoint or args.model,
        "model_description": model.description,
        "random_weights": model.random_weights,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "lightcache": lightcache.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": [r.__dict__ for r in rows],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(format_table(result))
    _plots(result, videos, out)
    print(f"\nwrote {out / 'results.json'}, pareto.png, memory.png, timeline.png, side_by_side.gif")
    return result


def _fmt(v, spec, na="n/a"):
    if v is None:
        return na
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def format_table(result: dict) -> str:
    na = "n/a*" if result["random_weights"] else "n/a"
    head = f"{'method':<22} {'speed-up':>8} {'reuse':>6} {'PSNR dB':>8} {'SSIM':>6} {'flicker':>8} " \
           f"{'peak denoise':>13} {'peak decode':>12}  status"
    lines = [f"lightcache bench: {result['model_description']} on {result['device']}, {result['steps']} steps, "
             f"median of {result['repeats']} alternating runs", head, "-" * len(head)]
    for r in result["rows"]:
        pk = r["peak_bytes"] or {}
        lines.append(
            f"{r['method']:<22} {_fmt(r['speedup'], '8.2f'):>8} {_fmt(r['reuse_ratio'], '6.2f'):>6} "
            f"{_fmt(r['psnr'], '8.2f', na if r['method'] != 'none (reference)' else '-'):>8} "
            f"{_fmt(r['ssim'], '6.3f', 'n/a'):>6} {_fmt(r['flicker'], '8.4f', 'n/a'):>8} "
            f"{_mb(pk.get('denoise')):>13} {_mb(pk.get('decode')):>12}  {r['status']}"
        )
    if result["random_weights"]:
        lines.append("* random weights: fidelity against the reference means nothing, so it is not reported")
    return "\n".join(lines)


def _mb(b):
    return "n/a" if b is None else f"{b / 2**20:.2f} MiB"


def _plots(result: dict, videos: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import imageio.v2 as imageio
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in result["rows"] if r["speedup"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        y = r["psnr"] if r["psnr"] is not None and math.isfinite(r["psnr"]) else None
        if y is not None:
            ax.scatter(r["speedup"], y)
            ax.annotate(r["method"], (r["speedup"], y), fontsize=7)
    ax.set_xlabel("speed-up vs uncached")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("speed vs fidelity" + (" (random weights: no fidelity)" if result["random_weights"] else ""))
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    stages = ("encode", "denoise", "decode")
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        vals = [(r["peak_bytes"].get(s) or 0) / 2**20 for s in stages]
        ax.bar([j + i * width for j in range(3)], vals, width, label=r["method"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(3)], stages)
    ax.set_ylabel("peak MiB (CUDA allocator / CPU tracker)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    plt.close(fig)

    # memory timeline: the reference and the fastest of our methods
    ours = [r for r in rows if r["method"] != "none (reference)" and r["reuse_ratio"] is not None and r["timeline"]]
    best = max(ours, key=lambda r: r["speedup"]) if ours else None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for r, style in ((rows[0], "-"), (best, "--")):
        if r is None or not r["timeline"]:
            continue
        t0 = r["timeline"][0]["start_s"]
        xs, ys = [], []
        for t in r["timeline"]:
            xs += [t["start_s"] - t0, t["end_s"] - t0]
            ys += [(t["peak_bytes"] or 0) / 2**20] * 2
        ax.plot(xs, ys, style, label=r["method"])
        for t in r["timeline"]:
            if t["stage"] != "denoise":
                ax.axvspan(t["start_s"] - t0, t["end_s"] - t0, alpha=0.08, color="grey")
    ax.set_xlabel("seconds (shaded: encode/decode)")
    ax.set_ylabel("peak MiB per stage invocation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=120)
    plt.close(fig)

    names = list(videos)
    clips = [videos[n].reshape(-1, *videos[n].shape[-4:])[0] for n in names]  # (F, C, H, W)
    frames = []
    for f in range(min(c.shape[0] for c in clips)):
        row = np.concatenate([(c[f].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8) for c in clips], axis=1)
        frames.append(row)
    imageio.mimsave(out / "side_by_side.gif", frames, duration=0.2)
    (out / "side_by_side.txt").write_text("left to right: " + ", ".join(names) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="lightcache bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)} (default: wan-proxy if trained, "
                    "else wan-tiny)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: all that apply)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--quick", action="store_true", help="a small run (< 2 min on CPU) for smoke tests")
    ap.add_argument("--checkpoint", default=None, metavar="DIR",
                    help="a local diffusers pipeline folder to benchmark instead of --model")
    ap.add_argument("--prompt", default=None, help="with --checkpoint: the prompt (needs the pipeline's text encoder)")
    ap.add_argument("--prompt-embeds", default=None, metavar="FILE",
                    help="with --checkpoint: torch.save'd dict of prompt_embeds (+ negative_prompt_embeds)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on CPU (default 1: steadier timings on shared machines)")
    args = ap.parse_args(argv)
    if args.checkpoint is not None and args.model is not None:
        ap.error("give --model or --checkpoint, not both")
    if args.checkpoint is not None:
        args.model = "checkpoint"
    elif args.model is None:
        from lightcache.proxy.load import weights_available

        args.model = "wan-proxy" if weights_available("wan_proxy") else "wan-tiny"
    if args.checkpoint is None and args.model not in MODELS:
        ap.error(f"--model must be one of {', '.join(MODELS)}, got {args.model!r}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.steps is None:
        args.steps = 10 if args.quick else 20
    if args.methods is None:
        args.methods = QUICK_METHODS if args.quick else DEFAULT_METHODS
    else:
        args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.device == "cpu":
        torch.set_num_threads(max(1, args.threads))
    return bench(args)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
