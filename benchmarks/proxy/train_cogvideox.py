"""Train the second DiT proxy, of the CogVideoX family: a tiny AutoencoderKLCogVideoX (reconstruction), then a
CogVideoXTransformer3DModel (CogVideoX 1.0 layout: fixed 3-D sincos absolute positions, no RoPE) with
v-prediction on its latents, saved as a stock CogVideoXPipeline folder in lightcache/proxy/weights/cogvideox_proxy/.

Same clips and conditioning as the Wan proxy (lightcache/proxy/data.py). Run in the background:
    cd /work/main && PROXY_THREADS=1 setsid nohup nice -n 10 python benchmarks/proxy/train_cogvideox.py \
        > benchmarks/proxy/train_cogvideox.log 2>&1 &
    python benchmarks/proxy/train_cogvideox.py --smoke     # a few steps of everything into /tmp, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (
    WEIGHTS_DIR, add_options, clip_chunks, evaluate_pipeline, fit_autoencoder, fit_denoiser, log, record_run, run_stage,
    seed_all, set_threads, write_summary,
)
from train_wan import vae_psnr  # encode -> posterior mode -> decode; nothing Wan-specific in it

OUT = WEIGHTS_DIR / "cogvideox_proxy"

# Three blocks because the encoder compresses time only in blocks that also down-sample space
# (compress_time = i < log2(temporal_compression_ratio), add_downsample = not last): a 4x time factor, the
# CogVideoX one, needs two down-samplings, so 4x in space too. 9 frames x 32^2 -> 3 latent frames x 8^2 x 16 ch.
# Frame counts of the form 8k + 1 are encoded / decoded in one call by the stock _encode / _decode.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3,
    block_out_channels=(16, 24, 24),
    latent_channels=16,
    layers_per_block=1,
    norm_num_groups=8,
    temporal_compression_ratio=4,
    sample_height=32,
    sample_width=32,
)
# CogVideoX-2b's positional layout: use_rotary_positional_embeddings=False and
# use_learned_positional_embeddings=False give the fixed 3-D sincos table added to the patch tokens, i.e. an
# absolute position signal (the Wan proxy has RoPE only). The text tokens sit in the same table
# (max_text_seq_length rows of zeros), so it must equal the proxy's 4 conditioning tokens. Interpolation scale 1:
# the 4x4 patch grid keeps integer positions. time_embed_dim is CogVideoX's adaLN width; 32 keeps the six
# per-block modulation projections (time_embed_dim -> 6 * 128) small enough for the size budget.
DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    time_embed_dim=32,
    text_embed_dim=64,
    num_layers=4,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=4,
    spatial_interpolation_scale=1.0,
    temporal_interpolation_scale=1.0,
    use_rotary_positional_embeddings=False,
    use_learned_positional_embeddings=False,
)
# THUDM/CogVideoX-2b's scheduler config: v-prediction on scaled-linear betas with the SNR shift (3.0) and
# zero-terminal-SNR rescaling, trailing timesteps.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    clip_sample_range=1.0,
    sample_max_value=1.0,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    snr_shift_scale=3.0,
    timestep_spacing="trailing",
)
NULL_PROB = 0.1


def make_vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(**VAE_CONFIG, scaling_factor=1.0)


def make_scheduler():
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)


def _reconstruct(vae, x: torch.Tensor):
    mu = vae.encode(x).latent_dist.mode()
    return mu, vae.decode(mu).sample


def train_vae(steps: int, batch: int, lr: float, work: Path, seed: int = 11, latent_penalty: float = 1e-4):
    """Deterministic autoencoder on whole 9-frame clips, as for the Wan VAE (posterior mean, object-weighted
    MSE + L1, small L2 pull on the latents). The stock encode / decode already run 9 frames in one call."""
    seed_all(seed)
    vae = make_vae().train()
    val_x = next(clip_chunks(16, seed=900))[0]
    vae, best, seconds = fit_autoencoder(
        vae, val_x, steps, batch, lr, work, name="cogvideox_vae", data_seed=20_000, latent_penalty=latent_penalty,
        prepare=lambda x: x.contiguous(), reconstruct=_reconstruct, psnr=vae_psnr,
    )
    return vae, {"steps": steps, "batch": batch, "lr": lr, "latent_penalty": latent_penalty,
                 "loss": "object-weighted mse + l1", "val_psnr_db": round(best, 2), "seconds": seconds,
                 "params": sum(p.numel() for p in vae.parameters())}


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int = 12):
    """Posterior means of ``n`` clips, in the transformer's (b, frames, channels, h, w) layout. CogVideoXPipeline
    decodes ``latents / scaling_factor`` (no shift), so the VAE's scaling_factor is set to 1 / (global std) and
    the returned latents are multiplied by it."""
    t0 = time.time()
    zs, cs = [], []
    for x, c in clip_chunks(n, seed=seed, chunk=128):
        zs.append(vae.encode(x).latent_dist.mode())
        cs.append(c)
    z, conds = torch.cat(zs), torch.cat(cs)
    mean, std = z.mean().item(), z.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    z = (z / std).permute(0, 2, 1, 3, 4)
    log(f"encoded {n} clips -> {tuple(z.shape)} in {time.time() - t0:.0f}s; mean {mean:.3f} std {std:.3f} "
        f"-> scaling_factor {1.0 / std:.4f}")
    return z.contiguous(), conds


def make_pipeline(transformer, vae):
    from diffusers import CogVideoXPipeline

    return CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                             scheduler=make_scheduler())


def _v_target(alphas_cumprod: torch.Tensor, x0, noise, t):
    """(x_t, v) for integer timesteps ``t``: x_t = sqrt(a) x0 + sqrt(1-a) eps, v = sqrt(a) eps - sqrt(1-a) x0,
    with a the scheduler's (SNR-shifted, zero-terminal-SNR) alphas_cumprod, so training matches its sampling."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * x0


