"""Overhead of the cache engine when nothing is reused (issue target: ≤ 1.03× the plain pipeline).

Alternates plain and lightcache-enabled runs of one pipeline in one process (enable/disable between
runs), ``--repeats`` pairs, and reports the median of the per-pair time ratios.

    python benchmarks/engine_overhead.py [--device cpu|cuda] [--repeats 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import lightcache


def make_pipe(device):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    # big enough that one denoiser call is tens of ms on a CPU core, small enough to run anywhere
    # (8 layers, width 256, 320 tokens: ~1/1000 of Wan2.1-1.3B's per-call work)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=32, in_channels=16,
                               out_channels=16, text_dim=64, freq_dim=64, ffn_dim=1024, num_layers=8, rope_max_seq_len=64)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).to(device)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=torch.randn(1, 16, 64, device=device), negative_prompt_embeds=torch.zeros(1, 16, 64, device=device),
              height=128, width=128, num_frames=17, num_inference_steps=10, guidance_scale=3.0, output_type="latent")
    return pipe, kw


def timed(pipe, kw, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = pipe(**kw, generator=torch.Generator(device).manual_seed(0)).frames
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, kw = make_pipe(args.device)
    policy = lightcache.EasyCache(threshold=0.0, warmup_steps=0)  # decides every step, never reuses
    timed(pipe, kw, args.device)  # warm-up
    ratios, plain_t, lc_t = [], [], []
    for _ in range(args.repeats):
        t0, ref = timed(pipe, kw, args.device)
        lightcache.enable(pipe, policy=policy)
        t1, out = timed(pipe, kw, args.device)
        lightcache.disable(pipe)
        assert torch.equal(out, ref), "a never-reusing policy must be lossless"
        plain_t.append(t0)
        lc_t.append(t1)
        ratios.append(t1 / t0)
    result = {
        "benchmark": "engine_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "median_plain_s": statistics.median(plain_t),
        "median_lightcache_s": statistics.median(lc_t),
        "median_ratio": statistics.median(ratios),
        "denoiser_calls": 2 * kw["num_inference_steps"],
        "median_overhead_ms_per_call": 1e3 * (statistics.median(lc_t) - statistics.median(plain_t)) / (2 * kw["num_inference_steps"]),
        "ratios": ratios,
    }
    print(f"engine overhead ({result['device']}, {args.repeats} alternating pairs): "
          f"median ratio {result['median_ratio']:.4f} (plain {result['median_plain_s']*1e3:.1f} ms, "
          f"lightcache {result['median_lightcache_s']*1e3:.1f} ms; "
          f"{result['median_overhead_ms_per_call']:.2f} ms per denoiser call)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
