"""Train the UNet proxy (for DeepCache): a tiny per-frame AutoencoderKL (reconstruction), then a UNetMotionModel
with epsilon prediction on DDIM's noise schedule, saved as a stock AnimateDiffPipeline folder in
lightcache/proxy/weights/unet_proxy/.

Run through train_all.py, or alone:
    python benchmarks/proxy/train_unet.py --kl-vae-steps 500 --unet-steps 500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (
    WEIGHTS_DIR, add_options, clip_chunks, evaluate_pipeline, fit_autoencoder, fit_denoiser, log, run_stage,
    run_standalone, seed_all,
)

OUT = WEIGHTS_DIR / "unet_proxy"

# Two levels: 32x32 frames -> 16x16 latents (AnimateDiffPipeline derives its scale factor from the number of
# VAE blocks), 4 latent channels like SD.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)
# Two resolution levels (16x16 with cross-attention, 8x8 without; the mid block attends at 8x8), so DeepCache's
# branch 0 (shallow path at 16x16) and the deep path are both real.
UNET_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    cross_attention_dim=64,
    num_attention_heads=2,
    motion_num_attention_heads=2,
    motion_max_seq_length=16,
    norm_num_groups=16,
    use_motion_mid_block=True,
)
# AnimateDiff's scheduler settings (SD's betas, linear schedule).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="linspace",
    prediction_type="epsilon",
)
NULL_PROB = 0.1


def frames_of(x: torch.Tensor) -> torch.Tensor:
    """(b, 3, F, H, W) -> (b*F, 3, H, W), frame-major per clip as AnimateDiffPipeline.decode_latents orders them."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


@torch.no_grad()
def vae_psnr(vae, x: torch.Tensor) -> float:
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = F.mse_loss((y + 1) / 2, (x + 1) / 2).item()
    return 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _reconstruct(vae, x: torch.Tensor):
    mu = vae.encode(x).latent_dist.mean
    return mu, vae.decode(mu).sample


def train_vae(steps: int, batch: int, lr: float, work: Path, seed: int = 11, kl_weight: float = 1e-4):
    """Per-frame reconstruction (object-weighted MSE + L1, as for the Wan VAE) with a small latent penalty;
    ``batch`` clips (x9 frames) per step."""
    from diffusers import AutoencoderKL

    seed_all(seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    val_x = frames_of(next(clip_chunks(8, seed=901))[0])
    vae, best, seconds = fit_autoencoder(
        vae, val_x, steps, batch, lr, work, name="kl_vae", data_seed=20_000, latent_penalty=kl_weight,
        prepare=frames_of, reconstruct=_reconstruct, psnr=vae_psnr,
    )
    return vae, {"steps": steps, "batch_clips": batch, "lr": lr, "latent_penalty": kl_weight,
                 "val_psnr_db": round(best, 2), "seconds": seconds,
                 "params": sum(p.numel() for p in vae.parameters())}


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int = 12):
    """Posterior means of ``n`` clips, (n, 4, F, 16, 16), scaled by the VAE's scaling_factor, which is set to
    1 / (their standard deviation): AnimateDiffPipeline divides by it before decoding."""
    t0 = time.time()
    zs, cs = [], []
    for x, c in clip_chunks(n, seed=seed, chunk=128):
        b, _, f = x.shape[:3]
        z = vae.encode(frames_of(x)).latent_dist.mean
        zs.append(z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4))
        cs.append(c)
    z, conds = torch.cat(zs), torch.cat(cs)
    std = z.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    log(f"encoded {n} clips -> {tuple(z.shape)} in {time.time() - t0:.0f}s; mean {z.mean().item():.3f} std {std:.3f}")
    return (z / std).contiguous(), conds


def make_pipeline(unet, vae):
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    return AnimateDiffPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=None,
                               scheduler=DDIMScheduler(**SCHEDULER_CONFIG))


@torch.no_grad()
def eps_val_loss(model, z, conds, table, sched) -> float:
    g = torch.Generator().manual_seed(321)
    noise = torch.randn(z.shape, generator=g)
    t = ((torch.arange(z.shape[0]) + 0.5) / z.shape[0] * 1000).long()
    tot = 0.0
    for i in range(0, z.shape[0], 16):
        xt = sched.add_noise(z[i : i + 16], noise[i : i + 16], t[i : i + 16])
        eps = model(xt, t[i : i + 16], table[conds[i : i + 16]].repeat_interleave(z.shape[2], 0)).sample
        tot += F.mse_loss(eps, noise[i : i + 16], reduction="sum").item()
    return tot / z.numel()


def train_unet(z, conds, vae, steps: int, batch: int, lr: float, seed: int = 13, ema_decay: float = 0.995,
               ckpt_every: int = 100, n_val: int = 32):
    """Epsilon prediction at uniform t; the prompt embedding is repeated per frame as AnimateDiffPipeline does."""
    from diffusers import DDIMScheduler, UNetMotionModel

    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    frames = z.shape[2]

    def loss(model, x0, embeds, noise, g):
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        eps = model(sched.add_noise(x0, noise, t), t, embeds.repeat_interleave(frames, 0)).sample
        return F.mse_loss(eps, noise)

    return fit_denoiser(
        lambda: UNetMotionModel(**UNET_CONFIG), z, conds, steps, batch, lr, name="unet", seed=seed,
        ema_decay=ema_decay, warmup=50, ckpt_every=ckpt_every, n_val=n_val, text_dim=UNET_CONFIG["cross_attention_dim"],
        null_prob=NULL_PROB, loss=loss, val_loss=lambda m, vz, vc, table: eps_val_loss(m, vz, vc, table, sched),
        save=lambda ema_model: make_pipeline(ema_model, vae).save_pretrained(OUT, safe_serialization=True),
    )


@torch.no_grad()
def evaluate(n_prompts: int = 8, steps: int = 10, guidance: float = 4.0) -> dict:
    from lightcache.proxy.load import load_unet_proxy

    return evaluate_pipeline(load_unet_proxy(path=OUT), "unet", n_prompts, steps, guidance)


def main(args) -> None:
    from diffusers import AutoencoderKL

    run_stage(
        args, OUT, vae_name="kl_vae", vae_cls=AutoencoderKL, key="unet", evaluate=evaluate,
        train_vae=lambda work: train_vae(args.kl_vae_steps, args.kl_vae_batch, args.kl_vae_lr, work),
        encode=lambda vae: encode_dataset(vae, args.unet_clips),
        train=lambda z, conds, vae: train_unet(z, conds, vae, args.unet_steps, args.unet_batch, args.unet_lr),
    )


DEFAULTS = dict(kl_vae_steps=500, kl_vae_batch=4, kl_vae_lr=2e-3, unet_clips=3000, unet_steps=500, unet_batch=12,
                unet_lr=1e-3)


def add_args(p: argparse.ArgumentParser) -> None:
    add_options(p, DEFAULTS)


if __name__ == "__main__":
    run_standalone(__doc__, add_args, main)