def v_val_loss(alphas_cumprod):
    @torch.no_grad()
    def val_loss(model, z, conds, table) -> float:
        """v-prediction loss on fixed latents, noise and an even timestep grid: comparable across checkpoints."""
        g = torch.Generator().manual_seed(123)
        noise = torch.randn(z.shape, generator=g)
        t = ((torch.arange(z.shape[0]) + 0.5) / z.shape[0] * 1000).long().clamp(0, 999)
        tot = 0.0
        for i in range(0, z.shape[0], 16):
            xt, v = _v_target(alphas_cumprod, z[i : i + 16], noise[i : i + 16], t[i : i + 16])
            pred = model(xt, table[conds[i : i + 16]], t[i : i + 16], return_dict=False)[0]
            tot += F.mse_loss(pred, v, reduction="sum").item()
        return tot / z.numel()

    return val_loss


def train_dit(z, conds, vae, steps: int, batch: int, lr: float, seed: int = 13, ema_decay: float = 0.998,
              ckpt_every: int = 200, n_val: int = 64):
    """v-prediction at t ~ U{0..999} as CogVideoXDDIMScheduler samples it (see _v_target). Conditions are dropped
    to the null embedding with p = 0.1 for classifier-free guidance."""
    from diffusers import CogVideoXTransformer3DModel

    alphas_cumprod = make_scheduler().alphas_cumprod.float()

    def loss(model, x0, embeds, noise, g):
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        xt, v = _v_target(alphas_cumprod, x0, noise, t)
        return F.mse_loss(model(xt, embeds, t, return_dict=False)[0], v)

    return fit_denoiser(
        lambda: CogVideoXTransformer3DModel(**DIT_CONFIG), z, conds, steps, batch, lr, name="cogvideox-dit",
        seed=seed, ema_decay=ema_decay, warmup=100, ckpt_every=ckpt_every, n_val=n_val,
        text_dim=DIT_CONFIG["text_embed_dim"], null_prob=NULL_PROB, loss=loss, val_loss=v_val_loss(alphas_cumprod),
        save=lambda ema_model: make_pipeline(ema_model, vae).save_pretrained(OUT, safe_serialization=True),
    )


@torch.no_grad()
def evaluate(n_prompts: int = 8, steps: int = 10, guidance: float = 4.0) -> dict:
    from lightcache.proxy.load import load_cogvideox_proxy

    return evaluate_pipeline(load_cogvideox_proxy(path=OUT), "cogvideox", n_prompts, steps, guidance)


EVAL_SETTINGS = ((10, 4.0), (20, 4.0), (20, 6.0))


