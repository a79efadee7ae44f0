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
    EMA, WEIGHTS_DIR, clip_chunks, dir_bytes, log, lr_at, recon_loss, seed_all, set_threads, write_summary,
)

from lightcache.proxy.data import NUM_CONDITIONS, generate_clips, null_embeds, prompt_embeds

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


def train_vae(steps: int, batch: int, lr: float, work: Path, seed: int = 11, kl_weight: float = 1e-4):
    """Per-frame reconstruction (object-weighted MSE + L1, as for the Wan VAE) with a small latent penalty;
    ``batch`` clips (x9 frames) per step."""
    from diffusers import AutoencoderKL

    seed_all(seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    val_x = frames_of(next(clip_chunks(8, seed=901))[0])
    best, t0, run = -1.0, time.time(), []
    for step in range(steps):
        clips, _ = generate_clips(batch, seed=20_000 + step)
        x = frames_of(torch.from_numpy(clips).permute(0, 2, 1, 3, 4).mul(2).sub(1))
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=30)
        mu = vae.encode(x).latent_dist.mean
        y = vae.decode(mu).sample
        rec = F.mse_loss(y, x)
        loss = recon_loss(y, x) + kl_weight * mu.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        run.append(rec.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            vae.eval()
            psnr = vae_psnr(vae, val_x)
            vae.train()
            log(f"kl-vae step {step + 1}/{steps} rec_mse {sum(run) / len(run):.5f} val_psnr {psnr:.2f} dB "
                f"({time.time() - t0:.0f}s)")
            run = []
            if psnr > best:
                best = psnr
                vae.save_pretrained(work / "kl_vae_best")
    vae = AutoencoderKL.from_pretrained(work / "kl_vae_best").eval()
    return vae, {"steps": steps, "batch_clips": batch, "lr": lr, "latent_penalty": kl_weight,
                 "val_psnr_db": round(best, 2), "seconds": round(time.time() - t0, 1),
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

    seed_all(seed)
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    model = UNetMotionModel(**UNET_CONFIG).train()
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    dim = UNET_CONFIG["cross_attention_dim"]
    table = torch.cat([prompt_embeds(list(range(NUM_CONDITIONS)), dim), null_embeds(1, dim)])
    val_z, val_c, z, conds = z[:n_val], conds[:n_val], z[n_val:], conds[n_val:]
    g = torch.Generator().manual_seed(seed)
    best, t0, run, n, f = float("inf"), time.time(), [], z.shape[0], z.shape[2]
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = z[idx]
        c = torch.where(torch.rand(batch, generator=g) < NULL_PROB, NUM_CONDITIONS, conds[idx])
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=50)
        eps = model(xt, t, table[c].repeat_interleave(f, 0)).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        run.append(loss.item())
        if (step + 1) % 25 == 0:
            log(f"unet step {step + 1}/{steps} loss {sum(run) / len(run):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({time.time() - t0:.0f}s, {(time.time() - t0) / (step + 1):.2f}s/step)")
            run = []
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            vl = eps_val_loss(ema.model, val_z, val_c, table, sched)
            log(f"unet checkpoint step {step + 1}: ema val loss {vl:.4f} (best {min(best, vl):.4f})")
            if vl < best:
                best = vl
                make_pipeline(ema.model, vae).save_pretrained(OUT, safe_serialization=True)
    return {"steps": steps, "batch": batch, "lr": lr, "ema_decay": ema_decay, "null_prob": NULL_PROB,
            "train_clips": n, "best_ema_val_loss": round(best, 4), "seconds": round(time.time() - t0, 1),
            "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def evaluate(n_prompts: int = 8, steps: int = 10, guidance: float = 4.0) -> dict:
    from lightcache.proxy.data import ALL_CONDITIONS, dominant_colour, motion_direction
    from lightcache.proxy.load import call_kwargs, load_unet_proxy

    pipe = load_unet_proxy(path=OUT)
    conds = [ALL_CONDITIONS[(i * 7) % len(ALL_CONDITIONS)] for i in range(n_prompts)]
    frames = pipe(**call_kwargs(pipe, conds, num_inference_steps=steps, guidance_scale=guidance, seed=0)).frames
    colour = sum(dominant_colour(fr) == c.colour for fr, c in zip(frames, conds)) / n_prompts
    motion = sum(motion_direction(fr) == c.motion for fr, c in zip(frames, conds)) / n_prompts
    log(f"unet proxy eval ({n_prompts} prompts, {steps} steps, cfg {guidance}): colour {colour:.2f} motion {motion:.2f}")
    return {"prompts": n_prompts, "steps": steps, "guidance": guidance, "colour_acc": colour, "motion_acc": motion}


def reuse_or_train_vae(args, work: Path):
    """With --reuse-vaes, take the finished VAE of an earlier run from the work folder (a rerun from scratch
    trains the identical VAE: same seeds), else train it; the training record is kept next to it."""
    import json

    from diffusers import AutoencoderKL

    info = work / "kl_vae_info.json"
    if getattr(args, "reuse_vaes", False) and info.exists():
        log(f"reusing {work / 'kl_vae_best'}")
        return AutoencoderKL.from_pretrained(work / "kl_vae_best").eval(), dict(json.loads(info.read_text()), reused=True)
    vae, vae_info = train_vae(args.kl_vae_steps, args.kl_vae_batch, args.kl_vae_lr, work)
    info.write_text(json.dumps(vae_info))
    return vae, vae_info


def main(args) -> None:
    set_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary = Path(args.summary)
    t0 = time.time()
    vae, vae_info = reuse_or_train_vae(args, work)
    z, conds = encode_dataset(vae, args.unet_clips)
    OUT.mkdir(parents=True, exist_ok=True)
    write_summary(summary, "kl_vae", vae_info)
    info = train_unet(z, conds, vae, args.unet_steps, args.unet_batch, args.unet_lr)
    info["eval"] = evaluate()
    info["folder_bytes"] = dir_bytes(OUT)
    info["stage_seconds"] = round(time.time() - t0, 1)
    write_summary(summary, "unet", info)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kl-vae-steps", type=int, default=500)
    p.add_argument("--kl-vae-batch", type=int, default=4)
    p.add_argument("--kl-vae-lr", type=float, default=2e-3)
    p.add_argument("--unet-clips", type=int, default=3000)
    p.add_argument("--unet-steps", type=int, default=500)
    p.add_argument("--unet-batch", type=int, default=12)
    p.add_argument("--unet-lr", type=float, default=1e-3)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    ap.add_argument("--work", default="/tmp/lightcache_proxy_work")
    ap.add_argument("--summary", default=str(Path(__file__).with_name("train_summary.json")))
    main(ap.parse_args())