@torch.no_grad()
def evaluate_all(summary: Path, seed: int = 1000) -> dict:
    """Every one of the 48 conditions once (each motion 12 times), from sampling seed ``seed`` (the training
    evaluation used 0), through the shipped CogVideoX and Wan proxies at EVAL_SETTINGS; plus the CogVideoX VAE
    round trip of 48 rendered clips, which bounds what the denoiser can show (does the 4x-time latent keep
    the motion?)."""
    from lightcache.proxy.data import ALL_CONDITIONS, dominant_colour, generate_clips, motion_direction
    from lightcache.proxy.load import load_cogvideox_proxy, load_wan_proxy

    conds = list(ALL_CONDITIONS)
    out = {"seed": seed, "conditions": len(conds)}
    for name, loader in (("cogvideox", lambda: load_cogvideox_proxy(path=OUT)), ("wan", load_wan_proxy)):
        pipe = loader()
        out[name] = [evaluate_pipeline(pipe, name, len(conds), steps, cfg, conds=conds, seed=seed)
                     for steps, cfg in EVAL_SETTINGS]
        del pipe
    vae = load_cogvideox_proxy(path=OUT).vae
    clips, idx = generate_clips(len(conds), seed=seed, conditions=[c.index for c in conds])
    x = torch.from_numpy(clips).permute(0, 2, 1, 3, 4).mul(2).sub(1)
    y = torch.cat([vae.decode(vae.encode(x[i : i + 16]).latent_dist.mode()).sample for i in range(0, len(x), 16)])
    y = y.clamp(-1, 1).add(1).div(2).permute(0, 2, 1, 3, 4)
    out["cogvideox_vae_round_trip"] = {
        "colour_acc": sum(dominant_colour(f) == c.colour for f, c in zip(y, conds)) / len(conds),
        "motion_acc": sum(motion_direction(f) == c.motion for f, c in zip(y, conds)) / len(conds),
    }
    log(f"cogvideox VAE round trip of {len(conds)} rendered clips: {out['cogvideox_vae_round_trip']}")
    write_summary(summary, "eval_all_conditions", out)
    return out


def main(args) -> None:
    from diffusers import AutoencoderKLCogVideoX

    run_stage(
        args, OUT, vae_name="cogvideox_vae", vae_cls=AutoencoderKLCogVideoX, key="cogvideox_dit", evaluate=evaluate,
        train_vae=lambda work: train_vae(args.vae_steps, args.vae_batch, args.vae_lr, work),
        encode=lambda vae: encode_dataset(vae, args.clips),
        train=lambda z, conds, vae: train_dit(z, conds, vae, args.dit_steps, args.dit_batch, args.dit_lr),
    )


DEFAULTS = dict(vae_steps=560, vae_batch=4, vae_lr=3e-3, clips=3000, dit_steps=3400, dit_batch=16, dit_lr=8e-4)


def add_args(p: argparse.ArgumentParser) -> None:
    add_options(p, DEFAULTS)


def cli() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--work", default="/tmp/lightcache_proxy_work")
    ap.add_argument("--summary", default=str(Path(__file__).with_name("train_cogvideox_summary.json")))
    ap.add_argument("--reuse-vaes", action="store_true", help="reuse the VAE finished by an earlier run in --work")
    ap.add_argument("--smoke", action="store_true", help="tiny step counts, outputs under /tmp/lightcache_proxy_smoke")
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: evaluate the saved proxy (and the Wan proxy) on all 48 conditions")
    args = ap.parse_args()
    if args.smoke:
        root = Path("/tmp/lightcache_proxy_smoke")
        OUT = root / "cogvideox_proxy"
        args.work, args.summary = str(root / "work"), str(root / "cogvideox_summary.json")
        args.vae_steps, args.vae_batch, args.clips, args.dit_steps, args.dit_batch = 4, 2, 80, 4, 4
    if args.eval_only:
        set_threads()
        evaluate_all(Path(args.summary))
        return
    set_threads()
    t0 = time.time()
    record_run(Path(args.summary), args)
    main(args)
    write_summary(Path(args.summary), "total_seconds", {"all": round(time.time() - t0, 1)})
    log(json.dumps(json.loads(Path(args.summary).read_text()), indent=1))


if __name__ == "__main__":
    cli()
